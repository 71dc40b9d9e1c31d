//! One handler per request kind: `checkpoint/`, `result.rs`, `restore.rs`.
//! Each returns what its caller is told; none writes to the socket (that
//! is the [`Connection`]'s alone). Checkpoint and restore share their
//! admission and the reservation of a CRIU run (`admission.rs`).

pub(crate) mod admission;
pub(crate) mod checkpoint;
pub(crate) mod restore;
pub(crate) mod result;

use crate::proto::Response;
use crate::server::conn::{Connection, Peer, Received, Refused, Reply, reply::logged};
use crate::server::shared::Shared;
use std::sync::Arc;

/// Serves one connection: who asks and what (the connection reads both,
/// and answers what is wrong with them), then the handler of its kind.
pub(crate) async fn serve(shared: Arc<Shared>, mut conn: Connection) {
    let peer = match conn.identify() {
        Ok(peer) => peer,
        Err(refused) => return conn.refuse(refused).await,
    };
    let timeout = shared.config.request_timeout;
    let Some(received) = conn.read_request(&peer, timeout).await else {
        return;
    };
    match received {
        Received::Checkpoint { options, dir } => {
            if shared.stop.is_requested() {
                let refused = Refused::shutting_down().into();
                return answer(conn, &peer, "checkpoint", refused).await;
            }
            let (reply, tidy) = checkpoint::serve(&shared, &peer, &mut conn, options, dir).await;
            match reply {
                Reply::Answer(response) => answer(conn, &peer, "checkpoint", response).await,
                through_job => conn.deliver(through_job).await,
            }
            if let Some(tidy) = tidy {
                tidy.run(&shared);
            }
        }
        Received::Result(job) => {
            let result = result::serve(&shared, &peer, job).await;
            answer(conn, &peer, &format!("result of job {job}:"), result).await
        }
        Received::Restore { request, dir } => {
            let restored = match shared.stop.is_requested() {
                true => Refused::shutting_down().into(),
                false => restore::serve(&shared, &peer, request, dir).await,
            };
            answer(conn, &peer, "restore", restored).await
        }
    }
}

/// Sends `response` to `peer` and logs it, in words: every answer the
/// service gives a caller is in its log (`what`: the request).
async fn answer(conn: Connection, peer: &Peer, what: &str, response: Response) {
    let (level, said) = logged(&response);
    log::log!(level, "pid {} uid {}: {what} {said}", peer.pid(), peer.uid);
    conn.send(response).await;
}
