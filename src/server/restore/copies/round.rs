//! One round of copies: every copy's CRIU started at once, waited for
//! within the restore deadline, and the lazy copies' page daemons watched
//! until every page is in.

use super::launch::{Pending, start_all};
use super::watchdog::Watchdog;
use crate::server::fs::service_dir::{KEEP_LEFTOVER_BYTES, KEEP_LEFTOVERS, LOG_DIR, ServiceDir};
use crate::server::images::criu_log::first_error;
use crate::server::restore::{RestoreError, RestoreSettings, Verified, check_criu};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One running copy.
#[derive(Debug)]
pub struct Copy {
    /// Its number, 0 to N-1 (what its `RestoredInfo::copy` says).
    pub number: u32,
    /// Its root's pid (this process's number; it is pid 1 inside its namespace).
    pub pid: i32,
    /// The restore id handed to it (its `RestoredInfo::restore_id`), if its
    /// images have a copy slot.
    pub restore_id: Option<u128>,
    pidfd: Option<OwnedFd>,
}

impl Copy {
    /// Sends `signal` to the copy's root (SIGKILL ends its whole namespace).
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        match &self.pidfd {
            Some(pidfd) => Ok(pidfd_send_signal(pidfd, signal)?),
            None => Err(std::io::Error::other("no pidfd for this copy")),
        }
    }
}

/// A lazy copy's page daemon, until it is done.
#[derive(Debug)]
struct Daemon {
    copy: usize,
    child: Child,
    work: ServiceDir,
}

/// Copies started by [`restore_copies`](super::restore_copies) or [`VerifiedImages::restore_copies`](super::VerifiedImages::restore_copies)
/// (one round).
#[derive(Debug)]
pub struct Copies {
    /// The copies, in order of their numbers.
    pub copies: Vec<Copy>,
    /// From the start of the first restore to the last copy running.
    pub elapsed: Duration,
    /// Time this round spent verifying the images, once for all its
    /// copies: the full verification (hashing every file) for
    /// [`restore_copies`](super::restore_copies) and for the first round of a [`VerifiedImages`](super::VerifiedImages)
    /// (its [`VerifiedImages::open`](super::VerifiedImages::open), plus the re-check); only the
    /// re-check, without hashing, for its later rounds.
    pub verify: Duration,
    /// Bytes of image this round hashed, as counted by the hashing itself
    /// on the calling thread: every signed byte for [`restore_copies`](super::restore_copies) and
    /// a [`VerifiedImages`](super::VerifiedImages)' first round, 0 for its later rounds (what a
    /// harness can check to know it does not pay for hashing again).
    pub hashed: u64,
    daemons: Vec<Daemon>,
    /// The verified images, kept while a page daemon may read them: shared
    /// with the [`VerifiedImages`](super::VerifiedImages) they came from and with its other
    /// rounds, and removed when the last of them goes, so dropping the
    /// `VerifiedImages` while a round's lazy copies still load their
    /// memory is safe.
    verified: Arc<Verified>,
}

/// How a lazy copy's memory loading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pages {
    /// Every page was loaded (the daemon exited successfully), after this long.
    Loaded(Duration),
    /// The daemon ended otherwise; the copy was killed. Why, and its log.
    DaemonDied {
        /// What ended the daemon.
        reason: String,
        /// The daemon's log (kept).
        log: PathBuf,
    },
}

impl Copies {
    /// Waits for every lazy copy's page daemon to finish (at once when the
    /// copies are not lazy). A copy whose daemon ends before loading all of
    /// its memory is killed, never left to fault on pages that will not
    /// come; the reason is logged and returned. Keep the images until this
    /// returns.
    pub fn supervise(mut self) -> Vec<(u32, Pages)> {
        let started = Instant::now();
        let mut out = Vec::new();
        let daemons = std::mem::take(&mut self.daemons);
        let _images = &self.verified; // dropped (removed) after the daemons
        let waits: Vec<_> = daemons
            .into_iter()
            .map(|mut d| {
                std::thread::spawn(move || {
                    let status = d.child.wait();
                    (d, status)
                })
            })
            .collect();
        for wait in waits {
            let Ok((d, status)) = wait.join() else {
                continue;
            };
            let copy = &self.copies[d.copy];
            match status {
                Ok(s) if s.success() => {
                    log::info!(
                        "copy {} (pid {}): all pages loaded after {:?}",
                        copy.number,
                        copy.pid,
                        started.elapsed()
                    );
                    let _ = d.work.remove_all();
                    out.push((copy.number, Pages::Loaded(started.elapsed())));
                }
                other => {
                    let reason = match other {
                        Ok(s) => format!("its lazy-pages daemon ended with {s}"),
                        Err(e) => format!("its lazy-pages daemon could not be waited for: {e}"),
                    };
                    let killed = copy.signal(Signal::KILL);
                    let log = d.work.shown().join("lazy-pages.log");
                    log::error!(
                        "copy {} (pid {}): {reason} before all of its memory was loaded; the \
                         copy was killed ({}) so that it never runs on missing pages; see {}",
                        copy.number,
                        copy.pid,
                        match killed {
                            Ok(()) => "SIGKILL sent".to_owned(),
                            Err(e) => format!("already gone: {e}"),
                        },
                        log.display()
                    );
                    out.push((copy.number, Pages::DaemonDied { reason, log }));
                }
            }
        }
        out
    }
}

