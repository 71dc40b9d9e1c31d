//! One handler per request kind: `checkpoint/`, `result.rs`, `restore.rs`.
//! Each returns what its caller is told; none writes to the socket (that
//! is the [`Connection`]'s alone). Checkpoint and restore share their
//! admission and the reservation of a CRIU run (`admission.rs`).

pub(crate) mod admission;
pub(crate) mod checkpoint;
pub(crate) mod restore;
pub(crate) mod result;

use crate::server::conn::{Connection, Received, Refused};
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
                log::info!("pid {}: refused, shutting down", peer.pid());
                return conn.refuse(Refused::shutting_down()).await;
            }
            let (reply, tidy) = checkpoint::serve(&shared, &peer, &mut conn, options, dir).await;
            conn.deliver(reply).await;
            if let Some(tidy) = tidy {
                tidy.run(&shared);
            }
        }
        Received::Result(job) => conn.send(result::serve(&shared, &peer, job).await).await,
        Received::Restore { request, dir } => {
            if shared.stop.is_requested() {
                return conn.refuse(Refused::shutting_down()).await;
            }
            conn.send(restore::serve(&shared, &peer, request, dir).await)
                .await
        }
    }
}
