//! The host's chunk cache: root's, mode 0700 ([`DEFAULT_CACHE_DIR`]), so
//! that what a restore reads from it only root can have put there.
//!
//! - `chunks/<hash>`: a chunk's uncompressed bytes, written only after they
//!   hashed to `<hash>` (to a temporary name, synced, then renamed), so the
//!   cache never holds a chunk that was not verified, even after a crash.
//! - `files/<hash>`: whole image files that a restore verified against
//!   their signed hash (hard links of the assembled file, synced first):
//!   a later restore of the same checkpoint links them instead of copying
//!   its chunks again (the verified restore still hashes them).
//! - `work/`: the directories in which images are assembled for a restore
//!   (each held with a lock while in use; others are removed).
//!
//! Every entry's mtime is its last use; past the cache's size bound the
//! least recently used go.

use crate::server::fs::service_dir::ServiceDir;
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where restores from a store keep chunks unless told otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/selfdump";
/// The size bound of a cache unless told otherwise: 16 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 30;

/// A host's chunk cache (see the module docs).
#[derive(Debug)]
pub struct Cache {
    root: ServiceDir,
    chunks: ServiceDir,
    files: ServiceDir,
    work: ServiceDir,
    max_bytes: u64,
}

impl Cache {
    /// Opens the cache at `dir` (root's, 0700; made if missing), bounded
    /// to `max_bytes`, and removes what dead restores left in `work/`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let root = ServiceDir::open_or_create(dir)?;
        let sub = |name: &str| ServiceDir::open_or_create(&dir.join(name));
        let cache = Self {
            chunks: sub("chunks")?,
            files: sub("files")?,
            work: sub("work")?,
            root,
            max_bytes,
        };
        cache.sweep_work();
        cache.sweep_temporary();
        Ok(cache)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.root.shown()
    }

    /// The chunks it holds, by hash.
    pub fn chunk_names(&self) -> io::Result<Vec<String>> {
        let mut names = crate::server::images::format::entry_names(&self.chunks)?;
        names.retain(|n| !n.starts_with('.'));
        Ok(names)
    }

    /// Chunk `hash` of `len` bytes, if held (its use recorded).
    pub(crate) fn chunk(&self, hash: &str, len: u64) -> Option<OwnedFd> {
        open_entry(&self.chunks, hash, len)
    }

    /// Keeps a chunk whose bytes hashed to `hash` (the caller checked).
    pub(crate) fn insert_chunk(&self, hash: &str, verified: &[u8]) -> io::Result<()> {
        let tmp = temporary_name()?;
        let file = rustix::fs::openat(
            &self.chunks,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        let written = write_all(&file, verified).and_then(|()| Ok(rustix::fs::fdatasync(&file)?));
        let kept = written.and_then(|()| {
            Ok(rustix::fs::renameat(
                &self.chunks,
                tmp.as_str(),
                &self.chunks,
                hash,
            )?)
        });
        if kept.is_err() {
            let _ = rustix::fs::unlinkat(&self.chunks, tmp.as_str(), AtFlags::empty());
        }
        kept
    }

    /// A verified whole file of `size` bytes hashing to `hash`, if held.
    pub(crate) fn file(&self, hash: &str, size: u64) -> Option<OwnedFd> {
        open_entry(&self.files, hash, size)
    }

    /// Keeps `file`, which a restore verified to hash to `hash`.
    pub(crate) fn keep_file(&self, hash: &str, file: &OwnedFd) -> io::Result<()> {
        if self.file_held(hash) {
            return Ok(());
        }
        rustix::fs::fdatasync(file)?;
        let tmp = temporary_name()?;
        rustix::fs::linkat(file, "", &self.files, tmp.as_str(), AtFlags::EMPTY_PATH)?;
        let kept = rustix::fs::renameat(&self.files, tmp.as_str(), &self.files, hash);
        if kept.is_err() {
            let _ = rustix::fs::unlinkat(&self.files, tmp.as_str(), AtFlags::empty());
        }
        Ok(kept?)
    }

    fn file_held(&self, hash: &str) -> bool {
        rustix::fs::statat(&self.files, hash, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// A fresh directory for assembling images (root's, 0700, in `work/`),
    /// held with a shared lock (which the verified restore's own shared
    /// lock goes with) until dropped, then removed.
    pub(crate) fn work_dir(&self) -> io::Result<WorkDir> {
        // made under a name the sweep leaves, locked, then named
        let tmp = temporary_name()?;
        let name = format!("restore-{}", tmp.trim_start_matches(".new-"));
        rustix::fs::mkdirat(&self.work, tmp.as_str(), Mode::RWXU)?;
        let fd = rustix::fs::openat(
            &self.work,
            tmp.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared)?;
        rustix::fs::renameat(&self.work, tmp.as_str(), &self.work, name.as_str())?;
        Ok(WorkDir {
            path: self.work.shown().join(&name),
            parent: rustix::fs::openat(
                &self.work,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?,
            name,
            fd,
        })
    }

    /// Removes the least recently used entries until the cache is within
    /// its bound; returns the bytes removed.
    pub fn trim(&self) -> u64 {
        let mut entries = Vec::new();
        for dir in [&self.chunks, &self.files] {
            for name in crate::server::images::format::entry_names(dir).unwrap_or_default() {
                if let Ok(s) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    entries.push((s.st_mtime, s.st_size as u64, dir, name));
                }
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.0);
        let mut removed = 0;
        for (_, size, dir, name) in entries {
            if total <= self.max_bytes {
                break;
            }
            if rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()).is_ok() {
                total -= size;
                removed += size;
            }
        }
        removed
    }

    /// Removes temporary files a killed restore left (an hour old: one
    /// being written now is younger).
    fn sweep_temporary(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for dir in [&self.chunks, &self.files] {
            for name in crate::server::images::format::entry_names(dir).unwrap_or_default() {
                let old = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| now - s.st_mtime > 3600);
                if name.starts_with(".new-") && old {
                    let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
                }
            }
        }
    }

    /// Removes the work directories no restore holds.
    fn sweep_work(&self) {
        for name in crate::server::images::format::entry_names(&self.work).unwrap_or_default() {
            let Ok(dir) = rustix::fs::openat(
                &self.work,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            // one being made is not locked yet: left unless it is old
            let old = rustix::fs::fstat(&dir).is_ok_and(|s| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                now - s.st_mtime > 600
            });
            if (name.starts_with("restore-") || old)
                && rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_ok()
            {
                remove_tree(&self.work, &name, &dir);
            }
        }
    }
}

/// A directory images are assembled in (see [`Cache::work_dir`]).
#[derive(Debug)]
pub(crate) struct WorkDir {
    pub(crate) path: PathBuf,
    pub(crate) fd: OwnedFd,
    parent: OwnedFd,
    name: String,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // what a restore made in it (its verified directory) is still
        // held while its copies run: the next sweep takes what is left
        remove_tree(&self.parent, &self.name, &self.fd);
    }
}

