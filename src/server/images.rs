//! The images directory: CRIU writes into a private staging directory that
//! the service creates inside the caller's directory, so the caller cannot
//! plant symlinks where root writes. On success the files are handed to the
//! caller (owner, mode 0600), renamed into the caller's directory (a rename
//! never follows a symlink) and `syncfs`ed; on failure only CRIU's log is
//! kept, also handed to the caller.

use super::engine::{DUMP_LOG, rpc};
use crate::proto::JobId;
use prost::Message;
use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// File the service adds to the images: what `selfdump restore` needs to
/// know about the dump.
pub const META_FILE: &str = "selfdump-meta.msgpack";

/// What `selfdump restore` needs to know about a dump (stored as MessagePack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The wire protocol version of the service that wrote the images.
    pub protocol: u16,
    /// The job that wrote them.
    pub job: JobId,
    /// Root pid of the dumped tree.
    pub pid: i32,
    /// Owner of the dumped process.
    pub uid: u32,
    /// CRIU was told the root is a shell job (restore must say so too).
    pub shell_job: bool,
    /// Established TCP connections were dumped.
    pub tcp_established: bool,
    /// File locks were dumped.
    pub file_locks: bool,
    /// External unix sockets were allowed.
    pub ext_unix_sk: bool,
}

/// What the published images hold.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Bytes of all image files.
    pub bytes: u64,
    /// Microseconds `syncfs` took.
    pub sync_us: u64,
    /// CRIU's own statistics, if it wrote them.
    pub stats: Option<rpc::DumpStatsEntry>,
    /// Tasks in the dumped tree.
    pub processes: u32,
}

impl Published {
    /// Adds what a later [`Staging::save`] or [`Staging::publish`] moved.
    pub fn and(self, later: Published) -> Published {
        Published {
            bytes: self.bytes + later.bytes,
            sync_us: self.sync_us + later.sync_us,
            stats: later.stats.or(self.stats),
            processes: self.processes.max(later.processes),
        }
    }
}

/// A private directory inside the caller's directory, where CRIU writes.
/// Dropped without [`Staging::publish`] or [`Staging::discard`] (a dump
/// future cancelled, the service shutting down mid-dump), it discards
/// itself: no root-owned directory is left in the caller's directory.
#[derive(Debug)]
pub struct Staging {
    parent: OwnedFd,
    name: String,
    dir: OwnedFd,
    owner: (u32, u32),
    finished: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.finished {
            log::warn!(
                "{}: dump abandoned; removing its staging directory",
                self.name
            );
            self.clean();
        }
    }
}

