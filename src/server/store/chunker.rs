//! Where a file is cut into chunks: on page boundaries chosen by the
//! content of the pages themselves (content-defined chunking, a page at a
//! time), so that a region of memory that did not change between two
//! checkpoints gives the same chunks even when what comes before it in the
//! pages file grew or shrank (a heap that grew by a page shifts every later
//! offset: cutting at fixed offsets would then make every later chunk new).
//!
//! A cut goes before a page whose fingerprint (a cheap mix of 16 of its
//! words) has its low 10 bits zero, once the chunk holds at least
//! [`MIN_CHUNK`]; a chunk never exceeds [`MAX_CHUNK`]. Chunks average about
//! 4.5 MiB. The fingerprint only places the cuts: what a chunk is, is its
//! BLAKE3 hash.

use super::Error;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The page size cuts align to.
pub(crate) const PAGE: usize = 4096;
/// The smallest chunk but a file's last (512 KiB).
pub(crate) const MIN_CHUNK: usize = 128 * PAGE;
/// The largest chunk (8 MiB).
pub const MAX_CHUNK: usize = 2048 * PAGE;
const CUT_MASK: u64 = (1 << 10) - 1;

/// A page's fingerprint: 16 of its words, spread over it, mixed.
fn fingerprint(page: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..16 {
        let at = i * (PAGE / 16);
        let word = u64::from_le_bytes(page[at..at + 8].try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 32;
    }
    h
}

/// The chunks of a file of `size` bytes, read in order.
pub(crate) struct Chunker {
    file: Arc<OwnedFd>,
    size: u64,
    read: u64,
    buf: Vec<u8>,
    /// Pages of `buf` already looked at for a cut.
    scanned: usize,
}

impl Chunker {
    pub(crate) fn new(file: Arc<OwnedFd>, size: u64) -> Self {
        Self {
            file,
            size,
            read: 0,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The first cut in the buffer, if one is there yet.
    fn cut(&mut self) -> Option<usize> {
        let pages = self.buf.len() / PAGE;
        while self.scanned < pages {
            let k = self.scanned;
            let page = &self.buf[k * PAGE..(k + 1) * PAGE];
            if k * PAGE == MAX_CHUNK || (k * PAGE >= MIN_CHUNK && fingerprint(page) & CUT_MASK == 0)
            {
                return Some(k * PAGE);
            }
            self.scanned += 1;
        }
        (self.buf.len() >= MAX_CHUNK).then_some(MAX_CHUNK)
    }
}

impl Iterator for Chunker {
    type Item = Result<Vec<u8>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(at) = self.cut() {
                let rest = self.buf.split_off(at);
                self.scanned = 0;
                return Some(Ok(std::mem::replace(&mut self.buf, rest)));
            }
            if self.read == self.size {
                self.scanned = 0;
                return (!self.buf.is_empty()).then(|| Ok(std::mem::take(&mut self.buf)));
            }
            let want = (self.size - self.read).min(MAX_CHUNK as u64) as usize;
            match read_at(&self.file, self.read, want) {
                Ok(more) => {
                    self.buf.extend_from_slice(&more);
                    self.read += want as u64;
                }
                Err(e) => {
                    self.read = self.size;
                    self.buf.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// `len` bytes of `file` at `offset` (all of them, or an error).
pub(crate) fn read_at(file: &OwnedFd, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    let mut data = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match rustix::io::pread(file, &mut data[got..], offset + got as u64) {
            Ok(0) => return Err(Error::Local("a file shrank while it was read".into())),
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::Local(e.to_string())),
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(data: &[u8]) -> Vec<Vec<u8>> {
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, data).unwrap();
        let fd = Arc::new(OwnedFd::from(file));
        Chunker::new(fd, data.len() as u64)
            .map(Result::unwrap)
            .collect()
    }

    fn random(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn chunks_survive_a_shift_before_them() {
        let data = random(48 << 20, 7);
        let before = chunks_of(&data);
        assert_eq!(before.concat(), data);
        assert!(before.iter().all(|c| c.len() <= MAX_CHUNK));
        assert!(
            before[..before.len() - 1]
                .iter()
                .all(|c| c.len() >= MIN_CHUNK && c.len() % PAGE == 0)
        );
        // two pages more at the start: all but the first few chunks remain
        let shifted = [random(2 * PAGE, 9), data].concat();
        let after = chunks_of(&shifted);
        assert_eq!(after.concat(), shifted);
        let same = after.iter().filter(|c| before.contains(c)).count();
        assert!(same + 2 >= before.len(), "{same} of {} kept", before.len());
    }

    #[test]
    fn small_and_uniform_files() {
        assert!(chunks_of(&[]).is_empty());
        assert_eq!(chunks_of(b"abc"), vec![b"abc".to_vec()]);
        let zeros = vec![0u8; 20 << 20];
        let chunks = chunks_of(&zeros);
        assert_eq!(chunks.concat(), zeros);
        assert!(chunks.iter().all(|c| c.len() <= MAX_CHUNK));
    }
}
