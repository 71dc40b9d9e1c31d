//! CRIU's restore of a root checkpoint's verified images: by a root `criu
//! swrk` started while they were verified (`engine/restore.rs`), detached,
//! its tree held at `post-restore` until the pages are verified
//! (`gate.rs`), within the restore deadline, its log in a directory of
//! root's. (A non-root checkpoint's: `as_owner.rs`, with what both share
//! from here.)

use super::gate::Gate;
use super::settings::{RestoreError, RestoreSettings};
use super::verify::Verified;
use crate::procfs::{self, PROC};
use crate::server::engine::{
    Criu, CriuFlags, EngineError, POST_RESTORE, RestoreSpec, RestoreWorker, Starting, host,
};
use crate::server::fs::service_dir::{KEEP_LEFTOVER_BYTES, KEEP_LEFTOVERS, LOG_DIR, ServiceDir};
use crate::server::images::criu_log::first_error;
use crate::server::images::format::ImageMeta;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The CRIU that is to restore `meta`'s images is at least as new as the
/// one that dumped them (the rest of the host was checked with the
/// manifest).
pub(crate) fn check_criu(meta: &ImageMeta, criu: &Criu) -> Result<(), RestoreError> {
    host::check(meta.needs.as_ref(), Some(&criu.path)).map_err(RestoreError::Refused)
}

/// Where CRIU keeps its files for one restore: root's [`LOG_DIR`] (the
/// images directory is the caller's, and root must not create files there
/// by name), with old logs pruned, and the names of this restore's.
pub(super) fn log_place() -> Result<(ServiceDir, CriuFiles), RestoreError> {
    let logs = ServiceDir::open_or_create(Path::new(LOG_DIR)).map_err(no_place)?;
    logs.prune_leftovers(KEEP_LEFTOVERS, KEEP_LEFTOVER_BYTES);
    Ok((logs, CriuFiles::new()))
}

fn no_place(e: std::io::Error) -> RestoreError {
    RestoreError::Criu {
        message: format!("no place for the restore log: {e}"),
        log: PathBuf::from(LOG_DIR),
    }
}

/// Restores root's `verified` through `worker` (one is started if none
/// was), held at `gate` until its pages are verified, if any are left to
/// hash; the root pid.
pub(super) fn run_as_root(
    verified: &Verified,
    settings: &RestoreSettings,
    (worker, gate): (Option<Starting>, Option<&mut Gate>),
    logs: &ServiceDir,
    files: &CriuFiles,
) -> Result<i32, RestoreError> {
    // in use until this returns
    let _log_in_use = logs.create_locked(&files.log).map_err(no_place)?;
    let failed = |message: String| RestoreError::Criu {
        message,
        log: logs.shown().join(&files.log),
    };
    let worker = match worker {
        Some(starting) => starting.ready(),
        None => RestoreWorker::start(&settings.criu),
    }
    .map_err(|e| failed(format!("cannot run {}: {e}", settings.criu.path.display())))?;
    let spec = RestoreSpec {
        images_dir: verified.subdir.dir.as_fd(),
        work_dir: logs.as_fd(),
        log_file: &files.log,
        flags: CriuFlags::of(&verified.meta),
        notify: gate.is_some(),
    };
    let started = Instant::now();
    let deadline = started + settings.deadline;
    let (mut gate, mut held) = (gate, false);
    let ran = worker.restore(&spec, deadline, |action| {
        held |= action == POST_RESTORE;
        action != POST_RESTORE || gate.as_deref_mut().is_none_or(|g| g.passes_by(deadline))
    });
    log::debug!("restore: criu restore ran {:?}", started.elapsed());
    match ran {
        // a CRIU that never held the tree where the gate waits let pages run
        // that nobody verified
        Ok(_) if gate.is_some() && !held => {
            abandon_tasks(verified, started);
            Err(RestoreError::Refused(format!(
                "{} resumed the restored tree without announcing `{POST_RESTORE}`, where it \
                 waits until the pages are verified: the tree was killed",
                settings.criu.path.display()
            )))
        }
        Ok(pid) => {
            let _ = logs.remove(&files.log);
            Ok(pid)
        }
        Err(EngineError::TimedOut(_)) => {
            abandon_tasks(verified, started);
            Err(failed(timed_out(settings)))
        }
        Err(e) => {
            let logged = logs
                .read(&files.log)
                .and_then(|l| first_error(&String::from_utf8_lossy(&l)));
            Err(failed(logged.unwrap_or_else(|| match e {
                EngineError::Failed(Some(m)) => m,
                EngineError::Failed(None) => "criu restore failed".into(),
                // the engine's words for these are a dump's
                EngineError::Died | EngineError::Killed(_) => {
                    "criu died in the middle of the restore".into()
                }
                EngineError::Io(e) => format!("cannot talk to criu: {e}"),
                other => other.to_string(),
            })))
        }
    }
}

/// What a restore past its deadline is told.
pub(super) fn timed_out(settings: &RestoreSettings) -> String {
    format!(
        "criu restore did not finish within {:?}; it was killed, with whatever it had restored",
        settings.deadline
    )
}

/// The names of one restore's log and pid file in CRIU's work directory.
pub(super) struct CriuFiles {
    pub(super) log: String,
    pub(super) pid: String,
}

impl CriuFiles {
    fn new() -> Self {
        let mut random = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
        let tag = format!(
            "restore-{}-{:08x}",
            std::process::id(),
            u32::from_le_bytes(random)
        );
        Self {
            log: format!("{tag}.log"),
            pid: format!("{tag}.pid"),
        }
    }
}

/// Kills the tasks of the images that came to life after `started` (their
/// pids were free then): what a CRIU killed past its deadline restored.
pub(super) fn abandon_tasks(verified: &Verified, started: Instant) {
    use rustix::process::{Pid, Signal};
    let since_boot = |pid: u32| {
        PROC.read(pid, "stat")
            .ok()
            .and_then(|s| procfs::field::<u64>(&s, procfs::START_TIME))
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let uptime: f64 = PROC
        .read_file("uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let began = (uptime - started.elapsed().as_secs_f64()) * ticks;
    for task in &verified.tree {
        if since_boot(task.pid).is_some_and(|t| t as f64 >= began - ticks)
            && let Some(pid) = Pid::from_raw(task.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}