/// Removes directory `name` of `parent` (open as `dir`): its files, and
/// the files of its subdirectories (a restore's verified directory), then
/// the directories. What is in use stays.
fn remove_tree(parent: &impl AsFd, name: &str, dir: &OwnedFd) {
    for entry in crate::server::images::format::entry_names(dir).unwrap_or_default() {
        let Ok(stat) = rustix::fs::statat(dir, entry.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            let _ = rustix::fs::unlinkat(dir, entry.as_str(), AtFlags::empty());
            continue;
        }
        if let Ok(sub) = rustix::fs::openat(
            dir,
            entry.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) && rustix::fs::flock(&sub, FlockOperation::NonBlockingLockExclusive).is_ok()
        {
            for file in crate::server::images::format::entry_names(&sub).unwrap_or_default() {
                let _ = rustix::fs::unlinkat(&sub, file.as_str(), AtFlags::empty());
            }
            let _ = rustix::fs::unlinkat(dir, entry.as_str(), AtFlags::REMOVEDIR);
        }
    }
    let _ = rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR);
}

/// An entry of the cache: a regular file of root's, 0600, of `size`
/// bytes; its mtime set to now (its last use).
fn open_entry(dir: &impl AsFd, name: &str, size: u64) -> Option<OwnedFd> {
    if !super::format::is_hash(name) {
        return None;
    }
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&file).ok()?;
    let ours = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
        && stat.st_uid == 0
        && stat.st_mode & 0o077 == 0;
    if !ours || stat.st_size as u64 != size {
        return None;
    }
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    let _ = rustix::fs::utimensat(dir, name, &now, AtFlags::SYMLINK_NOFOLLOW);
    Some(file)
}

fn temporary_name() -> io::Result<String> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    Ok(format!(".new-{:016x}", u64::from_le_bytes(random)))
}

pub(crate) fn write_all(file: &impl AsFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(file, bytes) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::StorageFull, "short write")),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
