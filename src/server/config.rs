//! What a running [`Server`](super::Server) is configured with: CRIU, the
//! policy, the limits and the timeouts. [`Builder`](super::Builder) fills
//! it in; the server only reads it.

use super::caller::policy::{CallerInfo, Policy};
use super::engine::{Criu, NonRootFallback};
use super::jobs;
use std::sync::Arc;
use std::time::Duration;

/// How often a draining server looks again whether the callers it waits
/// for have come for their results (they exit, and results age, without
/// a notification).
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(100);

/// [`Builder::max_keep`](super::Builder::max_keep) by default.
pub const MAX_KEEP: usize = 16;

/// The runtime configuration of a server (see the [`Builder`](super::Builder)
/// setter of each field for its meaning and default).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) criu: Criu,
    pub(crate) policy: Policy,
    pub(crate) admit: Option<Admit>,
    pub(crate) non_root_fallback: NonRootFallback,
    /// Limits. A CRIU run is a dump or a restore
    /// ([`Builder::max_dumps`](super::Builder::max_dumps) sets it).
    pub(crate) max_criu_runs: usize,
    pub(crate) max_criu_runs_per_uid: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_uid: usize,
    pub(crate) warm_workers: usize,
    pub(crate) max_results: usize,
    pub(crate) max_results_per_uid: usize,
    /// Generations a caller may keep per images directory.
    pub(crate) max_keep: usize,
    /// Timeouts.
    pub(crate) request_timeout: Duration,
    /// The time a dump or a restore may take
    /// ([`Builder::dump_timeout`](super::Builder::dump_timeout) sets it).
    pub(crate) criu_run_timeout: Duration,
    pub(crate) result_ttl: Duration,
    /// Other services' public keys, for owners' restores.
    pub(crate) trust_dir: std::path::PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            criu: Criu::default(),
            policy: Policy::root_only(),
            admit: None,
            non_root_fallback: NonRootFallback::default(),
            max_criu_runs: 8,
            max_criu_runs_per_uid: 4,
            max_connections: 256,
            max_connections_per_uid: 64,
            warm_workers: 1,
            max_results: jobs::MAX_RESULTS,
            max_results_per_uid: jobs::MAX_RESULTS_PER_UID,
            max_keep: MAX_KEEP,
            request_timeout: Duration::from_secs(5),
            criu_run_timeout: Duration::from_secs(300),
            result_ttl: Duration::from_secs(600),
            trust_dir: crate::server::images::trust::DEFAULT_TRUST_DIR.into(),
        }
    }
}

impl Config {
    /// [`Builder::max_connections`](super::Builder::max_connections) and
    /// [`Builder::max_connections_per_uid`](super::Builder::max_connections_per_uid),
    /// lowered to what the fd limit can hold next to the dumps (see there):
    /// the connections of all and root's own (up to its per-uid limit, at
    /// most a quarter of the room) must fit.
    pub(crate) fn connections_within_fd_limit(&mut self) -> usize {
        /// Fds a connection holds: its socket and the caller's pidfd.
        const PER_CONNECTION: u64 = 2;
        /// The listener, the reserve fd, logs, `/proc` reads...
        const BASE: u64 = 64;
        /// A dump's fds: CRIU's channel, the images and staging
        /// directories, the caller's pidfd and socket, files being
        /// published (a generous bound).
        const PER_DUMP: u64 = 16;
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let reserved =
            BASE + PER_DUMP * self.max_criu_runs as u64 + PER_CONNECTION * self.warm_workers as u64;
        let room = soft.saturating_sub(reserved) / PER_CONNECTION;
        let per_uid = (self.max_connections_per_uid as u64).min(room / 4).max(1) as usize;
        let all = (self.max_connections as u64)
            .min(room.saturating_sub(per_uid as u64))
            .max(1) as usize;
        if (all, per_uid) != (self.max_connections, self.max_connections_per_uid) {
            log::warn!(
                "the fd limit ({soft}) holds only so many connections next to the dumps: \
                 max_connections lowered from {} to {all}, max_connections_per_uid from {} to \
                 {per_uid} (raise LimitNOFILE= / `ulimit -n`)",
                self.max_connections,
                self.max_connections_per_uid
            );
        }
        self.max_connections_per_uid = per_uid;
        all
    }
}

/// The signature of an embedder's [`Builder::admit`](super::Builder::admit) callback.
pub(crate) type AdmitFn = dyn Fn(&CallerInfo<'_>) -> Result<(), String> + Send + Sync;

/// The embedder's callback given to [`Builder::admit`](super::Builder::admit).
#[derive(Clone)]
pub(crate) struct Admit(pub(crate) Arc<AdmitFn>);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit(<callback>)")
    }
}
