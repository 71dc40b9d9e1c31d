//! The staging directory: CRIU writes into a private directory made inside
//! the caller's directory, so the caller cannot plant symlinks where root
//! writes. On success the files are handed to the caller (owner, mode
//! 0600), moved into the caller's directory and `syncfs`ed; on failure only
//! CRIU's log is kept, also handed to the caller. [`Staging`] says how each
//! step keeps the filesystem rule.

use super::as_caller::CallerCreds;
use super::engine::{DUMP_LOG, rpc};
use super::images::{ImageMeta, META_FILE, Published, entries, first_entry, read_image};
use crate::proto::JobId;
use prost::Message;
use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A private directory inside the caller's directory, where CRIU writes.
/// Dropped without [`Staging::publish`] or [`Staging::discard`] (a dump
/// future cancelled, the service shutting down mid-dump), it discards
/// itself: no root-owned directory is left in the caller's directory.
///
/// How each step keeps the filesystem rule (see `as_caller.rs`):
///
/// - created by the caller's credentials (`mkdirat` on the caller's
///   directory fd), so the kernel decides whether the caller may create
///   there, with a random name;
/// - opened by the service with `O_NOFOLLOW | O_DIRECTORY` and verified to
///   be a directory of the caller's (a swapped-in directory of its own is
///   as good as the one it made); then made root's, mode 0700, ACLs
///   removed, and checked empty *after* that, so nothing the caller put in
///   beforehand stays. CRIU only ever sees this fd, never the name;
/// - image files are handed to the caller through their fds, then moved
///   out with `RENAME_NOREPLACE`: root never replaces a name in the
///   caller's directory. A name already there is unlinked first with the
///   caller's credentials (so a root-owned `dump.log` in a sticky `/tmp`
///   stays root's, and the save fails with that reason);
/// - once CRIU has exited and the directory is empty, it is given back to
///   the caller and removed by name with the caller's credentials: if the
///   caller moved it, what is left is the caller's own empty directory.
#[derive(Debug)]
pub struct Staging {
    parent: OwnedFd,
    name: String,
    dir: OwnedFd,
    creds: CallerCreds,
    finished: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.finished {
            log::warn!(
                "{}: dump abandoned; removing its staging directory",
                self.name
            );
            // CRIU may still run: the directory stays root's
            self.clean(false);
        }
    }
}

/// `statfs` magic of FUSE filesystems.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

impl Staging {
    /// Creates `.selfdump-<job>-<random>` inside `parent` as described
    /// above, and holds an `flock` on it while it lives: a lockable one was
    /// left by a service that died, and the next dump into `parent`
    /// removes it.
    pub(crate) fn create(parent: OwnedFd, job: JobId, creds: CallerCreds) -> io::Result<Self> {
        Self::create_racing(parent, job, creds, |_| {})
    }

