//! One restore request: the owner of a checkpoint (or root) asks the
//! service to restore it, with the images directory as an fd. Same policy
//! and limits as a dump (a restore takes one of the dump slots); the
//! generation `latest` names (or the directory itself, see
//! [`generation`](crate::server::fs::generations)) is opened with the caller's
//! credentials, its images are verified ([`restore`](crate::server::restore)),
//! and their owner must be the caller unless the caller is root.

use crate::proto::{Response, RestoreReport, RestoreRequest};
use crate::server::Shared;
use crate::server::caller::policy::Caller;
use crate::server::conn::{Peer, Refused};
use crate::server::fs::as_caller::CallerCreds;
use crate::server::fs::generations::resolve;
use crate::server::restore::{RestoreError, RestoreSettings, restore};
use crate::server::slots::UidSlot;
use std::os::fd::OwnedFd;

/// Serves one restore request: what its caller is told.
pub(crate) async fn serve(
    shared: &Shared,
    peer: &Peer,
    request: RestoreRequest,
    dir: OwnedFd,
) -> Response {
    let answer = match admit(shared, peer, request) {
        Err(refused) => refused.into(),
        Ok(caller) => run(shared, caller, request, dir).await,
    };
    log::info!("pid {} uid {}: restore: {answer:?}", peer.pid, peer.uid);
    answer
}

fn admit(shared: &Shared, peer: &Peer, request: RestoreRequest) -> Result<Caller, Refused> {
    let not_permitted = Refused::not_permitted;
    let caller =
        Caller::read(peer).map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    shared.config.policy.admit(&caller).map_err(not_permitted)?;
    if !peer.is_alive() {
        return Err(not_permitted("you exited".into()));
    }
    if request.trust_unsigned && caller.uid() != 0 {
        return Err(not_permitted(
            "only root may restore unsigned images (--trust-unsigned): CRIU trusts images \
             completely, and unsigned ones could hold anything"
                .into(),
        ));
    }
    // Last, the embedder's own policy (`Builder::admit`), if it has one.
    shared
        .config
        .embedder_admits(&caller, peer)
        .map_err(not_permitted)?;
    Ok(caller)
}

async fn run(shared: &Shared, caller: Caller, request: RestoreRequest, dir: OwnedFd) -> Response {
    let Some(_permit) = shared.dumps.try_acquire_arc() else {
        let m = format!(
            "{} dumps or restores are already running; retry later",
            shared.config.max_dumps
        );
        return Refused::busy(m).into();
    };
    let per_uid = shared.config.max_dumps_per_uid;
    let Some(_slot) = UidSlot::take(&shared.dumps_per_uid, caller.uid(), per_uid) else {
        let m = format!(
            "uid {} already has {per_uid} dumps or restores running",
            caller.uid()
        );
        return Refused::busy(m).into();
    };
    let settings = RestoreSettings {
        trust_unsigned: request.trust_unsigned,
        deadline: shared.config.dump_timeout,
        ..RestoreSettings::new(shared.config.criu.clone(), Some(shared.key.clone()))
    };
    let requester = caller.uid();
    let creds = CallerCreds::of(&caller);
    let restored = blocking::unblock(move || {
        let dir = resolve(dir, &creds).map_err(RestoreError::Refused)?;
        restore(dir, &settings, creds, |meta| {
            let owner = meta.uid;
            if requester == 0 || requester == owner {
                Ok(())
            } else {
                Err(RestoreError::Refused(format!(
                    "these images are uid {owner}'s; only their owner or root may restore them"
                )))
            }
        })
    })
    .await;
    match restored {
        Ok(r) => Response::Restored(RestoreReport {
            pid: r.pid,
            owner: r.uid,
            generation: r.generation,
            verify_us: r.verify.as_micros() as u64,
            total_us: r.total.as_micros() as u64,
        }),
        Err(RestoreError::Refused(why)) => Refused::not_permitted(why).into(),
        Err(e @ RestoreError::IdInUse { .. }) => Refused::busy(e.to_string()).into(),
        Err(e) => Response::RestoreFailed(crate::proto::clip(e.to_string())),
    }
}
