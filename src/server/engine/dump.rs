//! One dump: what it needs, what the service does while CRIU holds the
//! tree frozen, and the RPC round trips of a [`Worker`] that serves it
//! (its notifications, during which the hooks act).

use super::CriuFlags;
use super::criu::Criu;
use super::error::EngineError;
use super::rpc::{CriuOpts, CriuReq, CriuResp, req_type};
use super::worker::Worker;
use crate::proto::DumpOptions;
use crate::server::images::criu_log::DUMP_LOG;
use async_io::Timer;
use futures_lite::FutureExt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
/// One dump to run.
#[derive(Debug)]
pub struct DumpSpec<'a> {
    /// Root of the tree to dump.
    pub pid: i32,
    /// Directory CRIU writes into (resolved by CRIU through `/proc/<service>/fd/N`).
    pub images_dir: BorrowedFd<'a>,
    /// The caller's options.
    pub options: DumpOptions,
    /// The caller does not lead its session.
    pub shell_job: bool,
}

/// What the service does while CRIU holds the tree frozen.
pub trait DumpHooks {
    /// The tree is frozen and CRIU has not collected its sockets yet
    /// (CRIU's `query-ext-files` notification): the caller's connection
    /// must be closed here. A veto makes CRIU resume the tree and fail.
    fn frozen(&mut self) -> impl Future<Output = FrozenVerdict>;

    /// The images are written and flushed; the tree is still frozen and
    /// CRIU next resumes or ends it (`post-dump`). A veto makes CRIU resume
    /// it and fail the dump.
    fn images_written(&mut self) -> impl Future<Output = FrozenVerdict>;
}

/// What a successful dump cost the service itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dumped {
    /// Time CRIU waited for the service while the tree was frozen: from
    /// receiving each notification to sending its answer (hooks included).
    pub service_frozen: Duration,
}

/// What a hook decided.
#[derive(Debug)]
pub enum FrozenVerdict {
    /// Let CRIU go on dumping.
    Proceed,
    /// Abort the dump (CRIU resumes the tree), for this reason.
    Veto(String),
}

impl Worker {
    /// Dumps `spec.pid`'s tree, calling `hooks` while CRIU holds it frozen;
    /// kills CRIU if it takes longer than `timeout`.
    pub async fn dump(
        self,
        spec: &DumpSpec<'_>,
        timeout: Duration,
        hooks: &mut impl DumpHooks,
    ) -> Result<Dumped, EngineError> {
        let started = std::time::Instant::now();
        let run = self.run_dump(spec, hooks, started);
        let limit = async {
            Timer::after(timeout).await;
            Err(EngineError::TimedOut(timeout))
        };
        let result = run.or(limit).await;
        let criu_may_run = matches!(
            result,
            Err(EngineError::TimedOut(_)
                | EngineError::Io(_)
                | EngineError::Protocol(_)
                | EngineError::Died)
        );
        let status = self.finish(criu_may_run).await;
        let result = match (result, status.and_then(|s| s.signal())) {
            (Err(EngineError::Died), Some(signal)) => Err(EngineError::Killed(signal)),
            (result, _) => result,
        };
        log::debug!(
            "criu swrk for pid {} reaped at {:?}",
            spec.pid,
            started.elapsed()
        );
        result
    }

