//! Hashing a root checkpoint's pages while CRIU restores, with the
//! restored tree held until they are verified.
//!
//! A restore verifies every image file before CRIU starts (`verify.rs`),
//! but the raw memory pages (`pages-*.img`, most of a large checkpoint's
//! bytes) may instead be hashed while CRIU runs, when three things hold:
//!
//! - **the bytes cannot change meanwhile.** The pages CRIU reads are the
//!   ones placed in the private directory before it started (`verify.rs`):
//!   a hard link to an inode only root can write, or root's own copy, in a
//!   directory of root's (0700). Their size was checked against the
//!   manifest before CRIU started; only root could change them since, and
//!   nothing of the service does. (So the hash taken while CRIU reads them
//!   is the hash of the bytes it reads.)
//! - **CRIU does not interpret them.** Every other image file (the page
//!   maps that say where each page goes, the memory layout, files, creds,
//!   namespaces) is hashed before CRIU starts, as before. A pages file is
//!   raw memory copied into the private and anonymous shared mappings of
//!   the tree being restored; no decision of CRIU's depends on its
//!   contents, and it reaches nothing outside that tree.
//! - **the restored tree runs none of it until it is verified.** CRIU
//!   announces its `post-restore` action after every task is rebuilt and
//!   before any task is given its credentials or resumed; a refusal there
//!   aborts the restore and CRIU kills the whole tree (CRIU's
//!   `restore_root_task`: "Aborting restore due to post-restore script").
//!   The restore runs through a `criu swrk` child (`engine/restore.rs`),
//!   whose actions arrive as messages: the answer to `post-restore` waits
//!   for the verdict, and lets CRIU go on only once every pages file's hash
//!   matched the signed manifest, within the restore's deadline.
//!
//! So a tampered pages file can never run: at worst CRIU copies its bytes
//! into a tree that is killed before its first instruction, and the
//! restore fails with the verification's error. This applies only where
//! CRIU runs as root for a root checkpoint (`selfdump restore` as root);
//! the owner's own CRIU (a non-root checkpoint) could be stopped or traced
//! by the owner, and lazy copies read their pages after the tree runs:
//! those verify every file first.
//!
//! Only a checkpoint with at least [`DEFER_AT_LEAST`] bytes of pages is
//! hashed this way: a smaller one is refused before CRIU reads any of it,
//! when tampered, which is the stronger promise, for a millisecond or two.

use super::settings::RestoreError;
use crate::server::images::manifest::hash_file_on_one_core;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Instant;

/// Pages files are hashed while CRIU runs when they hold at least this
/// many bytes in all: 32 MiB hash in about 10 ms on one core, which CRIU's
/// restore then need not wait for; below, hashing first costs little, and
/// a tampered file is refused before CRIU reads anything. (The gate itself
/// costs a message per CRIU action, `engine/restore.rs`.)
pub(super) const DEFER_AT_LEAST: u64 = 32 << 20;

/// Whether image file `name` is raw memory (see the module docs).
pub(super) fn is_pages(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// A placed image file whose hash is still to be checked.
#[derive(Debug)]
pub(crate) struct Unhashed {
    pub(super) name: String,
    pub(super) file: OwnedFd,
    pub(super) size: u64,
    pub(super) hash: [u8; 32],
}

/// The pages being hashed, on a thread of their own, and their verdict.
#[derive(Debug)]
pub(super) struct Gate {
    pending: Option<mpsc::Receiver<Result<(), RestoreError>>>,
    verdict: Option<Result<(), RestoreError>>,
}

impl Gate {
    /// Starts hashing `unhashed` on a thread of its own.
    pub(super) fn open(unhashed: Vec<Unhashed>) -> std::io::Result<Self> {
        let (tell, pending) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("restore-hash".into())
            .spawn(move || {
                let started = Instant::now();
                let checked = check(&unhashed);
                log::debug!(
                    "restore: {} pages file(s) hashed during the restore in {:?}",
                    unhashed.len(),
                    started.elapsed()
                );
                let _ = tell.send(checked);
            })?;
        Ok(Self {
            pending: Some(pending),
            verdict: None,
        })
    }

    /// Whether every pages file matched, waiting for the verdict until
    /// `deadline` at most (past it, the restore is refused).
    pub(super) fn passes_by(&mut self, deadline: Instant) -> bool {
        if let Some(pending) = self.pending.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.verdict = Some(pending.recv_timeout(left).unwrap_or_else(|e| match e {
                mpsc::RecvTimeoutError::Timeout => Err(RestoreError::Refused(
                    "the pages were not verified within the restore's deadline".into(),
                )),
                mpsc::RecvTimeoutError::Disconnected => Err(died()),
            }));
        }
        matches!(self.verdict, Some(Ok(())))
    }

    /// The refusal, if the pages did not verify (waiting for the hashing
    /// if [`Self::passes_by`] was not asked: CRIU failed before it).
    pub(super) fn verdict(&mut self) -> Result<(), RestoreError> {
        if let Some(pending) = self.pending.take() {
            self.verdict = Some(pending.recv().unwrap_or_else(|_| Err(died())));
        }
        self.verdict.take().unwrap_or(Ok(()))
    }
}

/// Why pages went unverified when their hashing thread ended without a
/// verdict.
fn died() -> RestoreError {
    RestoreError::Refused("the pages could not be hashed (the hashing thread died)".into())
}

/// Hashes each file and compares it with its signed hash. On one core:
/// CRIU's restore runs on another meanwhile, mostly on one core itself.
fn check(unhashed: &[Unhashed]) -> Result<(), RestoreError> {
    for u in unhashed {
        let hash = hash_file_on_one_core(&u.file, u.size)
            .map_err(|e| RestoreError::Refused(format!("{}: {e}", u.name)))?;
        if hash != u.hash {
            return Err(RestoreError::Refused(format!(
                "{} changed since the dump (its hash differs)",
                u.name
            )));
        }
    }
    Ok(())
}