impl Staging {
    /// Creates `.selfdump-<job>` (mode 0700, root's) inside `parent`, and
    /// holds an `flock` on it while it lives: a lockable one was left by a
    /// service that died, and the next dump into `parent` removes it.
    pub fn create(parent: OwnedFd, job: JobId, owner: (u32, u32)) -> io::Result<Self> {
        let name = format!(".selfdump-{job}");
        rustix::fs::mkdirat(&parent, &name, Mode::RWXU)?;
        let opened = rustix::fs::openat(
            &parent,
            &name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )
        .and_then(|dir| {
            rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
            Ok(dir)
        });
        let dir = match opened {
            Ok(dir) => dir,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR);
                return Err(e.into());
            }
        };
        Ok(Self {
            parent,
            name,
            dir,
            owner,
            finished: false,
        })
    }

    /// The directory CRIU should write into.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Hands every file to the caller, moves it into the caller's directory,
    /// syncs the filesystem and removes the staging directory. On failure (a
    /// full disk, say) nothing of the dump is left but CRIU's log, handed to
    /// the caller: no partial set of images that could pass for a good one,
    /// no file of root's.
    pub fn publish(mut self, meta: &ImageMeta) -> io::Result<Published> {
        match self.save(meta) {
            Ok(published) => {
                self.finished = true;
                if let Err(e) = self.remove() {
                    log::warn!("cannot remove staging directory {}: {e}", self.name);
                }
                Ok(published)
            }
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// What [`Staging::publish`] does, but keeping the staging directory for
    /// files CRIU writes later: with "exit after dump" the images are saved
    /// this way while the tree is still frozen, before CRIU ends it. It can
    /// run again; each run reports what it moved. On failure the files it
    /// moved are removed again.
    pub fn save(&mut self, meta: &ImageMeta) -> io::Result<Published> {
        let mut moved = Vec::new();
        let saved = self.try_save(meta, &mut moved);
        if saved.is_err() {
            for name in moved.iter().filter(|n| *n != DUMP_LOG) {
                if let Err(e) = rustix::fs::unlinkat(&self.parent, name.as_str(), AtFlags::empty())
                {
                    log::warn!("cannot remove {name} of a failed dump: {e}");
                }
            }
        }
        saved
    }

    fn try_save(&self, meta: &ImageMeta, moved: &mut Vec<String>) -> io::Result<Published> {
        let body = rmp_serde::to_vec(meta).map_err(io::Error::other)?;
        let file = rustix::fs::openat(
            &self.dir,
            META_FILE,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        if rustix::io::write(&file, &body)? != body.len() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "short write of the meta file",
            ));
        }
        drop(file);

        let mut published = Published {
            stats: read_image(&self.dir, "stats-dump")
                .and_then(|b| rpc::StatsEntry::decode(first_entry(&b)?).ok())
                .and_then(|s| s.dump),
            processes: read_image(&self.dir, "pstree.img")
                .map(|b| entries(&b).count() as u32)
                .unwrap_or(0),
            ..Default::default()
        };
        for name in self.names()? {
            published.bytes += self.hand_over(&name)?;
            rustix::fs::renameat(&self.dir, &name, &self.parent, &name)?;
            moved.push(name);
        }
        let syncing = std::time::Instant::now();
        rustix::fs::syncfs(&self.parent)?;
        published.sync_us = syncing.elapsed().as_micros() as u64;
        Ok(published)
    }

    /// Throws the images away, keeping CRIU's log (handed to the caller) if
    /// there is one. Returns the log's name when it was kept, and the first
    /// error CRIU logged.
    pub fn discard(mut self) -> (Option<String>, Option<String>) {
        self.finished = true;
        self.clean()
    }

    fn clean(&self) -> (Option<String>, Option<String>) {
        let first_error = read_image(&self.dir, DUMP_LOG)
            .and_then(|log| super::engine::first_error(&String::from_utf8_lossy(&log)));
        let mut kept = None;
        for name in self.names().unwrap_or_default() {
            if name == DUMP_LOG
                && self.hand_over(&name).is_ok()
                && rustix::fs::renameat(&self.dir, &name, &self.parent, &name).is_ok()
            {
                kept = Some(name);
            } else if let Err(e) = rustix::fs::unlinkat(&self.dir, &name, AtFlags::empty()) {
                log::warn!("cannot remove {name} from {}: {e}", self.name);
            }
        }
        if let Err(e) = self.remove() {
            log::warn!("cannot remove staging directory {}: {e}", self.name);
        }
        (kept, first_error)
    }

    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in Dir::read_from(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Chowns and chmods one regular file; returns its size.
    fn hand_over(&self, name: &str) -> io::Result<u64> {
        let file = rustix::fs::openat(
            &self.dir,
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
        let (uid, gid) = self.owner;
        rustix::fs::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        rustix::fs::fchmod(&file, Mode::RUSR | Mode::WUSR)?;
        Ok(stat.st_size as u64)
    }

    fn remove(&self) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &self.parent,
            &self.name,
            AtFlags::REMOVEDIR,
        )?)
    }
}

/// Reads a small image file from `dir`, if it is there.
pub fn read_image(dir: &impl AsFd, name: &str) -> Option<Vec<u8>> {
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(&file, &mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
        if out.len() > 16 << 20 {
            return None;
        }
    }
}

/// The protobuf entries of a CRIU image: after two u32 magics, each entry
/// is a little-endian u32 length and that many bytes.
pub fn entries(image: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = image.get(8..).unwrap_or_default();
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let entry = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(entry)
    })
}

fn first_entry(image: &[u8]) -> Option<&[u8]> {
    entries(image).next()
}