/// One round of copies from a verified set (checked, and `copies` too, by
/// the caller): the
/// [`Copies`] returned hold `verified` until the last page daemon is done.
/// `verify` is the round's verification time, `rechecked` whether it was
/// the re-check of a set verified earlier (for the log).
pub(crate) fn start_round(
    settings: &RestoreSettings,
    verified: Arc<Verified>,
    verify: Duration,
    rechecked: bool,
    copies: u32,
    lazy: bool,
) -> Result<Copies, RestoreError> {
    let meta = &verified.meta;
    check_criu(meta, &settings.criu)?;
    let images = crate::procfs::fd_of(
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&verified.subdir.dir),
    );
    let base = ServiceDir::open_or_create(Path::new(LOG_DIR)).map_err(|e| RestoreError::Criu {
        message: format!("no place for the restore logs: {e}"),
        log: PathBuf::from(LOG_DIR),
    })?;
    base.prune_leftovers(KEEP_LEFTOVERS, KEEP_LEFTOVER_BYTES);
    let started = Instant::now();
    let (pending, daemons, failed) = start_all(&settings.criu, &images, meta, copies, lazy, &base);
    let watchdog = Watchdog::start(
        settings.deadline.saturating_sub(started.elapsed()),
        pending.iter().map(|p| p.restore.id()).collect(),
    );
    let (running, works, failed) = wait_all(pending, failed, &watchdog, settings.deadline);
    drop(watchdog);
    let elapsed = started.elapsed();
    if let Some(e) = failed {
        for copy in &running {
            let _ = copy.signal(Signal::KILL);
        }
        for (_, mut child) in daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        return Err(e);
    }
    let kept = pair_daemons(works, daemons);
    log::info!(
        "{copies} cop{} running after {elapsed:?} (images {} in {verify:?}){}",
        if copies == 1 { "y" } else { "ies" },
        if rechecked {
            "verified earlier, re-checked"
        } else {
            "verified"
        },
        if lazy { " (memory loading lazily)" } else { "" }
    );
    Ok(Copies {
        copies: running,
        elapsed,
        verify,
        hashed: 0, // the caller counts
        daemons: kept,
        verified,
    })
}

/// Waits for every restore started; returns the copies running, each
/// copy's work directory (`None`: kept, with its log, for a failed one)
/// and the first failure.
fn wait_all(
    pending: Vec<Pending>,
    mut failed: Option<RestoreError>,
    watchdog: &Watchdog,
    deadline: Duration,
) -> (Vec<Copy>, Vec<Option<ServiceDir>>, Option<RestoreError>) {
    let (mut running, mut works) = (Vec::new(), Vec::new());
    for (number, p) in pending.into_iter().enumerate() {
        let Pending {
            work,
            mut restore,
            restore_id,
        } = p;
        let status = restore.wait();
        let pid = work
            .read("restore.pid")
            .and_then(|p| String::from_utf8_lossy(&p).trim().parse::<i32>().ok());
        match (status, pid) {
            (Ok(s), Some(pid)) if s.success() => {
                let pidfd =
                    Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
                running.push(Copy {
                    number: number as u32,
                    pid,
                    restore_id,
                    pidfd,
                });
                works.push(Some(work));
            }
            (status, _) => {
                let log = work.shown().join("restore.log");
                let logged = work
                    .read("restore.log")
                    .and_then(|l| first_error(&String::from_utf8_lossy(&l)));
                let message = match (watchdog.fired(), logged) {
                    (true, logged) => format!(
                        "criu restore did not finish within {deadline:?}; it was killed, with \
                         whatever it had restored{}",
                        logged.map_or(String::new(), |l| format!(" (it had logged: {l})"))
                    ),
                    (false, Some(l)) => l,
                    (false, None) => format!("criu exited with {status:?}"),
                };
                if failed.is_none() {
                    failed = Some(RestoreError::Criu {
                        message: format!("copy {number}: {message}"),
                        log,
                    });
                }
                works.push(None); // kept, with its log
            }
        }
    }
    (running, works, failed)
}

/// Pairs each running copy's work directory with its page daemon (lazy),
/// which [`Copies::supervise`] watches; the others' work directories go.
fn pair_daemons(works: Vec<Option<ServiceDir>>, mut daemons: Vec<(usize, Child)>) -> Vec<Daemon> {
    let mut kept = Vec::new();
    for (i, work) in works.into_iter().enumerate() {
        let Some(work) = work else { continue };
        match daemons.iter().position(|(n, _)| *n == i) {
            Some(at) => {
                let (copy, child) = daemons.swap_remove(at);
                kept.push(Daemon { copy, child, work });
            }
            None => {
                let _ = work.remove_all();
            }
        }
    }
    kept
}
