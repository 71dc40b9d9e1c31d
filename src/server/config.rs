//! What a running [`Server`](super::Server) is configured with: CRIU, the
//! policy, the limits and the timeouts. [`Builder`](super::Builder) fills
//! it in; the server only reads it.

use super::jobs;
use super::peer;
use super::{CallerInfo, Criu, NonRootFallback, Policy};
use std::sync::Arc;
use std::time::Duration;

/// How long sending one answer to a client may take, and how long a
/// connection refused while the server drains has to send its request
/// (so that it finds the refusal rather than a closed socket).
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the caller's last frame ("you are frozen") may take to queue
/// while CRIU holds its tree frozen; past it the dump is vetoed.
pub(super) const FROZEN_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a draining server looks again whether the callers it waits
/// for have come for their results (they exit, and results age, without
/// a notification).
pub(super) const DRAIN_POLL: Duration = Duration::from_millis(100);

/// [`Builder::max_keep`](super::Builder::max_keep) by default.
pub const MAX_KEEP: usize = 16;

/// The runtime configuration of a server (see the [`Builder`](super::Builder)
/// setter of each field for its meaning and default).
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) criu: Criu,
    pub(super) policy: Policy,
    pub(super) admit: Option<Admit>,
    pub(super) non_root_fallback: NonRootFallback,
    /// Limits.
    pub(super) max_dumps: usize,
    pub(super) max_dumps_per_uid: usize,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_uid: usize,
    pub(super) warm_workers: usize,
    pub(super) max_results: usize,
    pub(super) max_results_per_uid: usize,
    /// Generations a caller may keep per images directory.
    pub(super) max_keep: usize,
    /// Timeouts.
    pub(super) request_timeout: Duration,
    pub(super) dump_timeout: Duration,
    pub(super) result_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            criu: Criu::default(),
            policy: Policy::root_only(),
            admit: None,
            non_root_fallback: NonRootFallback::default(),
            max_dumps: 8,
            max_dumps_per_uid: 4,
            max_connections: 256,
            max_connections_per_uid: 64,
            warm_workers: 1,
            max_results: jobs::MAX_RESULTS,
            max_results_per_uid: jobs::MAX_RESULTS_PER_UID,
            max_keep: MAX_KEEP,
            request_timeout: Duration::from_secs(5),
            dump_timeout: Duration::from_secs(300),
            result_ttl: Duration::from_secs(600),
        }
    }
}

impl Config {
    /// [`Builder::max_connections`](super::Builder::max_connections) and
    /// [`Builder::max_connections_per_uid`](super::Builder::max_connections_per_uid),
    /// lowered to what the fd limit can hold next to the dumps (see there):
    /// the connections of all and root's own (up to its per-uid limit, at
    /// most a quarter of the room) must fit.
    pub(super) fn connections_within_fd_limit(&mut self) -> usize {
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
            BASE + PER_DUMP * self.max_dumps as u64 + PER_CONNECTION * self.warm_workers as u64;
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

    /// Runs the embedder's [`Builder::admit`](super::Builder::admit)
    /// callback, if any.
    pub(super) fn embedder_admits(
        &self,
        caller: &super::policy::Caller,
        peer: &peer::Peer,
    ) -> Result<(), String> {
        let caller = &CallerInfo {
            uid: caller.uid(),
            gid: caller.gids[1],
            pid: peer.pid,
            pidfd: std::os::fd::AsFd::as_fd(&peer.pidfd),
        };
        let Some(Admit(f)) = &self.admit else {
            return Ok(());
        };
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(caller)))
            .unwrap_or_else(|_| {
                log::error!("the embedder's admit callback panicked");
                Err("the service's admission check failed".into())
            });
        verdict?;
        peer.alive_or("you exited")
    }
}

/// The signature of an embedder's [`Builder::admit`](super::Builder::admit) callback.
pub(super) type AdmitFn = dyn Fn(&CallerInfo<'_>) -> Result<(), String> + Send + Sync;

/// The embedder's callback given to [`Builder::admit`](super::Builder::admit).
#[derive(Clone)]
pub(super) struct Admit(pub(super) Arc<AdmitFn>);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit(<callback>)")
    }
}
