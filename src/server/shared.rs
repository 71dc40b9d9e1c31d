//! The state a running server shares between its connections: the
//! configuration, the limits' counters, the jobs, the workers, the stop
//! request and the drain.

use super::config::{Config, DRAIN_POLL};
use super::engine;
use super::jobs;
use super::manifest;
use super::shutdown::{RESULT_GRACE, Stop};
use super::slots;
use async_io::Async;
use async_lock::Semaphore;
use event_listener::Event;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// State shared by all connections.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) jobs: jobs::Jobs,
    /// Signs the images.
    pub(super) key: manifest::Key,
    /// CRIU's kernel-feature cache, as found or installed at start;
    /// removed (if ours and unused) when the server is gone.
    pub(super) kdat: engine::kdat::KdatCache,
    /// `criu swrk` workers started ahead of time (root's, for root callers).
    pub(super) workers: Arc<engine::WorkerPool>,
    /// How non-root callers are dumped here.
    pub(super) non_root: engine::NonRootEngine,
    pub(super) dumps: Arc<Semaphore>,
    /// Dumps running per caller uid.
    pub(super) dumps_per_uid: slots::UidCounts,
    pub(super) connections: Arc<Semaphore>,
    /// Connections open per peer uid.
    pub(super) connections_per_uid: slots::UidCounts,
    /// Set once the server is asked to stop.
    pub(super) stop: Arc<Stop>,
    /// Connection tasks (and refusals being sent) not finished yet.
    pub(super) tasks: AtomicUsize,
    /// Notified when `tasks` drops to zero.
    pub(super) changed: Event,
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
    pub(super) fn new(
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
            dumps: Arc::new(Semaphore::new(config.max_dumps)),
            dumps_per_uid: Arc::default(),
            connections_per_uid: Arc::default(),
            connections: Arc::new(Semaphore::new(max_connections)),
            config,
            stop: Arc::default(),
            tasks: AtomicUsize::new(0),
            changed: Event::new(),
        }
    }

    /// Counts a connection task until the returned guard drops.
    pub(super) fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    /// Whether a caller connecting while the server drains may be coming
    /// for a result: it has a job whose result it has not asked for yet.
    pub(super) fn is_expected(&self, stream: &Async<std::os::unix::net::UnixStream>) -> bool {
        super::peer::credentials(stream.get_ref())
            .is_ok_and(|cred| self.jobs.awaits_result(cred.pid(), RESULT_GRACE))
    }

    /// `None` once no task runs and no caller has a result to collect;
    /// else when to look again at the latest (callers exit, and results
    /// age, without a notification).
    pub(super) fn drain_wait(&self) -> Option<Option<Instant>> {
        let awaited = self.jobs.awaited(RESULT_GRACE);
        if self.tasks.load(Ordering::SeqCst) == 0 && !awaited {
            return None;
        }
        Some(awaited.then(|| Instant::now() + DRAIN_POLL))
    }
}

/// One running connection task of a [`Shared`].
pub(super) struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify(usize::MAX);
        }
    }
}
