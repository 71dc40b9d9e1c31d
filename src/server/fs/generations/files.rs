//! Taking the files CRIU wrote into a generation: each opened once, not
//! through a symlink, as its writer allows ([`Writer`]); linked from its
//! fd or copied, then handed to the caller.

use crate::server::caller::credentials::Credentials;
use crate::server::images::format::{copy, only_root_writes};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Who wrote the files a generation is made from, which decides how they
/// may be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Root's CRIU, in root's staging directory.
    Root,
    /// A CRIU running as the caller, in the caller's directory nested in
    /// root's staging directory (`RootSubdir::nest_callers_dir`), which
    /// no process of the caller's reaches. Its files are still taken as a
    /// hostile CRIU could leave them: only the caller's own regular files
    /// with a single link (nothing of root's or anyone else's may pass for
    /// one), hashed by reading (a mapping of a file someone truncates
    /// would kill the service with `SIGBUS`).
    CallersCriu,
}

/// The directory CRIU wrote a dump into, and who wrote it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) dir: BorrowedFd<'a>,
    pub(crate) writer: Writer,
}

/// Opens a regular file of `dir` (not through a symlink); it and its size.
fn open_regular(dir: BorrowedFd<'_>, name: &str) -> io::Result<(OwnedFd, u64)> {
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!(
            "unexpected non-regular image file {name}"
        )));
    }
    Ok((file, stat.st_size as u64))
}

/// Opens file `name` of the directory CRIU wrote, as its writer allows it
/// to be taken (see [`Writer`]): a regular file, not through a symlink; it and
/// its size.
pub(crate) fn open_written(
    source: Source<'_>,
    name: &str,
    creds: &Credentials,
) -> io::Result<(OwnedFd, u64)> {
    let (file, size) = open_regular(source.dir, name)?;
    if source.writer == Writer::CallersCriu {
        let stat = rustix::fs::fstat(&file)?;
        if stat.st_uid != creds.uid || stat.st_nlink != 1 {
            return Err(io::Error::other(format!(
                "{name} is not a file the caller's CRIU wrote (owner uid {}, {} links)",
                stat.st_uid, stat.st_nlink
            )));
        }
    }
    Ok((file, size))
}

/// Puts file `name` of `source` into `dir` (root's): a hard link from its
/// fd when only root can write it, or when the caller's CRIU wrote it in a
/// directory no process of the caller's reaches; else a copy, which is
/// returned (the bytes to hash are those `dir` holds). Also says whether
/// the file may be hashed through a mapping (only root can change its size).
pub(super) fn place(
    source: Source<'_>,
    name: &str,
    dir: &OwnedFd,
    creds: &Credentials,
) -> io::Result<(OwnedFd, u64, bool)> {
    let (file, size) = open_written(source, name, creds)?;
    let stat = rustix::fs::fstat(&file)?;
    if source.writer == Writer::CallersCriu {
        rustix::fs::linkat(&file, "", dir, name, AtFlags::EMPTY_PATH)?;
        Ok((file, size, false))
    } else if only_root_writes(&stat) {
        rustix::fs::linkat(&file, "", dir, name, AtFlags::EMPTY_PATH)?;
        Ok((file, size, true))
    } else {
        Ok((copy(&file, dir, name, size)?, size, true))
    }
}

/// Makes a file the caller's, mode 0600 (the images hold its memory).
pub(crate) fn hand_over(file: &OwnedFd, creds: &Credentials) -> io::Result<()> {
    rustix::fs::fchown(
        file,
        Some(Uid::from_raw(creds.uid)),
        Some(Gid::from_raw(creds.gid)),
    )?;
    rustix::fs::fchmod(file, Mode::RUSR | Mode::WUSR)?;
    Ok(())
}
