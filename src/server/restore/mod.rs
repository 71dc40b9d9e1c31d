//! Restoring images written by the service (`selfdump restore`, and the
//! service's own restore for the owner of a checkpoint).
//!
//! What is restored from an images directory `DIR` is the generation
//! `DIR/latest` names, or the directory itself when it has no `latest`
//! (a generation named by its path, `DIR/gen-...`, or images made before
//! generations); see [`generation::resolve`](crate::server::fs::generations). The
//! generation is held with a shared lock while it is restored, so that
//! retention does not remove it meanwhile.
//!
//! Every restore verifies before CRIU reads anything (`verify.rs`): the
//! manifest's signature, every signed file against it (nothing changed or
//! removed; a file the manifest does not list is ignored, with a warning,
//! and never reaches CRIU), and every task's credentials against the
//! recorded owner. CRIU then reads only the verified copy of the images,
//! keeps its log in a directory of root's, and has a deadline.

pub mod copies;

mod as_owner;
mod criu;
mod gate;
mod ids;
mod place;
mod settings;
mod verify;

pub use crate::server::fs::service_dir::{KEEP_LEFTOVER_BYTES, KEEP_LEFTOVERS, LOG_DIR};
pub(crate) use criu::check_criu;
use criu::{log_place, run_as_root};
use gate::Gate;
pub use ids::{check_ids_free, wait_ids_free};
pub use settings::{RestoreError, RestoreSettings, Restored};
pub use verify::Verified;
use verify::verify;

