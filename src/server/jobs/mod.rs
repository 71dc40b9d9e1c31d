//! Running jobs and their results, kept until the original process asks.
//!
//! # What a result costs the service, and for how long
//!
//! Nothing held here grows with what clients do:
//!
//! - A *running* job holds its owner's pidfd (to tell, at the freeze and
//!   after, that the pid still names the caller). Running jobs are bounded
//!   by the dump limits ([`Builder::max_dumps`](crate::server::Builder::max_dumps)).
//! - A *finished* job holds no fd at all. When its result is recorded the
//!   pidfd is closed, and the owner is remembered by what identifies a
//!   process for its whole life without pinning anything: its pid, its
//!   start time (`/proc/<pid>/stat`, clock ticks since boot) and the inode
//!   of its pidfd (pidfs, Linux 6.9+, gives each process its own inode;
//!   on older kernels every pidfd shares one inode and the pid and start
//!   time decide alone). A later process with the same pid has a later
//!   start time and another inode, so it is never taken for the owner.
//! - Finished results are capped per uid ([`Builder::max_results_per_uid`](crate::server::Builder::max_results_per_uid),
//!   default [`MAX_RESULTS_PER_UID`]) and in all ([`Builder::max_results`](crate::server::Builder::max_results),
//!   default [`MAX_RESULTS`]). When a new job would pass a cap, the oldest
//!   finished results go first. Results also go once their owner exited
//!   (nobody can ask any more) or after the result TTL.
//! - A result that went before its owner asked leaves a small tombstone
//!   (id and owner, no fd; at most [`MAX_TOMBSTONES`](table::MAX_TOMBSTONES), oldest dropped
//!   first), so that the owner is told "result expired", never a false
//!   success and never the "unknown job" of a restarted service.
//! - A query from anyone but the owner is answered exactly as for a job
//!   that never existed (`UnknownJob`), so job ids cannot be probed.

mod job;
mod table;

pub(crate) use job::Job;

use crate::proto::JobId;
use crate::server::conn::peer::Peer;
use crate::server::conn::{Outcome, Unclaimed};
use async_lock::OnceCell;
use job::Owner;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use table::Table;

/// Default cap on the finished results kept for one uid.
pub const MAX_RESULTS_PER_UID: usize = 64;
/// Default cap on the finished results kept in all.
pub const MAX_RESULTS: usize = 1024;

/// The service's jobs.
#[derive(Debug)]
pub(crate) struct Jobs {
    service: u64,
    next: AtomicU64,
    ttl: Duration,
    max_results: usize,
    max_results_per_uid: usize,
    table: Mutex<Table>,
}

impl Jobs {
    /// An empty table whose results live at most `ttl` after the job ends,
    /// with the default caps.
    #[cfg(test)]
    pub(crate) fn new(ttl: Duration) -> Self {
        Self::with_caps(ttl, MAX_RESULTS, MAX_RESULTS_PER_UID)
    }

    /// An empty table keeping at most `max_results` finished results, and
    /// `max_results_per_uid` per uid.
    pub(crate) fn with_caps(ttl: Duration, max_results: usize, max_results_per_uid: usize) -> Self {
        let mut seed = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        Self {
            service: u64::from_ne_bytes(seed),
            next: AtomicU64::new(1),
            ttl,
            max_results: max_results.max(1),
            max_results_per_uid: max_results_per_uid.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a job for `owner`, whose pidfd is duplicated to recognise it
    /// while the job runs. Makes room first: expired results go, then the
    /// oldest finished ones beyond the caps. If the returned handle drops
    /// before [`Job::finish`] (a task that panicked), the job ends as
    /// failed, so its owner is not left waiting for a result.
    pub(crate) fn start(&self, owner: &Peer) -> std::io::Result<Running> {
        let id = JobId {
            service: self.service,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        };
        let job = Arc::new(Job {
            id,
            owner: Owner::of(owner)?,
            owner_pinned: Mutex::new(Some(owner.process.try_clone()?)),
            result: OnceCell::new(),
        });
        let mut table = self.lock();
        // gone owners: forgotten without a tombstone (nobody can ask)
        table.jobs.retain(|_, j| !j.expired(self.ttl));
        let uid = job.owner.uid;
        table.make_room(self.max_results_per_uid - 1, |j| j.owner.uid == uid);
        table.make_room(self.max_results - 1, |_| true);
        table.jobs.insert(id, job.clone());
        Ok(Running(job))
    }

    /// Forgets a job.
    pub(crate) fn remove(&self, id: JobId) {
        self.lock().jobs.remove(&id);
    }

    /// Whether the live process `pid` has a job whose result it has not
    /// asked for yet (see [`Jobs::awaited`]): a draining server serves it.
    pub(crate) fn awaits_result(&self, pid: i32, grace: Duration) -> bool {
        let table = self.lock();
        table
            .jobs
            .values()
            .any(|j| j.owner.process.pid == pid && j.awaited(grace))
    }

    /// Whether some live process has a job running, or ended less than
    /// `grace` ago, whose result it has not asked for yet. Failures told
    /// on the caller's connection are not here: those jobs are removed.
    pub(crate) fn awaited(&self, grace: Duration) -> bool {
        let table = self.lock();
        table.jobs.values().any(|j| j.awaited(grace))
    }

    /// The job `id` if `asker` is the process that started it. A result is
    /// handed out once. `Err` carries the answer to give instead: for
    /// anyone but the owner, exactly the answer for a job that never
    /// existed; for the owner of a result dropped unclaimed (a cap or the
    /// TTL), "result expired".
    pub(crate) fn claim(&self, id: JobId, asker: &Peer) -> Result<Arc<Job>, Unclaimed> {
        let unknown = Unclaimed::Unknown(id);
        // read before the lock: /proc may be slow
        let Ok(asker) = Owner::of(asker) else {
            return Err(unknown);
        };
        let mut table = self.lock();
        match table.jobs.get(&id) {
            Some(job) if job.owner == asker => {
                if job.finished_at().is_some_and(|at| at.elapsed() > self.ttl) {
                    table.expire(id);
                } else {
                    return Ok(table.jobs.remove(&id).expect("present"));
                }
            }
            Some(_) => return Err(unknown),
            None => {}
        }
        match table
            .tombstones
            .iter()
            .position(|(t, o)| *t == id && *o == asker)
        {
            Some(at) => {
                table.tombstones.remove(at);
                Err(Unclaimed::Expired(id))
            }
            None => Err(unknown),
        }
    }
}
/// A started job, held by the task running it.
#[derive(Debug)]
pub(crate) struct Running(Arc<Job>);

impl std::ops::Deref for Running {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.result.get().is_none() {
            self.0.finish(Outcome::failed(
                Some(self.0.id),
                "the selfdump service failed internally during this dump; \
                 its images are not usable (the service log says more)",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
