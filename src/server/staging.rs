//! The staging directory: CRIU writes into a private directory made inside
//! the caller's directory, so the caller cannot plant symlinks where root
//! writes. On success the files are handed to the caller (owner, mode
//! 0600), moved into the caller's directory and `syncfs`ed; on failure only
//! CRIU's log is kept, also handed to the caller. [`Staging`] says how each
//! step keeps the filesystem rule.

use super::as_caller::CallerCreds;
use super::engine::{DUMP_LOG, rpc};
use super::images::{ImageMeta, Published, entries, first_entry, read_image};
use super::manifest::{
    FileDigest, Key, MANIFEST_FILE, Manifest, create_file, hash_file, hash_file_by_reading,
    unsigned_extra,
};
use super::subdir::PrivateSubdir;
use crate::proto::JobId;
use prost::Message;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// A private directory inside the caller's directory, where CRIU writes.
/// Dropped without [`Staging::publish`] or [`Staging::discard`] (a dump
/// future cancelled, the service shutting down mid-dump), it discards
/// itself: no root-owned directory is left in the caller's directory.
///
/// How each step keeps the filesystem rule (see `as_caller.rs`):
///
/// - made, verified, made root's and removed as a [`PrivateSubdir`]: CRIU
///   only ever sees its fd, never its name;
/// - image files are handed to the caller through their fds, then moved
///   out with `RENAME_NOREPLACE`: root never replaces a name in the
///   caller's directory. A name already there is unlinked first with the
///   caller's credentials (so a root-owned `dump.log` in a sticky `/tmp`
///   stays root's, and the save fails with that reason);
#[derive(Debug)]
pub struct Staging {
    subdir: PrivateSubdir,
    key: Key,
    /// What the manifest says, once it is written.
    signed: Option<ImageMeta>,
    finished: bool,
    /// CRIU runs as the caller and writes into a directory of the
    /// caller's ([`Staging::for_criu_as_caller`]).
    criu_as_caller: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.finished {
            log::warn!(
                "{}: dump abandoned; removing its staging directory",
                self.subdir.name
            );
            // CRIU may still run: the directory stays root's
            self.clean(false);
        }
    }
}

impl Staging {
    /// Creates `.selfdump-<job>-<random>` inside `parent` (see
    /// [`PrivateSubdir`]), locked while it lives: a lockable one was left by
    /// a service that died, and the next dump into `parent` removes it.
    pub(crate) fn create(
        parent: OwnedFd,
        job: JobId,
        creds: CallerCreds,
        key: Key,
    ) -> io::Result<Self> {
        Self::create_racing(parent, job, creds, key, |_| {})
    }

    /// [`Staging::create`], with `between` run where a caller would swap
    /// the name (for tests).
    fn create_racing(
        parent: OwnedFd,
        job: JobId,
        creds: CallerCreds,
        key: Key,
        between: impl FnOnce(&str),
    ) -> io::Result<Self> {
        let subdir = PrivateSubdir::create(parent, &format!(".selfdump-{job}-"), creds, between)?;
        Ok(Self {
            subdir,
            key,
            signed: None,
            finished: false,
            criu_as_caller: false,
        })
    }

    /// Makes the directory CRIU writes into one of the caller's, nested in
    /// the root-only staging directory (see [`PrivateSubdir::nest_callers_dir`]),
    /// for a CRIU that runs as the caller. Its files are then taken only if
    /// they are the caller's regular files with a single link, and hashed
    /// by reading them, never through a mapping (see the module docs of
    /// `engine`).
    pub fn for_criu_as_caller(&mut self) -> io::Result<()> {
        self.subdir.nest_callers_dir()?;
        self.criu_as_caller = true;
        Ok(())
    }

