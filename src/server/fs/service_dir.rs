//! Root-only directories for CRIU's own files (restore logs, pid files, the
//! scratch images of `selfdump check`): never a caller's directory, never
//! reached again by a name someone else could change. Each is opened once,
//! verified through its fd, and handed to CRIU as `/proc/<service>/fd/<n>`,
//! which names the verified inode whatever happens to the path.

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where `selfdump restore` keeps CRIU's restore logs (and root's
/// processes CRIU's version, `engine/versions.rs`): root's, mode 0700.
pub const LOG_DIR: &str = "/run/selfdump";

/// Leftovers of failed restores (logs, pid files, copies' work directories)
/// kept in [`LOG_DIR`] for an operator to debug the last failures: at most
/// this many...
pub const KEEP_LEFTOVERS: usize = 16;
/// ...and this many bytes (`/run` is memory). The newest are kept.
pub const KEEP_LEFTOVER_BYTES: u64 = 32 << 20;

/// A directory only root can write, held open.
#[derive(Debug)]
pub(crate) struct ServiceDir {
    fd: OwnedFd,
    shown: PathBuf,
}

impl ServiceDir {
    /// Opens `path`, creating it (mode 0700) if missing, and checks that it
    /// is a directory of root's that nobody else can write. Nothing is
    /// followed through a symlink at its last component.
    pub(crate) fn open_or_create(path: &Path) -> io::Result<Self> {
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
    pub(crate) fn create_in(base: &Path, prefix: &str) -> io::Result<Self> {
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
        // held while in use: `prune_leftovers` leaves it alone
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| with_path(e.into(), &path))?;
        let dir = Self { fd, shown: path };
        if !dir.names()?.is_empty() {
            return Err(with_path(io::Error::other("not empty"), &dir.shown));
        }
        Ok(dir)
    }

    /// The path CRIU (a child process) should use: the verified inode
    /// through this process's fd table.
    pub(crate) fn proc_path(&self) -> PathBuf {
        crate::procfs::fd_of(std::process::id(), self.fd.as_raw_fd())
    }

    /// The path it was opened at, for messages.
    pub(crate) fn shown(&self) -> &Path {
        &self.shown
    }

    /// Reads a file of the directory (by name, inside a directory only root
    /// can change).
    pub(crate) fn read(&self, name: &str) -> Option<Vec<u8>> {
        crate::server::images::format::read_image(&self.fd, name)
    }

    /// Removes one file of the directory.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Empties the directory through its fd (one level: CRIU makes no
    /// subdirectories here), then removes it.
    pub(crate) fn remove_all(self) -> io::Result<()> {
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
        crate::server::images::format::entry_names(&self.fd)
    }

    /// Creates file `name` (root's, 0600), held with a lock while the
    /// returned fd is open, so that [`Self::prune_leftovers`] leaves it
    /// alone (CRIU then writes it by name: the same inode).
    pub(crate) fn create_locked(&self, name: &str) -> io::Result<OwnedFd> {
        let file = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        Ok(file)
    }

    /// Removes the oldest leftovers of restores here (entries named
    /// `restore-*` or `copy-*`) beyond the newest `keep` of them or
    /// `max_bytes` in all, except those in use (locked by a running
    /// restore or copy). Returns the names removed.
    pub(crate) fn prune_leftovers(&self, keep: usize, max_bytes: u64) -> Vec<String> {
        let mut found: Vec<(i64, String, u64)> = self
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("restore-") || n.starts_with("copy-"))
            .filter_map(|name| {
                let stat =
                    rustix::fs::statat(&self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
                let bytes = match FileType::from_raw_mode(stat.st_mode) {
                    FileType::Directory => self.bytes_in(&name),
                    _ => stat.st_size as u64,
                };
                Some((stat.st_mtime, name, bytes))
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1))); // newest first
        let (mut kept, mut bytes, mut removed) = (0, 0u64, Vec::new());
        for (_, name, size) in found {
            if kept < keep && bytes + size <= max_bytes {
                kept += 1;
                bytes += size;
            } else if self.remove_unlocked(&name) {
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            log::info!(
                "{}: removed {} old restore leftover(s), keeping the newest {keep} (at most {} \
                 MiB)",
                self.shown.display(),
                removed.len(),
                max_bytes >> 20
            );
        }
        removed
    }

