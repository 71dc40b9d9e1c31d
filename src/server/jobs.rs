//! Running jobs and their results, kept until the original process asks.

use super::peer::Peer;
use crate::proto::{JobId, Response};
use async_lock::OnceCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One job: who asked, and (once known) its result.
#[derive(Debug)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    owner_pid: i32,
    owner_pidfd: OwnedFd,
    result: OnceCell<(Response, Instant)>,
}

impl Job {
    /// Records the result and wakes whoever waits for it.
    pub fn finish(&self, result: Response) {
        let _ = self.result.set_blocking((result, Instant::now()));
    }

    /// Waits for the result.
    pub async fn result(&self) -> Response {
        self.result.wait().await.0.clone()
    }

    /// Whether its owner is alive and has not asked for the result, and the
    /// job either runs or ended less than `grace` ago.
    fn awaited(&self, grace: Duration) -> bool {
        super::peer::is_alive(&self.owner_pidfd)
            && self.result.get().is_none_or(|(_, at)| at.elapsed() < grace)
    }

    fn expired(&self, ttl: Duration) -> bool {
        match self.result.get() {
            // nobody can ask any more once the original is gone
            Some((_, at)) => at.elapsed() > ttl || !super::peer::is_alive(&self.owner_pidfd),
            None => false,
        }
    }
}

/// The service's jobs.
#[derive(Debug)]
pub struct Jobs {
    service: u64,
    next: AtomicU64,
    ttl: Duration,
    table: Mutex<HashMap<JobId, Arc<Job>>>,
}

impl Jobs {
    /// An empty table whose results live at most `ttl` after the job ends.
    pub fn new(ttl: Duration) -> Self {
        let mut seed = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        Self {
            service: u64::from_ne_bytes(seed),
            next: AtomicU64::new(1),
            ttl,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a job for `owner`, whose pidfd is duplicated to recognise it
    /// later. If the returned handle drops before [`Job::finish`] (a task
    /// that panicked), the job ends as failed, so its owner is not left
    /// waiting for a result.
    pub fn start(&self, owner: &Peer) -> std::io::Result<Running> {
        let id = JobId {
            service: self.service,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        };
        let job = Arc::new(Job {
            id,
            owner_pid: owner.pid,
            owner_pidfd: owner.pidfd.try_clone()?,
            result: OnceCell::new(),
        });
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, j| !j.expired(self.ttl));
        table.insert(id, job.clone());
        Ok(Running(job))
    }

    /// Forgets a job.
    pub fn remove(&self, id: JobId) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Whether the live process `pid` has a job whose result it has not
    /// asked for yet (see [`Jobs::awaited`]): a draining server serves it.
    pub fn awaits_result(&self, pid: i32, grace: Duration) -> bool {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .values()
            .any(|j| j.owner_pid == pid && j.awaited(grace))
    }

    /// Whether some live process has a job running, or ended less than
    /// `grace` ago, whose result it has not asked for yet. Failures told
    /// on the caller's connection are not here: those jobs are removed.
    pub fn awaited(&self, grace: Duration) -> bool {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.values().any(|j| j.awaited(grace))
    }

    /// The job `id` if `asker` is the process that started it. A result is
    /// handed out once. `Err` carries the answer to give instead.
    pub fn claim(&self, id: JobId, asker: &Peer) -> Result<Arc<Job>, Response> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(job) = table.get(&id) else {
            return Err(Response::UnknownJob(id));
        };
        let same = job.owner_pid == asker.pid && super::peer::is_alive(&job.owner_pidfd);
        if !same {
            return Err(Response::Refused(crate::proto::Refusal {
                kind: crate::proto::RefusalKind::Invalid,
                message: format!("job {id} belongs to another process"),
            }));
        }
        Ok(table.remove(&id).expect("present"))
    }
}

/// A started job, held by the task running it.
#[derive(Debug)]
pub struct Running(Arc<Job>);

impl std::ops::Deref for Running {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.result.get().is_none() {
            self.0
                .finish(Response::DumpFailed(crate::proto::DumpFailure {
                    job: Some(self.0.id),
                    message: "the selfdump service failed internally during this dump; \
                          its images are not usable (the service log says more)"
                        .into(),
                    log_file: None,
                }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// This test process as a connected caller.
    fn me() -> (Peer, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Peer::of(&ours).unwrap(), theirs)
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn a_running_job_is_awaited_by_its_owner_only() {
        let jobs = Jobs::new(GRACE);
        let (peer, _keep) = me();
        let _job = jobs.start(&peer).unwrap();
        assert!(jobs.awaited(GRACE));
        assert!(jobs.awaits_result(peer.pid, GRACE));
        assert!(!jobs.awaits_result(peer.pid + 1, GRACE));
    }

    #[test]
    fn a_finished_job_is_awaited_until_claimed_or_its_grace_is_over() {
        let jobs = Jobs::new(GRACE);
        let (peer, _keep) = me();
        let job = jobs.start(&peer).unwrap();
        job.finish(Response::UnknownJob(job.id));
        assert!(jobs.awaited(GRACE));
        assert!(!jobs.awaited(Duration::ZERO), "grace over");
        jobs.claim(job.id, &peer).unwrap();
        assert!(!jobs.awaited(GRACE), "claimed");
    }

    #[test]
    fn a_job_whose_failure_went_to_the_connection_is_not_awaited() {
        let jobs = Jobs::new(GRACE);
        let (peer, _keep) = me();
        let job = jobs.start(&peer).unwrap();
        jobs.remove(job.id);
        assert!(!jobs.awaited(GRACE));
        assert!(!jobs.awaits_result(peer.pid, GRACE));
    }

    #[test]
    fn a_job_dropped_unfinished_ends_as_an_internal_failure() {
        let jobs = Jobs::new(GRACE);
        let (peer, _keep) = me();
        let id = jobs.start(&peer).unwrap().id; // the handle drops here
        let job = jobs.claim(id, &peer).unwrap();
        match async_io::block_on(job.result()) {
            Response::DumpFailed(f) => assert!(f.message.contains("failed internally"), "{f:?}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
