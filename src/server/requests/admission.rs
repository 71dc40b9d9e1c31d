//! What checkpoint and restore requests share before their work starts:
//! the admission of the caller, and the reservation of the CRIU run it
//! asks for.
//!
//! - Admission ([`admit`]): the caller's ids and capabilities, read
//!   through `/proc` once its pidfd pinned it; the operator's policy; the
//!   caller still alive (so what was read was about it); the request's own
//!   checks; last, the embedder's callback ([`Builder::admit`]).
//! - Reservation ([`RunSlot`]): each checkpoint and each restore runs one
//!   CRIU, and holds one of the service's CRIU runs and one of its uid's
//!   while it does ([`Builder::max_dumps`] and
//!   [`Builder::max_dumps_per_uid`] count both kinds).
//!
//! [`Builder::admit`]: crate::server::Builder::admit
//! [`Builder::max_dumps`]: crate::server::Builder::max_dumps
//! [`Builder::max_dumps_per_uid`]: crate::server::Builder::max_dumps_per_uid

use crate::server::caller::policy::CallerInfo;
use crate::server::caller::status::TaskStatus;
use crate::server::config::{Admit, Config};
use crate::server::conn::{Peer, Refused};
use crate::server::shared::Shared;
use crate::server::slots::UidSlot;

/// The caller of a request, if it may ask: read, held to the policy,
/// still alive, then to the request's own `checks`, then to the embedder's
/// callback.
pub(crate) fn admit(
    shared: &Shared,
    peer: &Peer,
    checks: impl FnOnce(&TaskStatus) -> Result<(), Refused>,
) -> Result<TaskStatus, Refused> {
    let not_permitted = Refused::not_permitted;
    let caller = TaskStatus::read(&peer.process)
        .map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    shared.config.policy.admit(&caller).map_err(not_permitted)?;
    peer.process.alive_or("you exited").map_err(not_permitted)?;
    checks(&caller)?;
    embedder_admits(&shared.config, &caller, peer).map_err(not_permitted)?;
    Ok(caller)
}

/// Runs the embedder's [`Builder::admit`](crate::server::Builder::admit)
/// callback, if any. A caller that exits meanwhile is refused, so that
/// the callback's `Ok` never applies to a process that got its pid later.
fn embedder_admits(config: &Config, caller: &TaskStatus, peer: &Peer) -> Result<(), String> {
    let Some(Admit(f)) = &config.admit else {
        return Ok(());
    };
    let caller = &CallerInfo {
        uid: caller.uid(),
        gid: caller.gid(),
        pid: peer.pid(),
        pidfd: std::os::fd::AsFd::as_fd(&peer.process.pidfd),
    };
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(caller)))
        .unwrap_or_else(|_| {
            log::error!("the embedder's admit callback panicked");
            Err("the service's admission check failed".into())
        });
    verdict?;
    peer.process.alive_or("you exited")
}

/// One CRIU run held for a request (a dump or a restore): one of the
/// service's, one of its uid's. Given back when dropped.
#[derive(Debug)]
pub(crate) struct RunSlot {
    _run: async_lock::SemaphoreGuardArc,
    _uid: UidSlot,
}

impl RunSlot {
    /// A run for a caller of uid `uid`, or why it must wait (`Busy`).
    pub(crate) fn take(shared: &Shared, uid: u32) -> Result<Self, Refused> {
        let Some(run) = shared.criu_runs.try_acquire_arc() else {
            let m = format!(
                "{} dumps are already running (restores included); retry later",
                shared.config.max_criu_runs
            );
            return Err(Refused::busy(m));
        };
        let per_uid = shared.config.max_criu_runs_per_uid;
        let Some(uid_slot) = UidSlot::take(&shared.criu_runs_per_uid, uid, per_uid) else {
            let m = format!(
                "uid {uid} already has {per_uid} dumps or restores running (the per-uid \
                 limit); retry later"
            );
            return Err(Refused::busy(m));
        };
        Ok(Self {
            _run: run,
            _uid: uid_slot,
        })
    }
}
