//! After CRIU: the images of a dump that succeeded become a generation,
//! a failed dump's leftovers go (CRIU's log is kept for the caller), and
//! once the caller has its answer the directory is tidied.

use super::failure::failure_message;
use super::frozen::Hooks;
use crate::proto::{DumpReport, JobId};
use crate::server::caller::credentials::Credentials;
use crate::server::caller::process::Process;
use crate::server::caller::status::TaskStatus;
use crate::server::conn::Outcome;
use crate::server::engine::{Dumped, EngineError};
use crate::server::fs::generations::retention;
use crate::server::fs::leftovers;
use crate::server::fs::staging::Staging;
use crate::server::images::format::Published;
use crate::server::shared::Shared;
use std::os::fd::OwnedFd;
use std::time::Instant;

/// Commits the images of a dump that succeeded as a generation, or
/// discards what a failed one left (keeping CRIU's log for the caller):
/// the outcome. `as_caller`: the CRIU ran as the caller.
pub(super) async fn conclude(
    hooks: Hooks<'_>,
    dumped: Result<Dumped, EngineError>,
    as_caller: bool,
    received: Instant,
) -> Outcome {
    let caller_alive = hooks.peer.process.is_alive();
    let Hooks {
        staging,
        meta,
        saved,
        peer,
        root,
        caller,
        generation,
        job,
        ..
    } = hooks;
    let staging = staging.into_inner();
    match dumped {
        Err(e) => {
            let tree = as_caller.then(|| root.unwrap_or(&peer.process));
            discard(staging, &e, caller, tree, job, generation, caller_alive).await
        }
        Ok(dumped) => {
            let published = blocking::unblock(move || staging.publish(&meta)).await;
            log::debug!(
                "job {job}: generation {generation} committed at {:?}",
                received.elapsed()
            );
            match published {
                Ok(published) => {
                    let published = saved.unwrap_or_default().and(published);
                    Outcome::Dumped(Box::new(report(
                        job, generation, &published, &dumped, received,
                    )))
                }
                Err(e) => Outcome::failed(
                    Some(job),
                    format!(
                        "dump succeeded but committing the images failed: {e}; latest still \
                         names the previous generation"
                    ),
                ),
            }
        }
    }
}

/// Discards what a failed dump left, keeping CRIU's log for the caller;
/// the failure, told in terms the caller can act on.
async fn discard(
    staging: Staging,
    e: &EngineError,
    caller: &TaskStatus,
    tree: Option<&Process>,
    job: JobId,
    generation: String,
    caller_alive: bool,
) -> Outcome {
    let committed = staging.is_committed();
    let (log_file, logged) = blocking::unblock(move || staging.discard()).await;
    let mut message = failure_message(e, logged, caller, tree, caller_alive);
    if committed {
        message.push_str(&format!(
            " (after the images were committed as generation {generation}, which latest names)"
        ));
    }
    Outcome::Failed {
        job: Some(job),
        message,
        log_file,
    }
}

/// The report of a committed dump.
fn report(
    job: JobId,
    generation: String,
    published: &Published,
    dumped: &Dumped,
    received: Instant,
) -> DumpReport {
    let stats = published.stats.clone().unwrap_or_default();
    DumpReport {
        job,
        generation,
        frozen_us: stats.frozen_time.into(),
        freezing_us: stats.freezing_time.into(),
        memdump_us: stats.memdump_time.into(),
        memwrite_us: stats.memwrite_time.into(),
        total_us: received.elapsed().as_micros() as u64,
        sync_us: published.sync_us,
        service_frozen_us: dumped.service_frozen.as_micros() as u64,
        pages_scanned: stats.pages_scanned,
        pages_written: stats.pages_written,
        bytes_written: published.bytes,
        processes: published.processes,
    }
}

/// What is done once the caller has its answer (off the caller's time):
/// the next dump finds a worker ready, generations beyond the newest
/// `keep` go once one was committed (`retention.rs`), and what a service
/// that died left in this directory goes (the caller's own leftovers with
/// its credentials, `creds`).
pub(crate) struct Tidy {
    pub(super) images_dir: Option<OwnedFd>,
    pub(super) job: JobId,
    pub(super) creds: Credentials,
    pub(super) keep: Option<usize>,
}

impl Tidy {
    pub(crate) fn run(self, shared: &Shared) {
        shared.workers.refill();
        let Self {
            images_dir,
            job,
            creds,
            keep,
        } = self;
        if let Some(images_dir) = images_dir {
            let own = format!("{:016x}", job.service);
            blocking::unblock(move || {
                if let Some(keep) = keep {
                    retention::retain(&images_dir, &creds, keep);
                }
                leftovers::remove_stale(&images_dir, Some(&own), &creds)
            })
            .detach();
        }
    }
}