    /// The directory CRIU should write into.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.subdir.dir()
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
                self.subdir.remove(true);
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
            let parent = &self.subdir.parent;
            let undone = self.subdir.creds.run(|| {
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

    fn try_save(&mut self, meta: &ImageMeta, moved: &mut Vec<String>) -> io::Result<Published> {
        let mut published = Published {
            stats: read_image(&self.subdir.dir, "stats-dump")
                .and_then(|b| rpc::StatsEntry::decode(first_entry(&b)?).ok())
                .and_then(|s| s.dump),
            processes: read_image(&self.subdir.dir, "pstree.img")
                .map(|b| entries(&b).count() as u32)
                .unwrap_or(0),
            ..Default::default()
        };
        let mut names = self.subdir.names()?;
        let mut files = Vec::new();
        for name in &names {
            let (file, size) = self.hand_over(name)?;
            published.bytes += size;
            if self.signed.is_none() && !unsigned_extra(name) {
                let hash = match self.criu_as_caller {
                    true => hash_file_by_reading(&file, size)?,
                    false => hash_file(&file, size)?,
                };
                files.push(FileDigest {
                    name: name.clone(),
                    size,
                    hash,
                });
            }
        }
        // Signed once, with the first save: what CRIU writes later (its
        // log and statistics, with "exit after dump") is not for restores.
        // Hashed here, while only root (or the caller's CRIU, which has
        // exited, or with "exit after dump" only waits) can write the files.
        if self.signed.is_none() {
            files.sort_by(|a, b| a.name.cmp(&b.name));
            let manifest = Manifest {
                key_id: self.key.id(),
                meta: self.complete(meta),
                files,
            };
            let created = create_file(&self.subdir.dir, MANIFEST_FILE, &manifest.sign(&self.key))?;
            published.bytes += self.hand_over_file(created, MANIFEST_FILE, true)?.1;
            names.push(MANIFEST_FILE.to_string());
            self.signed = Some(manifest.meta);
        }
        self.move_out(&names, moved)?;
        let syncing = std::time::Instant::now();
        rustix::fs::syncfs(&self.subdir.parent)?;
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
        let parent = &self.subdir.parent;
        self.subdir.creds.run(|| {
            taken.iter().try_for_each(|name| {
                rustix::fs::unlinkat(parent, name.as_str(), AtFlags::empty()).map_err(|e| {
                    io::Error::other(format!(
                        "cannot replace {name} in the images directory ({e}): \
                         uid {} may not remove it",
                        self.subdir.creds.uid
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
            &self.subdir.dir,
            name,
            &self.subdir.parent,
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
        let first_error = read_image(&self.subdir.dir, DUMP_LOG)
            .and_then(|log| super::engine::first_error(&String::from_utf8_lossy(&log)));
        let mut kept = None;
        for name in self.subdir.names().unwrap_or_default() {
            if name == DUMP_LOG
                && self.hand_over(&name).is_ok()
                && self
                    .move_out(std::slice::from_ref(&name), &mut Vec::new())
                    .is_ok()
            {
                kept = Some(name);
            } else if let Err(e) = rustix::fs::unlinkat(&self.subdir.dir, &name, AtFlags::empty()) {
                log::warn!("cannot remove {name} from {}: {e}", self.subdir.name);
            }
        }
        self.subdir.remove(criu_gone);
        (kept, first_error)
    }

    /// The facts only known once CRIU is done: the tree's pids, the time,
    /// the host.
    fn complete(&self, meta: &ImageMeta) -> ImageMeta {
        let pids = read_image(&self.subdir.dir, "pstree.img")
            .map(|b| {
                entries(&b)
                    .filter_map(|e| rpc::PstreeEntry::decode(e).ok())
                    .map(|e| e.pid as i32)
                    .collect()
            })
            .unwrap_or_default();
        ImageMeta {
            pids,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            host: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            ..meta.clone()
        }
    }

    /// Chowns and chmods one regular file; returns it and its size.
    fn hand_over(&self, name: &str) -> io::Result<(OwnedFd, u64)> {
        let file = rustix::fs::openat(
            &self.subdir.dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        self.hand_over_file(file, name, false)
    }

    /// [`Self::hand_over`] for an open file; `created_here`: the service
    /// created it (else CRIU did).
    fn hand_over_file(
        &self,
        file: OwnedFd,
        name: &str,
        created_here: bool,
    ) -> io::Result<(OwnedFd, u64)> {
        let stat = rustix::fs::fstat(&file)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::other(format!(
                "unexpected non-regular image file {name}"
            )));
        }
        let creds = &self.subdir.creds;
        if self.criu_as_caller && !created_here {
            // written by the caller's CRIU: the caller's already, and
            // nothing else may pass for it (root chowns nothing of root's here)
            if stat.st_uid != creds.uid || stat.st_nlink != 1 {
                return Err(io::Error::other(format!(
                    "{name} is not a file the caller's CRIU wrote (owner uid {}, {} links)",
                    stat.st_uid, stat.st_nlink
                )));
            }
        } else {
            rustix::fs::fchown(
                &file,
                Some(Uid::from_raw(creds.uid)),
                Some(Gid::from_raw(creds.gid)),
            )?;
        }
        rustix::fs::fchmod(&file, Mode::RUSR | Mode::WUSR)?;
        Ok((file, stat.st_size as u64))
    }
}

#[cfg(test)]
#[path = "staging_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "staging_as_caller_tests.rs"]
mod as_caller_tests;