    /// [`Staging::create`], with `between` run between the `mkdir` and the
    /// `open`, where a caller would swap the name (for tests).
    fn create_racing(
        parent: OwnedFd,
        job: JobId,
        creds: CallerCreds,
        between: impl FnOnce(&str),
    ) -> io::Result<Self> {
        if rustix::fs::fstatfs(&parent)?.f_type as i64 == FUSE_SUPER_MAGIC {
            // its owner's daemon answers every lookup, symlinks included
            return Err(io::Error::other(
                "the images directory is on a FUSE filesystem, whose owner decides what \
                 root's writes reach there; use a directory on a local filesystem",
            ));
        }
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = format!(".selfdump-{job}-{:016x}", u64::from_le_bytes(random));
        creds
            .run(|| rustix::fs::mkdirat(&parent, name.as_str(), Mode::RWXU))?
            .map_err(|e| match e {
                rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => io::Error::other(format!(
                    "uid {} may not create files in the images directory",
                    creds.uid
                )),
                e => e.into(),
            })?;
        between(&name);
        let dir = rustix::fs::openat(
            &parent,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&dir)?;
        if stat.st_uid != creds.uid {
            return Err(io::Error::other(format!(
                "{name} was replaced by a directory of uid {} while it was made",
                stat.st_uid
            )));
        }
        // locked before it is root's: an unlocked root-owned staging
        // directory is a dead service's, for `leftovers` to remove
        rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        rustix::fs::fchown(&dir, Some(Uid::ROOT), Some(Gid::ROOT))?;
        rustix::fs::fchmod(&dir, Mode::RWXU)?;
        for acl in ["system.posix_acl_access", "system.posix_acl_default"] {
            match rustix::fs::fremovexattr(&dir, acl) {
                Ok(()) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let staging = Self {
            parent,
            name,
            dir,
            creds,
            finished: true, // until it is known to be ours: dropped as is
        };
        let entries = staging.names()?;
        if !entries.is_empty() {
            let _ = staging.give_back();
            return Err(io::Error::other(format!(
                "{} was filled ({}) while it was made",
                staging.name,
                entries.join(", ")
            )));
        }
        let mut staging = staging;
        staging.finished = false;
        Ok(staging)
    }

    /// The directory CRIU should write into.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Hands every file to the caller, moves it into the caller's directory,
    /// syncs the filesystem and removes the staging directory. On failure (a
    /// full disk, say) nothing of the dump is left but CRIU's log, handed to
    /// the caller: no partial set of images that could pass for a good one,
    /// no file of root's. Call it once CRIU has exited.
    pub fn publish(mut self, meta: &ImageMeta) -> io::Result<Published> {
        match self.save(meta) {
            Ok(published) => {
                self.finished = true;
                self.remove(true);
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
    /// moved are removed again (with the caller's credentials: they are the
    /// caller's files in the caller's directory by then).
    pub fn save(&mut self, meta: &ImageMeta) -> io::Result<Published> {
        let mut moved = Vec::new();
        let saved = self.try_save(meta, &mut moved);
        if saved.is_err() {
            let parent = &self.parent;
            let undone = self.creds.run(|| {
                for name in moved.iter().filter(|n| *n != DUMP_LOG) {
                    if let Err(e) = rustix::fs::unlinkat(parent, name.as_str(), AtFlags::empty()) {
                        log::warn!("cannot remove {name} of a failed dump: {e}");
                    }
                }
            });
            if let Err(e) = undone {
                log::warn!("cannot remove the files of a failed dump: {e}");
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
        let names = self.names()?;
        for name in &names {
            published.bytes += self.hand_over(name)?;
        }
        self.move_out(&names, moved)?;
        let syncing = std::time::Instant::now();
        rustix::fs::syncfs(&self.parent)?;
        published.sync_us = syncing.elapsed().as_micros() as u64;
        Ok(published)
    }

    /// Moves handed-over files into the caller's directory without ever
    /// replacing a name there as root (see the type's docs).
    fn move_out(&self, names: &[String], moved: &mut Vec<String>) -> io::Result<()> {
        let mut taken = Vec::new();
        for name in names {
            match self.rename_out(name) {
                Ok(()) => moved.push(name.clone()),
                Err(rustix::io::Errno::EXIST) => taken.push(name.clone()),
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let parent = &self.parent;
        self.creds.run(|| {
            taken.iter().try_for_each(|name| {
                rustix::fs::unlinkat(parent, name.as_str(), AtFlags::empty()).map_err(|e| {
                    io::Error::other(format!(
                        "cannot replace {name} in the images directory ({e}): \
                         uid {} may not remove it",
                        self.creds.uid
                    ))
                })
            })
        })??;
        for name in taken {
            self.rename_out(&name).map_err(|e| match e {
                rustix::io::Errno::EXIST => io::Error::other(format!(
                    "{name} reappeared in the images directory while the images were saved"
                )),
                e => e.into(),
            })?;
            moved.push(name);
        }
        Ok(())
    }

    fn rename_out(&self, name: &str) -> rustix::io::Result<()> {
        rustix::fs::renameat_with(
            &self.dir,
            name,
            &self.parent,
            name,
            rustix::fs::RenameFlags::NOREPLACE,
        )
    }

    /// Throws the images away, keeping CRIU's log (handed to the caller) if
    /// there is one. Returns the log's name when it was kept, and the first
    /// error CRIU logged. Call it once CRIU has exited.
    pub fn discard(mut self) -> (Option<String>, Option<String>) {
        self.finished = true;
        self.clean(true)
    }

    /// Empties the directory through its fd and removes it; `criu_gone`
    /// says it may be given back to the caller first (see [`Self::remove`]).
    fn clean(&self, criu_gone: bool) -> (Option<String>, Option<String>) {
        let first_error = read_image(&self.dir, DUMP_LOG)
            .and_then(|log| super::engine::first_error(&String::from_utf8_lossy(&log)));
        let mut kept = None;
        for name in self.names().unwrap_or_default() {
            if name == DUMP_LOG
                && self.hand_over(&name).is_ok()
                && self
                    .move_out(std::slice::from_ref(&name), &mut Vec::new())
                    .is_ok()
            {
                kept = Some(name);
            } else if let Err(e) = rustix::fs::unlinkat(&self.dir, &name, AtFlags::empty()) {
                log::warn!("cannot remove {name} from {}: {e}", self.name);
            }
        }
        self.remove(criu_gone);
        (kept, first_error)
    }

    /// Removes the (empty) staging directory. Once CRIU is gone it is first
    /// given back to the caller and then removed with the caller's
    /// credentials, so a caller that moved it away keeps an empty directory
    /// of its own, never one of root's. While CRIU may still write into it,
    /// it stays root's and is removed by name as root: `rmdir` only takes
    /// an empty directory, and to put one under this name the caller must
    /// have been able to remove it anyway.
    fn remove(&self, criu_gone: bool) {
        let rmdir = || rustix::fs::unlinkat(&self.parent, self.name.as_str(), AtFlags::REMOVEDIR);
        let removed = match criu_gone && self.names().is_ok_and(|n| n.is_empty()) {
            true => self
                .give_back()
                .map_err(io::Error::from)
                .and_then(|()| self.creds.run(rmdir)?.map_err(io::Error::from)),
            false => rmdir().map_err(io::Error::from),
        };
        if let Err(e) = removed {
            log::warn!("cannot remove staging directory {}: {e}", self.name);
        }
    }

    fn give_back(&self) -> rustix::io::Result<()> {
        rustix::fs::fchown(
            &self.dir,
            Some(Uid::from_raw(self.creds.uid)),
            Some(Gid::from_raw(self.creds.gid)),
        )
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
        rustix::fs::fchown(
            &file,
            Some(Uid::from_raw(self.creds.uid)),
            Some(Gid::from_raw(self.creds.gid)),
        )?;
        rustix::fs::fchmod(&file, Mode::RUSR | Mode::WUSR)?;
        Ok(stat.st_size as u64)
    }
}

#[cfg(test)]
#[path = "staging_tests.rs"]
mod tests;
