//! Many copies of one image at once (`selfdump restore --copies N`).
//!
//! The images are verified once per call ([`verify_path`]: signature,
//! files, credentials, as for any restore), and every copy's CRIU reads
//! that one verified set, root's only, which stays until the last copy no
//! longer needs it (for lazy copies, until every page is in). A harness
//! that restores the same images round after round verifies them once
//! with [`VerifiedImages`] and re-checks them cheaply before each round.
//!
//! [`verify_path`]: super::restore::verify_path
//!
//! Images of a whole pid namespace (a program started with `selfdump run`,
//! [`ImageMeta::pid_namespace`]) restore into a fresh pid namespace each
//! time: CRIU makes one per restore when the root task is a namespace's
//! init, so no pid of the images needs to be free and N restores of the
//! same images can run side by side. Each copy is one `criu restore`, all
//! started at once, each with a root-only work directory of its own (its
//! log and pid file) under [`LOG_DIR`]. Each has the restore deadline
//! ([`RestoreSettings::deadline`]): a CRIU still running then is killed
//! with what it had restored (CRIU 4.1.1 hangs when a copy exits before
//! CRIU has detached from it), and the call fails saying so.
//!
//! **How a copy learns its number.** The client keeps a *copy slot* across
//! each checkpoint (the read end of a pipe with no writer, whose fd
//! number goes in the request) and the images name it
//! ([`ImageMeta::copy_slot`], `pipe:[INODE]`). For each copy the restorer
//! makes a fresh pipe, writes the copy's number and a random restore id into
//! it, closes the write end, and hands the read end to CRIU as
//! `--inherit-fd fd[0]:pipe:[INODE]`: CRIU puts it in the copy in place of
//! the slot. So a copy reads its own record from its own fd; no pid or name
//! is involved that anyone could swap, and each pipe reaches exactly one
//! copy of the caller's own images.
//!
//! **Lazy copies** (`--lazy`): each copy gets its own `criu lazy-pages`
//! daemon (one per copy: CRIU's daemon serves the one restore that
//! connects to it, in the same work directory), started and ready
//! (`--status-fd`) before its `criu restore --lazy-pages`. A copy runs as
//! soon as its tree is rebuilt; its memory arrives on first touch
//! (userfaultfd) and in the background, and the daemon exits once every
//! page is in. [`Copies::supervise`] waits for that: a daemon that ends any
//! other way (killed, failed) would leave its copy reading pages that never
//! came, so the copy is killed at once (SIGKILL to its init ends its whole
//! namespace) and the reason logged with the daemon's log. The verified
//! images stay until then (held by [`Copies`]).

use super::Criu;
use super::engine::first_error;
use super::images::ImageMeta;
use super::private_dir::{KEEP_LEFTOVER_BYTES, KEEP_LEFTOVERS, LOG_DIR, PrivateDir};
use super::restore::{RestoreError, RestoreSettings, Verified};
pub use super::verified_images::VerifiedImages;
use crate::copy_record;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most copies one call starts.
pub const MAX_COPIES: u32 = 1024;

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
    work: PrivateDir,
}

