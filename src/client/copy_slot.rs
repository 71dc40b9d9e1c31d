//! How a restored copy learns which copy it is.
//!
//! Before each checkpoint the client makes a pipe, closes its write end at
//! once and keeps the read end (the *copy slot*) across the dump; the
//! service records which pipe that is in the images (`pipe:[INODE]`).
//! `selfdump restore --copies N` starts each copy with CRIU's
//! `--inherit-fd`, which puts in place of that pipe a fresh one of the
//! restorer's, already holding one line: the copy's number and a random
//! restore id, its write end closed. The copy reads the line, then EOF.
//!
//! Nothing here trusts a pid or a name: the fd is the copy's own, given to
//! it by the restore itself, and no other process holds that pipe. A copy
//! restored without a record (a plain `selfdump restore`, an older
//! restorer) finds an empty pipe with no writer: it has no copy number, and
//! draws its restore id from the kernel itself (`getrandom`, which a
//! restore never copies).

pub(crate) use crate::copy_record::fresh_id;
use crate::copy_record::parse;
use rustix::fd::{AsFd, OwnedFd};
use rustix::pipe::PipeFlags;

/// Makes a copy slot: the read end of a pipe with no writer.
pub(crate) fn make() -> Option<OwnedFd> {
    match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
        Ok((read, _write)) => Some(read),
        Err(e) => {
            log::debug!("no copy slot: {e}");
            None
        }
    }
}

/// Reads what the restorer left in the slot, without blocking: the copy's
/// number and restore id, or `None` when there is no record.
pub(crate) fn read(slot: &impl AsFd) -> Option<(u32, u128)> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(slot, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&zero)).ok()? == 0 {
        return None; // a writer holds it open and wrote nothing
    }
    let mut buf = [0u8; 128];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(slot, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    parse(std::str::from_utf8(&buf[..len]).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy_record::record;

    #[test]
    fn a_slot_without_a_record_reads_none_without_blocking() {
        let slot = make().unwrap();
        assert_eq!(read(&slot), None);
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, record(3, 42).as_bytes()).unwrap();
        drop(w);
        assert_eq!(read(&r), Some((3, 42)));
        // a writer that stays and writes nothing: no wait
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(read(&r), None);
    }
}
