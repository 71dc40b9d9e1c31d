//! The state a running server shares between its connections: the
//! configuration, the limits' counters, the jobs, the workers, the stop
//! request and the drain.

use super::config::{Config, DRAIN_POLL};
use super::engine;
use super::jobs;
use super::manifest;
use super::shutdown::{RESULT_GRACE, Stop};
use super::slots;
use async_lock::Semaphore;
use event_listener::Event;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// State shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) jobs: jobs::Jobs,
    /// Signs the images.
    pub(crate) key: manifest::Key,
    /// CRIU's kernel-feature cache, as found or installed at start;
    /// removed (if ours and unused) when the server is gone.
    pub(crate) kdat: engine::kdat::KdatCache,
    /// `criu swrk` workers started ahead of time (root's, for root callers).
    pub(crate) workers: Arc<engine::WorkerPool>,
    /// How non-root callers are dumped here.
    pub(crate) non_root: engine::NonRootEngine,
    /// CRIU runs (dumps and restores) under way.
    pub(crate) criu_runs: Arc<Semaphore>,
    /// CRIU runs under way per caller uid.
    pub(crate) criu_runs_per_uid: slots::UidCounts,
    pub(crate) connections: Arc<Semaphore>,
    /// Connections open per peer uid.
    pub(crate) connections_per_uid: slots::UidCounts,
    /// Set once the server is asked to stop.
    pub(crate) stop: Arc<Stop>,
    /// Connection tasks (and refusals being sent) not finished yet.
    pub(crate) tasks: AtomicUsize,
    /// Notified when `tasks` drops to zero.
    pub(crate) changed: Event,
}

impl Drop for Shared {
    fn drop(&mut self) {
        engine::kdat::remove_cache(&self.kdat);
    }
}

impl Shared {
    /// The state of a server configured with `config`, signing with `key`,
    /// with CRIU's cache as `kdat` found it, dumping non-root callers as
    /// `non_root` says. The connection limits are
    /// lowered to what the fd limit holds.
    pub(crate) fn new(
        mut config: Config,
        key: manifest::Key,
        kdat: engine::kdat::KdatCache,
        non_root: engine::NonRootEngine,
    ) -> Self {
        let max_connections = config.connections_within_fd_limit();
        Self {
            jobs: jobs::Jobs::with_caps(
                config.result_ttl,
                config.max_results,
                config.max_results_per_uid,
            ),
            key,
            kdat,
            workers: engine::WorkerPool::new(config.criu.clone(), config.warm_workers),
            non_root,
            criu_runs: Arc::new(Semaphore::new(config.max_criu_runs)),
            criu_runs_per_uid: Arc::default(),
            connections_per_uid: Arc::default(),
            connections: Arc::new(Semaphore::new(max_connections)),
            config,
            stop: Arc::default(),
            tasks: AtomicUsize::new(0),
            changed: Event::new(),
        }
    }

    /// Counts a connection task until the returned guard drops.
    pub(crate) fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    /// Whether process `pid`, connecting while the server drains, may be
    /// coming for a result: it has a job whose result it has not asked
    /// for yet.
    pub(crate) fn is_expected(&self, pid: i32) -> bool {
        self.jobs.awaits_result(pid, RESULT_GRACE)
    }

    /// Where the drain stands.
    pub(crate) fn drain(&self) -> Drain {
        let awaited = self.jobs.awaited(RESULT_GRACE);
        match (self.tasks.load(Ordering::SeqCst), awaited) {
            (0, false) => Drain::Over,
            (_, false) => Drain::TasksRun,
            (_, true) => Drain::ResultsAwaited {
                look_again: Instant::now() + DRAIN_POLL,
            },
        }
    }
}

/// Where the drain of a stopping server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// No task runs and no caller has a result to collect.
    Over,
    /// Tasks run: the last to end notifies [`Shared::changed`].
    TasksRun,
    /// Callers still have results to collect; they exit, and results age,
    /// without a notification, so look again at `look_again` at the latest.
    ResultsAwaited { look_again: Instant },
}

/// One running connection task of a [`Shared`].
pub(crate) struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify(usize::MAX);
        }
    }
}