    async fn run_dump(
        &self,
        spec: &DumpSpec<'_>,
        hooks: &mut impl DumpHooks,
        started: std::time::Instant,
    ) -> Result<Dumped, EngineError> {
        self.send(&CriuReq {
            r#type: req_type::DUMP,
            opts: Some(self.dump_opts(spec)),
            ..Default::default()
        })
        .await?;
        let mut state = DumpState::default();
        loop {
            let resp = self.recv().await?;
            match resp.r#type {
                req_type::NOTIFY => {
                    let script = resp.notify.and_then(|n| n.script).unwrap_or_default();
                    log::debug!(
                        "criu notification {script:?} for pid {} at {:?}",
                        spec.pid,
                        started.elapsed()
                    );
                    self.answer(&script, hooks, &mut state).await?;
                }
                req_type::DUMP => {
                    log::debug!(
                        "criu result for pid {} at {:?}",
                        spec.pid,
                        started.elapsed()
                    );
                    return state.result(&resp);
                }
                other => {
                    return Err(EngineError::Protocol(format!(
                        "unexpected response type {other}"
                    )));
                }
            }
        }
    }

    /// CRIU's options for dumping `spec`.
    fn dump_opts(&self, spec: &DumpSpec<'_>) -> CriuOpts {
        let mut opts = CriuOpts {
            images_dir_fd: spec.images_dir.as_fd().as_raw_fd(),
            pid: Some(spec.pid),
            leave_running: Some(spec.options.leave_running),
            log_level: Some(self.log_level),
            log_file: Some(DUMP_LOG.into()),
            notify_scripts: Some(true),
            ..CriuOpts::default()
        };
        CriuFlags::for_dump(&spec.options, spec.shell_job).apply(&mut opts);
        if let Some(user) = self.as_user {
            // CRIU resolves `images_dir_fd` in its RPC peer's `/proc/<pid>/fd`,
            // which is the service's and closed to a CRIU running as a user:
            // it gets the directory it inherited, by its own fd path
            let inherited = user.images_dir.unwrap_or(-1);
            debug_assert_eq!(
                inherited, opts.images_dir_fd,
                "dumps where it was started for"
            );
            opts.images_dir_fd = -1;
            opts.images_dir = Some(crate::procfs::self_fd(inherited).display().to_string());
            opts.unprivileged = Some(true);
        }
        opts
    }

    /// Answers one of CRIU's notifications, calling the hook it is for.
    async fn answer(
        &self,
        script: &str,
        hooks: &mut impl DumpHooks,
        state: &mut DumpState,
    ) -> Result<(), EngineError> {
        let answering = std::time::Instant::now();
        let verdict = match script {
            "query-ext-files" if !state.frozen => {
                state.frozen = true;
                hooks.frozen().await
            }
            "post-dump" if state.frozen && state.veto.is_none() => hooks.images_written().await,
            _ => FrozenVerdict::Proceed,
        };
        // The clock stops when the answer is decided, not after the send
        // returns: the send wakes CRIU, which may run on this CPU before
        // the send returns here, and that time is CRIU's, not the service's.
        if state.frozen {
            state.dumped.service_frozen += answering.elapsed();
        }
        if let FrozenVerdict::Veto(why) = verdict {
            state.veto.get_or_insert(why);
            self.ack(false).await?;
        } else {
            self.ack(true).await?;
        }
        Ok(())
    }
}

/// Where a dump stands between CRIU's messages.
#[derive(Default)]
struct DumpState {
    /// CRIU announced the freeze (`query-ext-files`).
    frozen: bool,
    /// A hook's veto, the first one.
    veto: Option<String>,
    dumped: Dumped,
}

impl DumpState {
    /// The dump's result, from CRIU's final answer.
    fn result(self, resp: &CriuResp) -> Result<Dumped, EngineError> {
        if let Some(why) = self.veto {
            return Err(EngineError::Vetoed(why));
        }
        if !self.frozen && resp.success {
            return Err(EngineError::Protocol(
                "criu finished without the query-ext-files notification (criu < 3.19?)".into(),
            ));
        }
        if resp.success {
            Ok(self.dumped)
        } else {
            Err(EngineError::Failed(resp.cr_errmsg.clone()))
        }
    }
}

impl Criu {
    /// Dumps `spec.pid`'s tree with a freshly started [`Worker`], calling
    /// `hooks` while CRIU holds it frozen.
    pub async fn dump(
        &self,
        spec: &DumpSpec<'_>,
        timeout: Duration,
        hooks: &mut impl DumpHooks,
    ) -> Result<Dumped, EngineError> {
        let started = std::time::Instant::now();
        let worker = Worker::start(self)?;
        log::debug!(
            "criu swrk for pid {} started in {:?}",
            spec.pid,
            started.elapsed()
        );
        worker.dump(spec, timeout, hooks).await
    }
}