    /// Bytes of the files in subdirectory `name` (one level).
    fn bytes_in(&self, name: &str) -> u64 {
        let Ok(dir) = self.open_entry(name, true) else {
            return 0;
        };
        crate::server::images::format::entry_names(&dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| rustix::fs::statat(&dir, f.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok())
            .map(|s| s.st_size as u64)
            .sum()
    }

    fn open_entry(&self, name: &str, directory: bool) -> rustix::io::Result<OwnedFd> {
        let kind = if directory {
            OFlags::DIRECTORY
        } else {
            OFlags::empty()
        };
        rustix::fs::openat(
            &self.fd,
            name,
            kind | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
    }

    /// Removes entry `name` (a file, or a directory of files) unless
    /// someone holds its lock; whether it was removed.
    fn remove_unlocked(&self, name: &str) -> bool {
        let directory = self.open_entry(name, true);
        let entry = match &directory {
            Ok(dir) => dir.try_clone().ok(),
            Err(_) => self.open_entry(name, false).ok(),
        };
        let Some(entry) = entry else { return false };
        if rustix::fs::flock(&entry, FlockOperation::NonBlockingLockExclusive).is_err() {
            return false;
        }
        if let Ok(dir) = &directory {
            for file in crate::server::images::format::entry_names(dir).unwrap_or_default() {
                let _ = rustix::fs::unlinkat(dir, file.as_str(), AtFlags::empty());
            }
            return rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR).is_ok();
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).is_ok()
    }
}

impl AsFd for ServiceDir {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, secs: i64) {
        let at = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: at,
            last_modification: at,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    #[test]
    fn restore_leftovers_are_bounded_keeping_the_newest_and_those_in_use() {
        if !rustix::process::geteuid().is_root() {
            return crate::test_skip::skip(
                crate::test_skip::Limit::NotRoot,
                "the restore leftovers' directory is root's",
            );
        }
        let base = tempfile::tempdir().unwrap();
        let logs = base.path().join("logs");
        let dir = ServiceDir::open_or_create(&logs).unwrap();
        // 10 failed restores' logs, 1 KiB each, the oldest first
        for i in 0..10 {
            let name = format!("restore-{i}.log");
            std::fs::write(logs.join(&name), vec![b'x'; 1024]).unwrap();
            set_mtime(&logs.join(&name), 1_000 + i);
        }
        // a copy's work directory of 8 KiB, old, and one in use, older still
        let copy = logs.join("copy-old");
        std::fs::create_dir(&copy).unwrap();
        std::fs::write(copy.join("restore.log"), vec![b'x'; 8192]).unwrap();
        set_mtime(&copy, 1_005);
        let running = ServiceDir::create_in(&logs, "copy-").unwrap();
        set_mtime(running.shown(), 1);
        std::fs::write(logs.join("unrelated"), b"kept").unwrap();
        set_mtime(&logs.join("unrelated"), 1);

        let mut removed = dir.prune_leftovers(4, 3 * 1024);
        removed.sort();
        // the newest three logs fit 3 KiB; everything older goes, but the
        // directory in use and what is not a restore's
        let expected: Vec<String> = std::iter::once("copy-old".to_string())
            .chain((0..7).map(|i| format!("restore-{i}.log")))
            .collect();
        assert_eq!(removed, expected);
        for i in 7..10 {
            assert!(logs.join(format!("restore-{i}.log")).exists());
        }
        assert!(running.shown().exists() && logs.join("unrelated").exists());
        drop(running); // its restore ended: a leftover like the others
        assert_eq!(dir.prune_leftovers(3, 1 << 20).len(), 1);
    }
}
