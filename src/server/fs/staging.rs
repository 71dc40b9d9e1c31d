//! The staging directory: CRIU writes into a private directory made inside
//! the caller's directory, so the caller cannot plant symlinks where root
//! writes. On success its files become a generation (`commit.rs`): a
//! directory of its own in the caller's directory, which `latest` then
//! names, and older generations go (`retention.rs`). On failure only
//! CRIU's log is kept, handed to the caller, in the caller's directory.
//! [`Staging`] says how each step keeps the filesystem rule.

use crate::proto::JobId;
use crate::server::caller::credentials::Credentials;
use crate::server::fs::generations::commit::{Committed, seal};
use crate::server::fs::generations::files::{Source, Writer, hand_over, open_written};
use crate::server::fs::root_subdir::RootSubdir;
use crate::server::images::criu_log::{DUMP_LOG, first_error};
use crate::server::images::format::{ImageMeta, Published, dump_stats, read_image};
use crate::server::images::manifest::Key;
use rustix::fs::AtFlags;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// A private directory inside the caller's directory, where CRIU writes.
/// Dropped without [`Staging::publish`] or [`Staging::discard`] (a dump
/// future cancelled, the service shutting down mid-dump), it discards
/// itself: no root-owned directory is left in the caller's directory.
///
/// How each step keeps the filesystem rule (see `as_caller.rs`):
///
/// - made, verified, made root's and removed as a [`RootSubdir`]: CRIU
///   only ever sees its fd, never its name, and it stays root's for as
///   long as CRIU may write there (with "exit after dump", after the
///   generation is committed from its files);
/// - the generation is a directory of its own, made from this one's files
///   through their fds (see `commit.rs`);
/// - the log of a failed dump is handed to the caller through its fd,
///   then moved out with `RENAME_NOREPLACE`: root never replaces a name in
///   the caller's directory. A name already there is unlinked first with
///   the caller's credentials (so a root-owned `dump.log` in a sticky
///   `/tmp` stays root's, and the log is not kept).
#[derive(Debug)]
pub struct Staging {
    subdir: RootSubdir,
    key: Key,
    job: JobId,
    /// The generation this dump becomes.
    generation: String,
    /// The generation, once committed (at `post-dump` with "exit after
    /// dump", else once CRIU has exited).
    committed: Option<Committed>,
    finished: bool,
    /// Who writes the files: root's CRIU, or one running as the caller
    /// ([`Staging::for_criu_as_caller`]).
    writer: Writer,
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
    /// [`RootSubdir`]), locked while it lives: a lockable one was left by
    /// a service that died, and the next dump into `parent` removes it. The
    /// dump becomes generation `generation`.
    pub(crate) fn create(
        parent: OwnedFd,
        job: JobId,
        creds: Credentials,
        key: Key,
        generation: String,
    ) -> io::Result<Self> {
        Self::create_racing(parent, job, creds, key, generation, |_| {})
    }

    /// [`Staging::create`], with `between` run where a caller would swap
    /// the name (for tests).
    fn create_racing(
        parent: OwnedFd,
        job: JobId,
        creds: Credentials,
        key: Key,
        generation: String,
        between: impl FnOnce(&str),
    ) -> io::Result<Self> {
        let subdir = RootSubdir::create(parent, &format!(".selfdump-{job}-"), creds, between)?;
        Ok(Self {
            subdir,
            key,
            job,
            generation,
            committed: None,
            finished: false,
            writer: Writer::Root,
        })
    }

    /// Makes the directory CRIU writes into one of the caller's, nested in
    /// the root-only staging directory (see [`RootSubdir::nest_callers_dir`]),
    /// for a CRIU that runs as the caller. Its files are then taken only if
    /// they are the caller's regular files with a single link, and hashed
    /// by reading them, never through a mapping (see the module docs of
    /// `engine`).
    pub fn for_criu_as_caller(&mut self) -> io::Result<()> {
        self.subdir.nest_callers_dir()?;
        self.writer = Writer::CallersCriu;
        Ok(())
    }

