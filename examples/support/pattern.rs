//! The memory pattern of the clone examples: byte `i` is
//! `(i * 31 ^ i >> 12) as u8`, so that a page of zeros or a page from
//! elsewhere shows. Written and checked a page at a time against 256
//! prepared pages (page `p` is page `p % 256` of them, since `4096 * 31` is
//! a multiple of 256), with slice copies and comparisons: a loop over the
//! bytes takes seconds per 32 MiB in a debug build, which the tests use.

const PAGE: usize = 4096;

/// The 256 distinct pages of the pattern.
pub struct Pattern {
    pages: Vec<u8>,
}

impl Pattern {
    pub fn new() -> Self {
        let mut pages = vec![0u8; 256 * PAGE];
        for (k, page) in pages.chunks_mut(PAGE).enumerate() {
            for (j, byte) in page.iter_mut().enumerate() {
                *byte = (j.wrapping_mul(31) as u8) ^ k as u8;
            }
        }
        Pattern { pages }
    }

    fn page(&self, p: usize) -> &[u8] {
        let k = p % 256;
        &self.pages[k * PAGE..(k + 1) * PAGE]
    }

    /// `bytes` bytes of the pattern.
    pub fn filled(&self, bytes: usize) -> Vec<u8> {
        let mut memory = vec![0u8; bytes];
        for (p, chunk) in memory.chunks_mut(PAGE).enumerate() {
            chunk.copy_from_slice(&self.page(p)[..chunk.len()]);
        }
        memory
    }

    /// Whether `memory` holds the pattern.
    pub fn holds(&self, memory: &[u8]) -> bool {
        memory
            .chunks(PAGE)
            .enumerate()
            .all(|(p, chunk)| chunk == &self.page(p)[..chunk.len()])
    }
}
