//! The table of jobs, and of results that went unclaimed.

use super::job::{Job, Owner};
use crate::proto::JobId;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Results that went unclaimed and are still answered "result expired".
pub(crate) const MAX_TOMBSTONES: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) jobs: HashMap<JobId, Arc<Job>>,
    /// Results dropped unclaimed while their owner lived, oldest first.
    pub(super) tombstones: VecDeque<(JobId, Owner)>,
}

impl Table {
    /// Drops a finished job's result before its owner asked for it.
    pub(super) fn expire(&mut self, id: JobId) {
        if let Some(job) = self.jobs.remove(&id) {
            log::info!(
                "job {id}: result of pid {} (uid {}) dropped unclaimed",
                job.owner.process.pid,
                job.owner.uid
            );
            if self.tombstones.len() >= MAX_TOMBSTONES {
                self.tombstones.pop_front();
            }
            self.tombstones.push_back((id, job.owner));
        }
    }

    /// Expires the oldest finished results among those `matching`, until
    /// at most `keep` jobs match.
    pub(super) fn make_room(&mut self, keep: usize, matching: impl Fn(&Job) -> bool) {
        let mut finished: Vec<(Instant, JobId)> = Vec::new();
        let mut count = 0;
        for job in self.jobs.values().filter(|j| matching(j)) {
            count += 1;
            if let Some(at) = job.finished_at() {
                finished.push((at, job.id));
            }
        }
        if count <= keep {
            return;
        }
        finished.sort_by_key(|&(at, id)| (at, id.seq));
        for (_, id) in finished.into_iter().take(count - keep) {
            self.expire(id);
        }
    }
}
