//! One root restore through a `criu swrk` child: CRIU's `RESTORE`
//! request, its action notifications answered here, within a deadline.
//!
//! Why a worker rather than `criu restore`: it is started while the images
//! are verified (`restore/mod.rs`), so CRIU's exec and start-up (4–5 ms
//! here) overlap the verification instead of following it; and CRIU's
//! actions (`pre-restore`, `post-restore`, ...) arrive as messages on its
//! socket instead of as a shell started at each of its seven actions
//! (1.3–1.5 ms apiece), so holding the restored tree until its pages are
//! verified (`restore/gate.rs`) costs next to nothing. CRIU restores over
//! RPC detached, as `criu restore --restore-detached` does: the tree is its
//! child, reparented when it exits, which [`RestoreWorker::restore`] waits
//! for.

use super::CriuFlags;
use super::criu::Criu;
use super::error::EngineError;
use super::rpc::{CriuOpts, CriuReq, req_type};
use super::worker::{Worker, kill_group};
use async_io::Timer;
use futures_lite::FutureExt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// CRIU's action once every task of the tree is rebuilt, before any is
/// given its credentials or resumed; a refusal there makes CRIU kill the
/// tree ("Aborting restore due to post-restore script").
pub(crate) const POST_RESTORE: &str = "post-restore";

/// One restore to run.
#[derive(Debug)]
pub(crate) struct RestoreSpec<'a> {
    /// The verified images (CRIU opens `/proc/<this process>/fd/N`).
    pub(crate) images_dir: BorrowedFd<'a>,
    /// Where CRIU keeps its log (a directory of root's).
    pub(crate) work_dir: BorrowedFd<'a>,
    /// The log's name in `work_dir`.
    pub(crate) log_file: &'a str,
    /// The options the images were dumped with.
    pub(crate) flags: CriuFlags,
    /// Whether CRIU is to tell its actions (each a round trip, about a
    /// tenth of a millisecond): only when one is to be answered otherwise
    /// than "go on".
    pub(crate) notify: bool,
}

/// A root `criu swrk` started ahead of the one restore it serves.
///
/// Dropped unused, its socket closes and CRIU, which waited for a request,
/// exits; it is reaped then and there, so that a process that exits next
/// (`selfdump restore` refusing images) leaves no CRIU for its parent to
/// reap.
#[derive(Debug)]
pub(crate) struct RestoreWorker {
    /// `None` once it served its restore.
    worker: Option<Worker>,
}

impl Drop for RestoreWorker {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            async_io::block_on(end(worker, false));
        }
    }
}

/// A [`RestoreWorker`] being started on a thread of its own, so that its
/// spawn (a fork and an exec: milliseconds in a large process) does not
/// delay what the restore does meanwhile.
#[derive(Debug)]
pub(crate) struct Starting {
    criu: PathBuf,
    /// The thread, or what came of starting it where no thread could be;
    /// `None` once taken.
    thread: Option<Result<JoinHandle<io::Result<RestoreWorker>>, io::Result<RestoreWorker>>>,
}

impl Drop for Starting {
    /// Unused: the worker is waited for, then dropped (and so reaped).
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl Starting {
    /// Whether this is the CRIU at `path`.
    pub(crate) fn runs(&self, path: &Path) -> bool {
        self.criu == path
    }

    /// The worker, once started.
    pub(crate) fn ready(mut self) -> io::Result<RestoreWorker> {
        self.take()
    }

    fn take(&mut self) -> io::Result<RestoreWorker> {
        match self.thread.take() {
            Some(Ok(thread)) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the thread starting CRIU panicked"))),
            Some(Err(started)) => started,
            None => Err(io::Error::other("the CRIU started ahead was taken")),
        }
    }
}

impl RestoreWorker {
    /// Starts `criu swrk` as root.
    pub(crate) fn start(criu: &Criu) -> io::Result<Self> {
        Ok(Self {
            worker: Some(Worker::start(criu)?),
        })
    }

    /// [`Self::start`] on a thread of its own.
    pub(crate) fn start_in_background(criu: &Criu) -> Starting {
        let copy = criu.clone();
        let thread = std::thread::Builder::new()
            .name("criu-start".into())
            .spawn(move || Self::start(&copy))
            .map_err(|_| Self::start(criu));
        Starting {
            criu: criu.path.clone(),
            thread: Some(thread),
        }
    }

    /// Restores `spec`'s images, asking `go_on(action)` at each of CRIU's
    /// actions whether to go on (see [`POST_RESTORE`]); the root pid of the
    /// tree once CRIU has exited. Past `deadline`, CRIU is killed with its
    /// process group (what it restored is the caller's to end).
    pub(crate) fn restore(
        mut self,
        spec: &RestoreSpec<'_>,
        deadline: Instant,
        go_on: impl FnMut(&str) -> bool,
    ) -> Result<i32, EngineError> {
        let Some(worker) = self.worker.take() else {
            return Err(EngineError::Died);
        };
        let limit = deadline.saturating_duration_since(Instant::now());
        async_io::block_on(async {
            let ran = converse(&worker, spec, go_on)
                .or(async {
                    Timer::at(deadline).await;
                    Err(EngineError::TimedOut(limit))
                })
                .await;
            // CRIU exits once it has answered: its tree is reparented then
            let timed_out = matches!(ran, Err(EngineError::TimedOut(_)));
            if !end(worker, timed_out).await && ran.is_ok() {
                log::warn!("criu swrk did not exit within {EXIT_WAIT:?} of its restore");
            }
            ran
        })
    }
}

/// Closes CRIU's socket (killing its process group first, with `kill`)
/// and reaps it: whether it exited within [`EXIT_WAIT`].
async fn end(worker: Worker, kill: bool) -> bool {
    if kill {
        kill_group(worker.pid());
    }
    let exited = worker.finish(false).or(async {
        Timer::after(EXIT_WAIT).await;
        None
    });
    exited.await.is_some()
}

/// The restore's round trips: the request, CRIU's actions, its answer.
async fn converse(
    worker: &Worker,
    spec: &RestoreSpec<'_>,
    mut go_on: impl FnMut(&str) -> bool,
) -> Result<i32, EngineError> {
    let mut opts = CriuOpts {
        images_dir_fd: spec.images_dir.as_raw_fd(),
        work_dir_fd: Some(spec.work_dir.as_raw_fd()),
        log_level: Some(worker.log_level),
        log_file: Some(spec.log_file.to_owned()),
        notify_scripts: Some(spec.notify),
        ..Default::default()
    };
    spec.flags.apply(&mut opts);
    worker
        .send(&CriuReq {
            r#type: req_type::RESTORE,
            opts: Some(opts),
            ..Default::default()
        })
        .await?;
    loop {
        let resp = worker.recv().await?;
        match resp.r#type {
            req_type::NOTIFY => {
                let action = resp.notify.and_then(|n| n.script).unwrap_or_default();
                worker.ack(go_on(&action)).await?;
            }
            req_type::RESTORE if resp.success => {
                return resp.restore.map(|r| r.pid).ok_or_else(|| {
                    EngineError::Protocol("a restore's answer without a pid".into())
                });
            }
            req_type::RESTORE => return Err(EngineError::Failed(resp.cr_errmsg)),
            other => {
                return Err(EngineError::Protocol(format!(
                    "answer of type {other} to a restore"
                )));
            }
        }
    }
}

/// How long a CRIU that answered is waited for to exit.
const EXIT_WAIT: Duration = Duration::from_secs(5);
