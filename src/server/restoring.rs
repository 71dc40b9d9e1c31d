//! One restore request: the owner of a checkpoint (or root) asks the
//! service to restore it, with the images directory as an fd. Same policy
//! and limits as a dump (a restore takes one of the dump slots); the
//! generation `latest` names (or the directory itself, see
//! [`generation`](super::generation)) is opened with the caller's
//! credentials, its images are verified ([`restore`](super::restore)),
//! and their owner must be the caller unless the caller is root.

use super::Shared;
use super::as_caller::CallerCreds;
use super::connection::{refusal, send};
use super::generation::resolve;
use super::peer::Peer;
use super::policy::Caller;
use super::restore::{RestoreError, RestoreSettings, restore};
use super::slots::UidSlot;
use crate::proto::{RefusalKind, Response, RestoreReport, RestoreRequest};
use async_io::Async;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

pub(super) async fn serve(
    shared: &Shared,
    peer: Peer,
    stream: Async<UnixStream>,
    request: RestoreRequest,
    dir: OwnedFd,
) {
    let answer = match admit(shared, &peer, request) {
        Err(refused) => refused,
        Ok(caller) => run(shared, caller, request, dir).await,
    };
    let (level, said) = super::outcome::logged(&answer);
    log::log!(level, "pid {} uid {}: restore {said}", peer.pid, peer.uid);
    send(&stream, &answer).await;
}

fn admit(shared: &Shared, peer: &Peer, request: RestoreRequest) -> Result<Caller, Response> {
    let not_permitted = |m: String| refusal(RefusalKind::NotPermitted, m);
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
        return refusal(RefusalKind::Busy, m);
    };
    let per_uid = shared.config.max_dumps_per_uid;
    let Some(_slot) = UidSlot::take(&shared.dumps_per_uid, caller.uid(), per_uid) else {
        let m = format!(
            "uid {} already has {per_uid} dumps or restores running",
            caller.uid()
        );
        return refusal(RefusalKind::Busy, m);
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
        Err(RestoreError::Refused(why)) => refusal(RefusalKind::NotPermitted, why),
        Err(e @ RestoreError::IdInUse { .. }) => refusal(RefusalKind::Busy, e.to_string()),
        Err(e) => Response::RestoreFailed(crate::proto::clip(e.to_string())),
    }
}