use crate::server::caller::credentials::Credentials;
use crate::server::engine::{Criu, RestoreWorker, Starting};
use crate::server::fs::generations::{Resolved, resolve};
use crate::server::images::format::ImageMeta;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Restores the checkpoint in the directory at `dir` (an operator's
/// command line: the generation `latest` names, or `dir` itself; see the
/// module docs), detached, after verifying it; the private directory of
/// verified images is made in the generation with the directory owner's
/// credentials.
pub fn restore_path(dir: &Path, settings: &RestoreSettings) -> Result<Restored, RestoreError> {
    let (resolved, creds) = open_dir(dir)?;
    restore(resolved, settings, creds, |_| Ok(()))
}

/// Verifies the checkpoint at `dir` as [`restore_path`] does, without
/// restoring it: the verified images stay in a directory only root can
/// change, and the generation is held (retention leaves it), until the
/// [`Verified`] is dropped (`server::copies` restores many copies from
/// them).
pub fn verify_path(dir: &Path, settings: &RestoreSettings) -> Result<Verified, RestoreError> {
    let (resolved, creds) = open_dir(dir)?;
    verify(resolved, settings, creds, false, |_| Ok(()))
}

/// Restores the images in `dir` (resolved: [`resolve`]), detached, after
/// verifying them. `creds` are the credentials under which the service
/// works in the images directory (its owner's, or the requester's);
/// `may_restore` checks the signed owner against the requester, before
/// anything else is done.
pub(crate) fn restore(
    dir: Resolved,
    settings: &RestoreSettings,
    creds: Credentials,
    may_restore: impl FnOnce(&ImageMeta) -> Result<(), RestoreError>,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    // a root checkpoint is restored by a root `criu swrk`, started now so
    // that its exec and start-up overlap the verification; it exits unused
    // if the images turn out to be another owner's
    let worker = starting_worker(
        &settings.criu,
        creds.uid == 0 && rustix::process::geteuid().is_root(),
    );
    let mut verified = verify(dir, settings, creds, true, may_restore)?;
    let verify_time = started.elapsed();
    // the pages files are hashed while CRIU runs (see gate.rs)
    let mut gate =
        match std::mem::take(&mut verified.unhashed) {
            unhashed if unhashed.is_empty() => None,
            unhashed => Some(Gate::open(unhashed).map_err(|e| {
                RestoreError::Refused(format!("cannot start hashing the pages: {e}"))
            })?),
        };
    let pid = run_verified(&verified, settings, worker, gate.as_mut())?;
    log::debug!(
        "restore: pid {pid} running at {:?} (verified before CRIU at {verify_time:?})",
        started.elapsed()
    );
    Ok(Restored {
        pid,
        uid: verified.meta.uid,
        generation: verified.generation.clone(),
        verify: verify_time,
        total: started.elapsed(),
    })
}

/// A root CRIU started ahead by [`prestart`], for the next restore.
static PRESTARTED: Mutex<Option<Starting>> = Mutex::new(None);

/// Starts the CRIU that the next restore of a root checkpoint in this
/// process will use, so that its start (an exec and CRIU's own start-up,
/// 4–5 ms here) overlaps what the caller does meanwhile: a command loading
/// its key, a harness between two restores. A restore that finds none
/// starts one itself, beside its verification. Unused, it waits idle until
/// the next restore, or until this process exits (and it with it); a
/// second call replaces it. Root's only: it is a root CRIU.
///
/// ```no_run
/// use selfdump::server::{Criu, restore};
/// restore::prestart(&Criu::default());
/// // ... what the program does before it restores ...
/// let settings = restore::RestoreSettings::new(Criu::default(), None);
/// let restored = restore::restore_path("/var/lib/app/images".as_ref(), &settings)?;
/// println!("pid {}", restored.pid);
/// # Ok::<(), restore::RestoreError>(())
/// ```
pub fn prestart(criu: &Criu) {
    let starting = RestoreWorker::start_in_background(criu);
    *PRESTARTED.lock().unwrap_or_else(PoisonError::into_inner) = Some(starting);
}

/// With `wanted`, the CRIU [`prestart`] started, if it is `criu`, or one
/// starting now; a prestarted one not used is ended (and reaped) here.
fn starting_worker(criu: &Criu, wanted: bool) -> Option<Starting> {
    let prestarted = PRESTARTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match prestarted {
        Some(starting) if wanted && starting.runs(&criu.path) => Some(starting),
        _ => wanted.then(|| RestoreWorker::start_in_background(criu)),
    }
}

/// CRIU's restore of verified images (through `worker`, if one was
/// started), once their ids are free (tried once more if one was taken
/// meanwhile), held at `gate` until its pages are verified, if any are
/// left to hash; the root pid.
fn run_verified(
    verified: &Verified,
    settings: &RestoreSettings,
    worker: Option<Starting>,
    mut gate: Option<&mut Gate>,
) -> Result<i32, RestoreError> {
    // images of a whole pid namespace restore into a fresh one: their pids
    // are the namespace's own, never the host's
    if !verified.meta.pid_namespace {
        wait_ids_free(&verified.tree, verified.meta.shell_job, settings.wait)?;
        log::debug!("restore: the images' ids are free");
    }
    check_criu(&verified.meta, &settings.criu)?;
    let ran = run_criu(verified, settings, worker, gate.as_deref_mut());
    // a failed verification is the reason, whatever CRIU said of it
    if let Some(gate) = gate.as_mut()
        && let Err(refused) = gate.verdict()
    {
        // CRIU killed the tree it had rebuilt; its ids are free once it is
        // reaped (a namespace's init takes its namespace with it)
        if !verified.meta.pid_namespace {
            let _ = wait_ids_free(&verified.tree, verified.meta.shell_job, REAPED_WAIT);
        }
        return Err(refused);
    }
    match ran {
        // a pid or thread id of the images was taken between the check and
        // CRIU's clone (any process may start meanwhile): checked and tried
        // once more, as the id is usually that of a short-lived process
        Err(RestoreError::Criu { message, log })
            if !verified.meta.pid_namespace && id_taken_meanwhile(&message) =>
        {
            log::warn!(
                "restore: {message} (an id of the images was taken after they were checked; \
                 see {}): checking the ids again and trying once more",
                log.display()
            );
            wait_ids_free(
                &verified.tree,
                verified.meta.shell_job,
                settings.wait.max(RETRY_WAIT),
            )?;
            // every page is verified by now: no gate
            run_criu(verified, settings, None, None)
        }
        other => other,
    }
}

/// CRIU's restore of `verified`: as root for a root checkpoint (through
/// `worker`, held at `gate`), as its owner otherwise (`as_owner.rs`).
fn run_criu(
    verified: &Verified,
    settings: &RestoreSettings,
    worker: Option<Starting>,
    gate: Option<&mut Gate>,
) -> Result<i32, RestoreError> {
    let (logs, files) = log_place()?;
    match verified.meta.uid {
        0 => run_as_root(verified, settings, (worker, gate), &logs, &files),
        _ => as_owner::run_criu(verified, settings, &verified.meta.owner(), &files),
    }
}

/// How long a restore refused at its gate waits for the tree CRIU killed
/// to be reaped, so that its ids are free when the refusal is told.
const REAPED_WAIT: Duration = Duration::from_secs(2);

/// How long a restore whose id was taken meanwhile waits for it again.
const RETRY_WAIT: Duration = Duration::from_secs(5);

/// Whether CRIU failed because a pid or thread id of the images was in use
/// when it cloned the task (`EEXIST`), after [`wait_ids_free`] had found
/// it free.
fn id_taken_meanwhile(message: &str) -> bool {
    (message.contains("Can't fork for") && message.contains("File exists"))
        || message.contains("Unable to create a thread: -17")
}

/// Opens an images directory given by path (the operator's command line)
/// and resolves what to restore from it (`latest`, opened with the
/// credentials of the directory's owner), with the credentials of the
/// generation's owner, under which the private directory of verified
/// images is made and removed there.
fn open_dir(dir: &Path) -> Result<(Resolved, Credentials), RestoreError> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| RestoreError::Refused(format!("{}: {e}", dir.display())))?;
    let resolved = resolve(
        fd.try_clone().map_err(RestoreError::refused)?,
        &owner_of(&fd)?,
    )
    .map_err(|e| RestoreError::Refused(format!("{}: {e}", dir.display())))?;
    let creds = owner_of(&resolved.dir)?;
    Ok((resolved, creds))
}

/// The credentials of a directory's owner (its uid and gid).
fn owner_of(dir: &OwnedFd) -> Result<Credentials, RestoreError> {
    let stat = rustix::fs::fstat(dir).map_err(RestoreError::refused)?;
    Ok(Credentials {
        uid: stat.st_uid,
        gid: stat.st_gid,
        groups: Vec::new(),
    })
}
