//! One restore request: the owner of a checkpoint (or root) asks the
//! service to restore it, with the images directory as an fd. Same
//! admission and limits as a dump (`admission.rs`: a restore is a CRIU
//! run like a dump); the
//! generation `latest` names (or the directory itself, see
//! [`generation`](crate::server::fs::generations)) is opened with the caller's
//! credentials, its images are verified ([`restore`](crate::server::restore)),
//! with this host's key and the public keys of the service's trust
//! directory, and their owner must be the caller unless the caller is
//! root.

use crate::proto::{Response, RestoreReport, RestoreRequest};
use crate::server::caller::status::TaskStatus;
use crate::server::conn::{Peer, Refused};
use crate::server::fs::generations::resolve;
use crate::server::images::trust::Trust;
use crate::server::requests::admission::{self, RunSlot};
use crate::server::restore::{RestoreError, RestoreSettings, restore};
use crate::server::shared::Shared;
use std::os::fd::OwnedFd;

/// Serves one restore request: what its caller is told.
pub(crate) async fn serve(
    shared: &Shared,
    peer: &Peer,
    request: RestoreRequest,
    dir: OwnedFd,
) -> Response {
    match admit(shared, peer, request) {
        Err(refused) => refused.into(),
        Ok(caller) => run(shared, caller, request, dir).await,
    }
}

fn admit(shared: &Shared, peer: &Peer, request: RestoreRequest) -> Result<TaskStatus, Refused> {
    admission::admit(shared, peer, |caller| {
        if request.trust_unsigned && caller.uid() != 0 {
            return Err(Refused::not_permitted(
                "only root may restore unsigned images (--trust-unsigned): CRIU trusts images \
                 completely, and unsigned ones could hold anything",
            ));
        }
        Ok(())
    })
}

async fn run(
    shared: &Shared,
    caller: TaskStatus,
    request: RestoreRequest,
    dir: OwnedFd,
) -> Response {
    let _run = match RunSlot::take(shared, caller.uid()) {
        Ok(run) => run,
        Err(busy) => return busy.into(),
    };
    let settings = RestoreSettings {
        trust_unsigned: request.trust_unsigned,
        deadline: shared.config.criu_run_timeout,
        ..RestoreSettings::new(shared.config.criu.clone(), Some(shared.key.clone()))
    };
    let requester = caller.uid();
    let creds = caller.credentials();
    let trust_dir = shared.config.trust_dir.clone();
    let restored = blocking::unblock(move || {
        let trust = Trust::load(settings.key.clone(), &trust_dir)
            .map_err(|e| RestoreError::Refused(format!("the service's trusted keys: {e}")))?;
        let settings = settings.trusting(trust);
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
