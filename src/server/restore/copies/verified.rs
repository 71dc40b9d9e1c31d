//! Verify once, restore many: a verified set of images kept across rounds
//! of copies (a benchmark harness warms a program up once, checkpoints it
//! under `selfdump run`, then restores copies of it round after round).
//!
//! [`copies::restore_copies`](crate::server::restore::copies::restore_copies) hashes every
//! image file, pages included, on every call: tens of milliseconds per
//! 256 MiB, which is most of a lazy copy's time. [`VerifiedImages`] does
//! that once, keeps the verified private directory, and before each round
//! only re-checks that it is still as verified (`Verified::recheck`: names,
//! sizes, owners and modes, no hashing; its doc says why that suffices).

use super::round::{Copies, start_round};
use super::rules::{check_count, copyable};
use crate::server::images::manifest::hashed_on_this_thread;
use crate::server::restore::{RestoreError, RestoreSettings, Verified, verify_path};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Root's images of a whole pid namespace, verified once (signature, every
/// file's hash, credentials), from which rounds of copies are restored
/// without hashing them again.
///
/// The verified files stay in a directory of root's (0700) inside the
/// generation, `.selfdump-restore-*`, until this and every [`Copies`]
/// restored from it are dropped (a round's lazy copies read their pages
/// from it until [`Copies::supervise`] returns, so the last one to go
/// removes it, whichever it is).
///
/// It is of the generation `latest` named when it was opened (or of the
/// generation whose directory was given). A later checkpoint into the same
/// directory is a new generation and does not change it, and retention
/// leaves this one alone while it is held, so its rounds go on restoring
/// the checkpoint that was verified. Open the directory again for the new
/// one.
///
/// ```no_run
/// use selfdump::server::copies::VerifiedImages;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let settings: selfdump::server::restore::RestoreSettings = todo!();
/// let images = VerifiedImages::open(&settings, "/var/tmp/warm".as_ref())?; // hashes once
/// for _round in 0..100 {
///     let copies = images.restore_copies(&settings, 8, true)?; // re-checks, no hashing
///     // ... let the copies run their workload, then end them ...
///     copies.supervise();
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct VerifiedImages {
    verified: Arc<Verified>,
    dir: PathBuf,
    verify: Duration,
    hashed: u64,
    /// Whether the first round has started: it reports [`Self::open`]'s
    /// verification as its own (what `restore_copies` always did).
    started: AtomicBool,
}

impl VerifiedImages {
    /// Verifies the images in `dir` as any restore does
    /// ([`verify_path`]: the signature with `settings.key`, every file's
    /// hash, every task's credentials), and checks that copies may be made
    /// of them: root's images of a whole pid namespace (a program started
    /// with `selfdump run`). Remembers how long that took
    /// ([`Self::verify_time`]).
    pub fn open(settings: &RestoreSettings, dir: &Path) -> Result<Self, RestoreError> {
        let started = Instant::now();
        let hashed_before = hashed_on_this_thread();
        let verified = verify_path(dir, settings)?;
        copyable(&verified.meta, dir)?;
        Ok(Self {
            verified: Arc::new(verified),
            dir: dir.to_path_buf(),
            verify: started.elapsed(),
            hashed: hashed_on_this_thread() - hashed_before,
            started: AtomicBool::new(false),
        })
    }

    /// Restores `copies` copies at once, each in a fresh pid namespace, as
    /// [`restore_copies`](crate::server::restore::copies::restore_copies) does after its
    /// verification (`lazy`: with CRIU's lazy pages). First the verified
    /// set is re-checked without hashing; if anything in it changed since
    /// [`Self::open`] (a file's owner, mode, size or type, a file added or
    /// removed), the round is refused, naming the file, and nothing runs:
    /// open the images again to verify them afresh.
    ///
    /// `settings` gives this round's CRIU and deadline (its key was used by
    /// `open`). [`Copies::verify`] is the re-check's time, and for the
    /// first round `open`'s too; [`Copies::hashed`] is 0 but for the
    /// first round.
    pub fn restore_copies(
        &self,
        settings: &RestoreSettings,
        copies: u32,
        lazy: bool,
    ) -> Result<Copies, RestoreError> {
        check_count(copies)?;
        let hashed_before = hashed_on_this_thread();
        let started = Instant::now();
        self.verified.recheck()?;
        let first = !self.started.swap(true, Ordering::SeqCst);
        let verify = match first {
            true => self.verify + started.elapsed(),
            false => started.elapsed(),
        };
        let mut round = start_round(
            settings,
            Arc::clone(&self.verified),
            verify,
            !first,
            copies,
            lazy,
        )?;
        round.hashed =
            hashed_on_this_thread() - hashed_before + if first { self.hashed } else { 0 };
        Ok(round)
    }

    /// The generation these were verified from (`None`: images directly
    /// in the directory given).
    pub fn generation(&self) -> Option<&str> {
        self.verified.generation.as_deref()
    }

    /// The images directory these were verified from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Self::open`]'s verification took.
    pub fn verify_time(&self) -> Duration {
        self.verify
    }

    /// Bytes [`Self::open`] hashed (every signed file, pages included).
    pub fn hashed(&self) -> u64 {
        self.hashed
    }
}
