//! One result request: the original process, back after CRIU let it run,
//! asks how the dump of its job ended (its first connection was closed at
//! the freeze). Only the process that started the job gets the answer; to
//! anyone else it is a job that never existed (`jobs/`).

use crate::proto::{JobId, Response};
use crate::server::conn::Peer;
use crate::server::shared::Shared;

/// Serves one result request: the job's outcome, once it has one.
pub(crate) async fn serve(shared: &Shared, peer: &Peer, job: JobId) -> Response {
    match shared.jobs.claim(job, peer) {
        Ok(job) => job.result().await.into(),
        Err(unclaimed) => unclaimed.into(),
    }
}
