//! One job: who started it (an [`Owner`]), and its result once known.

use crate::proto::JobId;
use crate::server::caller::process::{Identity, Process};
use crate::server::conn::Outcome;
use crate::server::conn::peer::Peer;
use async_lock::OnceCell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who started a job: the process, by what identifies it for its whole
/// life without holding an fd, and its uid (for the per-uid caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) process: Identity,
    pub(super) uid: u32,
}

impl Owner {
    /// The owner `peer`, read while its pidfd shows it alive.
    pub(super) fn of(peer: &Peer) -> std::io::Result<Self> {
        Ok(Self {
            process: peer.process.identity()?,
            uid: peer.uid,
        })
    }
}

/// One job: who asked, and (once known) its result.
#[derive(Debug)]
pub(crate) struct Job {
    /// The job's id.
    pub id: JobId,
    pub(super) owner: Owner,
    /// The owner, pinned while the job runs; let go when it finishes.
    pub(super) owner_pinned: Mutex<Option<Process>>,
    pub(super) result: OnceCell<(Outcome, Instant)>,
}

impl Job {
    /// Records the result, wakes whoever waits for it, and closes the
    /// owner's pidfd (a finished job holds no fd).
    pub(crate) fn finish(&self, result: Outcome) {
        let _ = self.result.set_blocking((result, Instant::now()));
        self.owner_pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Waits for the result.
    pub(crate) async fn result(&self) -> Outcome {
        self.result.wait().await.0.clone()
    }

    fn owner_alive(&self) -> bool {
        match &*self
            .owner_pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(pinned) => pinned.is_alive(),
            None => self.owner.process.is_alive(),
        }
    }

    pub(super) fn finished_at(&self) -> Option<Instant> {
        self.result.get().map(|(_, at)| *at)
    }

    /// Whether its owner is alive and has not asked for the result, and the
    /// job either runs or ended less than `grace` ago.
    pub(super) fn awaited(&self, grace: Duration) -> bool {
        self.finished_at().is_none_or(|at| at.elapsed() < grace) && self.owner_alive()
    }

    pub(super) fn expired(&self, ttl: Duration) -> bool {
        match self.finished_at() {
            // nobody can ask any more once the original is gone
            Some(at) => at.elapsed() > ttl || !self.owner.process.is_alive(),
            None => false,
        }
    }
}