/// Copies started by [`restore_copies`] or [`VerifiedImages::restore_copies`]
/// (one round).
#[derive(Debug)]
pub struct Copies {
    /// The copies, in order of their numbers.
    pub copies: Vec<Copy>,
    /// From the start of the first restore to the last copy running.
    pub elapsed: Duration,
    /// Time this round spent verifying the images, once for all its
    /// copies: the full verification (hashing every file) for
    /// [`restore_copies`] and for the first round of a [`VerifiedImages`]
    /// (its [`VerifiedImages::open`], plus the re-check); only the
    /// re-check, without hashing, for its later rounds.
    pub verify: Duration,
    /// Bytes of image this round hashed, as counted by the hashing itself
    /// on the calling thread: every signed byte for [`restore_copies`] and
    /// a [`VerifiedImages`]' first round, 0 for its later rounds (what a
    /// harness can check to know it does not pay for hashing again).
    pub hashed: u64,
    daemons: Vec<Daemon>,
    /// The verified images, kept while a page daemon may read them: shared
    /// with the [`VerifiedImages`] they came from and with its other
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

/// One copy on its way: its work directory and its `criu restore`.
struct Pending {
    work: PrivateDir,
    restore: Child,
    restore_id: Option<u128>,
}

/// Restores `copies` copies of the images in `dir` at once, each in a
/// fresh pid namespace, and returns each root pid. `lazy` restores with
/// CRIU's lazy pages ([`Copies::supervise`] then waits for the memory).
/// All or nothing: if one copy fails, those started are killed.
///
/// The images are verified (hashed) on every call: this is
/// [`VerifiedImages::open`] then one [`VerifiedImages::restore_copies`].
/// A harness restoring the same images round after round keeps a
/// [`VerifiedImages`] instead and hashes them once.
pub fn restore_copies(
    settings: &RestoreSettings,
    dir: &Path,
    copies: u32,
    lazy: bool,
) -> Result<Copies, RestoreError> {
    // refused before anything is hashed
    check_count(copies)?;
    VerifiedImages::open(settings, dir)?.restore_copies(settings, copies, lazy)
}

/// `copies` is 1 to [`MAX_COPIES`].
pub(super) fn check_count(copies: u32) -> Result<(), RestoreError> {
    if copies == 0 || copies > MAX_COPIES {
        return Err(RestoreError::Refused(format!(
            "--copies must be 1 to {MAX_COPIES}"
        )));
    }
    Ok(())
}

/// One round of copies from a verified set (checked, and `copies` too, by
/// the caller): the
/// [`Copies`] returned hold `verified` until the last page daemon is done.
/// `verify` is the round's verification time, `rechecked` whether it was
/// the re-check of a set verified earlier (for the log).
pub(super) fn start_round(
    settings: &RestoreSettings,
    verified: Arc<Verified>,
    verify: Duration,
    rechecked: bool,
    copies: u32,
    lazy: bool,
) -> Result<Copies, RestoreError> {
    let meta = &verified.meta;
    let images = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&verified.subdir.dir)
    ));
    let base = PrivateDir::open_or_create(Path::new(LOG_DIR)).map_err(|e| RestoreError::Criu {
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

/// Copies are made of root's images of a whole pid namespace only.
pub(super) fn copyable(meta: &ImageMeta, dir: &Path) -> Result<(), RestoreError> {
    if !meta.pid_namespace {
        return Err(RestoreError::Refused(format!(
            "{}: these images are of a process, not of a whole pid namespace, so each \
             copy would need the same pids; start the program with `selfdump run` to make \
             images that restore many times at once",
            dir.display()
        )));
    }
    if meta.uid != 0 {
        // copies run CRIU as root, which may only restore root's images
        // (a non-root checkpoint restores as its owner: `restore::as_owner`)
        return Err(RestoreError::Refused(format!(
            "{}: these images are uid {}'s; copies are made of root's checkpoints only",
            dir.display(),
            meta.uid
        )));
    }
    Ok(())
}

/// Every page daemon first, then each restore once its daemon listens (the
/// daemons start in parallel). Returns the restores started, the daemons
/// (by copy number) and the first failure.
fn start_all(
    criu: &Criu,
    dir: &Path,
    meta: &ImageMeta,
    copies: u32,
    lazy: bool,
    base: &PrivateDir,
) -> (Vec<Pending>, Vec<(usize, Child)>, Option<RestoreError>) {
    let (mut pending, mut daemons, mut failed) = (Vec::new(), Vec::new(), None);
    let mut prepared = Vec::new();
    for number in 0..copies {
        match prepare_copy(criu, dir, number, lazy, base) {
            Ok(p) => prepared.push(p),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for p in prepared {
        let number = p.number;
        if failed.is_some() {
            if let Some((mut child, _)) = p.daemon {
                let _ = child.kill();
                let _ = child.wait();
            }
            continue;
        }
        match launch_copy(criu, dir, meta, p) {
            Ok((p, daemon)) => {
                if let Some(child) = daemon {
                    daemons.push((number as usize, child));
                }
                pending.push(p);
            }
            Err(e) => failed = Some(e),
        }
    }
    (pending, daemons, failed)
}

/// Waits for every restore started; returns the copies running, each
/// copy's work directory (`None`: kept, with its log, for a failed one)
/// and the first failure.
fn wait_all(
    pending: Vec<Pending>,
    mut failed: Option<RestoreError>,
    watchdog: &Watchdog,
    deadline: Duration,
) -> (Vec<Copy>, Vec<Option<PrivateDir>>, Option<RestoreError>) {
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
fn pair_daemons(works: Vec<Option<PrivateDir>>, mut daemons: Vec<(usize, Child)>) -> Vec<Daemon> {
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

/// A copy's work directory and its page daemon (lazy), started.
struct Prepared {
    number: u32,
    work: PrivateDir,
    /// The daemon and the pipe on which it says it listens.
    daemon: Option<(Child, std::fs::File)>,
}

fn copy_error(
    number: u32,
    work: &PrivateDir,
    what: &str,
    e: &dyn std::fmt::Display,
    log: &str,
) -> RestoreError {
    RestoreError::Criu {
        message: format!("copy {number}: {what}: {e}"),
        log: work.shown().join(log),
    }
}

/// Makes copy `number`'s work directory and, for a lazy copy, starts its
/// page daemon (not waited for).
fn prepare_copy(
    criu: &Criu,
    dir: &Path,
    number: u32,
    lazy: bool,
    base: &PrivateDir,
) -> Result<Prepared, RestoreError> {
    let work = PrivateDir::create_in(base.shown(), "copy-").map_err(|e| RestoreError::Criu {
        message: format!("copy {number}: no work directory: {e}"),
        log: base.shown().to_path_buf(),
    })?;
    let daemon = if lazy {
        let (ready, status) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| copy_error(number, &work, "pipe", &e, ""))?;
        let mut cmd = Command::new(&criu.path);
        cmd.arg("lazy-pages")
            .arg("--images-dir")
            .arg(dir)
            .arg("--work-dir")
            .arg(work.proc_path())
            .args(["--log-file", "lazy-pages.log", "--status-fd", "1"])
            .arg(format!("-v{}", criu.log_level))
            .stdin(Stdio::null())
            .stdout(Stdio::from(status))
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            copy_error(
                number,
                &work,
                "cannot run criu lazy-pages",
                &e,
                "lazy-pages.log",
            )
        })?;
        drop(cmd); // our copy of the status pipe's write end
        Some((child, std::fs::File::from(ready)))
    } else {
        None
    };
    Ok(Prepared {
        number,
        work,
        daemon,
    })
}

/// Starts copy `number`'s `criu restore` (not waited for), once its page
/// daemon (lazy) listens; gives the daemon back.
/// Waits for a page daemon to say it listens (one byte on its status
/// pipe; EOF if it failed first); a daemon that failed is reaped.
fn listening(mut child: Child, mut ready: impl Read) -> Result<Child, ()> {
    let mut byte = [0u8; 1];
    if ready.read(&mut byte).unwrap_or(0) == 0 {
        let _ = child.kill();
        let _ = child.wait();
        return Err(());
    }
    Ok(child)
}

fn launch_copy(
    criu: &Criu,
    dir: &Path,
    meta: &ImageMeta,
    prepared: Prepared,
) -> Result<(Pending, Option<Child>), RestoreError> {
    let Prepared {
        number,
        work,
        daemon,
    } = prepared;
    let failed =
        |what: &str, e: &dyn std::fmt::Display, log: &str| copy_error(number, &work, what, e, log);
    let lazy = daemon.is_some();
    let daemon = match daemon {
        Some((child, ready)) => Some(listening(child, ready).map_err(|()| {
            failed(
                "criu lazy-pages did not start",
                &"no ready signal",
                "lazy-pages.log",
            )
        })?),
        None => None,
    };
    let mut cmd = Command::new(&criu.path);
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(dir)
        .arg("--work-dir")
        .arg(work.proc_path())
        .arg("--restore-detached")
        .args(["--pidfile", "restore.pid", "--log-file", "restore.log"])
        .arg(format!("-v{}", criu.log_level))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if lazy {
        cmd.arg("--lazy-pages");
    }
    cmd.args(crate::server::engine::CriuFlags::of(meta).restore_args());
    let restore_id = match &meta.copy_slot {
        Some(key) => {
            let id = copy_record::fresh_id();
            let (slot, fill) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| failed("pipe", &e, ""))?;
            std::io::Write::write_all(
                &mut std::fs::File::from(fill),
                copy_record::record(number, id).as_bytes(),
            )
            .map_err(|e| failed("copy record", &e, ""))?;
            // the write end is closed: the copy reads its record, then EOF
            cmd.arg("--inherit-fd").arg(format!("fd[0]:{key}"));
            cmd.stdin(Stdio::from(slot));
            Some(id)
        }
        None => {
            cmd.stdin(Stdio::null());
            None
        }
    };
    let restore = cmd
        .spawn()
        .map_err(|e| failed("cannot run criu restore", &e, "restore.log"))?;
    Ok((
        Pending {
            work,
            restore,
            restore_id,
        },
        daemon,
    ))
}

/// Kills the copies' `criu restore`s still running at the deadline, with
/// what each had restored (its children: a copy's init, whose death ends
/// its namespace). CRIU can hang: 4.1.1 fails a restore whose task exits
/// before CRIU has detached from it ("Unable to detach") and then waits
/// for ever in its clean-up. Each CRIU is held by a pidfd, so a CRIU
/// already reaped is never mistaken for a recycled pid.
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn start(after: Duration, criu_pids: Vec<u32>) -> Self {
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let pidfds: Vec<(u32, OwnedFd)> = criu_pids
            .into_iter()
            .filter_map(|pid| {
                let fd = pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()).ok()?;
                Some((pid, fd))
            })
            .collect();
        let flag = fired.clone();
        std::thread::spawn(move || {
            if wait.recv_timeout(after) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return; // every CRIU finished (or the restore gave up first)
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            for (pid, criu) in pidfds {
                // a pidfd reads as ready once its process has exited; until
                // then `pid` (unreaped) is this CRIU's, and so are its children
                let mut poll = [rustix::event::PollFd::new(
                    &criu,
                    rustix::event::PollFlags::IN,
                )];
                let zero = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                if rustix::event::poll(&mut poll, Some(&zero)) != Ok(0) {
                    continue;
                }
                let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                let children: Vec<OwnedFd> = children
                    .split_whitespace()
                    .filter_map(|c| {
                        pidfd_open(Pid::from_raw(c.parse().ok()?)?, PidfdFlags::empty()).ok()
                    })
                    .collect();
                for child in &children {
                    let _ = pidfd_send_signal(child, Signal::KILL);
                }
                let _ = pidfd_send_signal(&criu, Signal::KILL);
                log::error!(
                    "criu restore (pid {pid}) still running after {after:?}: killed, with the \
                     {} task(s) it had started",
                    children.len()
                );
            }
        });
        Self {
            done: Some(done),
            fired,
        }
    }

    /// Whether the deadline passed and CRIUs were killed.
    fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}