    /// The directory CRIU should write into.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.subdir.dir()
    }

    /// What CRIU writes into, and who.
    fn source(&self) -> Source<'_> {
        Source {
            dir: self.subdir.dir(),
            writer: self.writer,
        }
    }

    /// The generation this dump becomes.
    pub(crate) fn generation(&self) -> &str {
        &self.generation
    }

    /// Whether the generation is committed (with "exit after dump", before
    /// CRIU ended).
    pub(crate) fn is_committed(&self) -> bool {
        self.committed.is_some()
    }

    /// Commits the generation (unless [`Staging::save`] did), adds CRIU's
    /// log and statistics to it, and removes the staging directory. On
    /// failure (a full disk, say) nothing of the dump is left but CRIU's
    /// log, handed to the caller, and `latest` names what it named. Call it
    /// once CRIU has exited. (Older generations go after the answer:
    /// `retention.rs`.)
    pub fn publish(mut self, meta: &ImageMeta) -> io::Result<Published> {
        let published = match self.committed.take() {
            Some(committed) => {
                let bytes = committed.add_extras(self.source(), &self.subdir.creds);
                self.committed = Some(committed);
                Published {
                    bytes,
                    stats: dump_stats(&self.subdir.dir),
                    ..Default::default()
                }
            }
            None => match self.commit(meta, true) {
                Ok(published) => published,
                Err(e) => {
                    self.discard();
                    return Err(e);
                }
            },
        };
        self.finished = true;
        self.committed = None; // its lock goes
        self.subdir.empty();
        self.subdir.remove(true);
        Ok(published)
    }

    /// Commits the generation from the files CRIU has written so far, all
    /// but its log and statistics, which it writes later: with "exit after
    /// dump" the images are saved this way while the tree is still frozen,
    /// before CRIU ends it. The staging directory stays root's for what
    /// CRIU writes next; [`Staging::publish`] adds that to the generation.
    pub fn save(&mut self, meta: &ImageMeta) -> io::Result<Published> {
        self.commit(meta, false)
    }

    fn commit(&mut self, meta: &ImageMeta, with_extras: bool) -> io::Result<Published> {
        let meta = ImageMeta {
            generation: Some(self.generation.clone()),
            ..meta.clone()
        };
        let sealing = std::time::Instant::now();
        let sealed = seal(
            &self.subdir.parent,
            self.source(),
            self.job,
            &self.subdir.creds,
            &self.key,
            &meta,
            with_extras,
        )?;
        log::debug!(
            "job {}: sealed (files placed, hashed, handed over) in {:?}",
            self.job,
            sealing.elapsed()
        );
        let committed = sealed.commit(&self.generation)?;
        let published = committed.published.clone();
        self.committed = Some(committed);
        Ok(published)
    }

    /// Moves a handed-over file into the caller's directory without ever
    /// replacing a name there as root (see the type's docs).
    fn move_out(&self, name: &str) -> io::Result<()> {
        match self.rename_out(name) {
            Err(rustix::io::Errno::EXIST) => {}
            other => return Ok(other?),
        }
        let parent = &self.subdir.parent;
        self.subdir
            .creds
            .run(|| rustix::fs::unlinkat(parent, name, AtFlags::empty()))?
            .map_err(|e| {
                io::Error::other(format!(
                    "cannot replace {name} in the images directory ({e}): uid {} may not \
                     remove it",
                    self.subdir.creds.uid
                ))
            })?;
        self.rename_out(name).map_err(|e| match e {
            rustix::io::Errno::EXIST => io::Error::other(format!(
                "{name} reappeared in the images directory while the log was kept"
            )),
            e => e.into(),
        })
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
            .and_then(|log| first_error(&String::from_utf8_lossy(&log)));
        let mut kept = None;
        for name in self.subdir.names().unwrap_or_default() {
            if name == DUMP_LOG && self.hand_over(&name).is_ok() && self.move_out(&name).is_ok() {
                kept = Some(name);
            } else if let Err(e) = rustix::fs::unlinkat(&self.subdir.dir, &name, AtFlags::empty()) {
                log::warn!("cannot remove {name} from {}: {e}", self.subdir.name);
            }
        }
        self.subdir.remove(criu_gone);
        (kept, first_error)
    }

    /// Hands one file CRIU wrote to the caller (owner, mode 0600); returns
    /// it and its size.
    fn hand_over(&self, name: &str) -> io::Result<(OwnedFd, u64)> {
        let (file, size) = open_written(self.source(), name, &self.subdir.creds)?;
        hand_over(&file, &self.subdir.creds)?;
        Ok((file, size))
    }
}

#[cfg(test)]
#[path = "staging_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "staging_as_caller_tests.rs"]
mod as_caller_tests;
