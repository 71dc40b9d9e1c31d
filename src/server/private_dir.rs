//! Root-only directories for CRIU's own files (restore logs, pid files, the
//! scratch images of `selfdump check`): never a caller's directory, never
//! reached again by a name someone else could change. Each is opened once,
//! verified through its fd, and handed to CRIU as `/proc/<service>/fd/<n>`,
//! which names the verified inode whatever happens to the path.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where `selfdump restore` keeps CRIU's restore logs: root's, mode 0700.
pub const LOG_DIR: &str = "/run/selfdump";

/// A directory only root can write, held open.
#[derive(Debug)]
pub(super) struct PrivateDir {
    fd: OwnedFd,
    shown: PathBuf,
}

impl PrivateDir {
    /// Opens `path`, creating it (mode 0700) if missing, and checks that it
    /// is a directory of root's that nobody else can write. Nothing is
    /// followed through a symlink at its last component.
    pub(super) fn open_or_create(path: &Path) -> io::Result<Self> {
        match rustix::fs::mkdir(path, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(with_path(e.into(), path)),
        }
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )
        .map_err(|e| with_path(e.into(), path))?;
        verify_root_only(&fd).map_err(|e| with_path(e, path))?;
        Ok(Self {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// Creates a fresh, randomly named directory (mode 0700) in `base` and
    /// checks through its fd that it is the one made: root's, 0700, empty.
    pub(super) fn create_in(base: &Path, prefix: &str) -> io::Result<Self> {
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let path = base.join(format!("{prefix}{:016x}", u64::from_le_bytes(random)));
        rustix::fs::mkdir(&path, Mode::RWXU).map_err(|e| with_path(e.into(), &path))?;
        let fd = rustix::fs::open(
            &path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )
        .map_err(|e| with_path(e.into(), &path))?;
        verify_root_only(&fd).map_err(|e| with_path(e, &path))?;
        let dir = Self { fd, shown: path };
        if !dir.names()?.is_empty() {
            return Err(with_path(io::Error::other("not empty"), &dir.shown));
        }
        Ok(dir)
    }

    /// The path CRIU (a child process) should use: the verified inode
    /// through this process's fd table.
    pub(super) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// The path it was opened at, for messages.
    pub(super) fn shown(&self) -> &Path {
        &self.shown
    }

    /// Reads a file of the directory (by name, inside a directory only root
    /// can change).
    pub(super) fn read(&self, name: &str) -> Option<Vec<u8>> {
        super::images::read_image(&self.fd, name)
    }

    /// Removes one file of the directory.
    pub(super) fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Empties the directory through its fd (one level: CRIU makes no
    /// subdirectories here), then removes it.
    pub(super) fn remove_all(self) -> io::Result<()> {
        for name in self.names()? {
            self.remove(&name)?;
        }
        Ok(rustix::fs::unlinkat(
            rustix::fs::CWD,
            &self.shown,
            AtFlags::REMOVEDIR,
        )?)
    }

    fn names(&self) -> io::Result<Vec<String>> {
        super::images::entry_names(&self.fd)
    }
}

impl AsFd for PrivateDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn verify_root_only(fd: &OwnedFd) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory
        || stat.st_uid != 0
        || stat.st_mode & 0o022 != 0
    {
        return Err(io::Error::other(format!(
            "not a directory only root can write (owner {}, mode {:o})",
            stat.st_uid,
            stat.st_mode & 0o7777
        )));
    }
    Ok(())
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
