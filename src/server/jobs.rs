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

    /// Starts a job for `owner`, whose pidfd is duplicated to recognise it later.
    pub fn start(&self, owner: &Peer) -> std::io::Result<Arc<Job>> {
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
        Ok(job)
    }

    /// Forgets a job.
    pub fn remove(&self, id: JobId) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
