//! Restoring images written by the service (`selfdump restore`, and the
//! service's own restore for the owner of a checkpoint).
//!
//! What is restored from an images directory `DIR` is the generation
//! `DIR/latest` names, or the directory itself when it has no `latest`
//! (a generation named by its path, `DIR/gen-...`, or images made before
//! generations); see [`generation::resolve`](super::generation). The
//! generation is held with a shared lock while it is restored, so that
//! retention does not remove it meanwhile.
//!
//! Every restore verifies before CRIU reads anything (`verify.rs`): the
//! manifest's signature, every signed file against it (nothing changed or
//! removed; a file the manifest does not list is ignored, with a warning,
//! and never reaches CRIU), and every task's credentials against the
//! recorded owner. CRIU then reads only the verified copy of the images,
//! keeps its log in a directory of root's, and has a deadline.

mod as_owner;
mod ids;
mod verify;

pub use super::private_dir::{KEEP_LEFTOVER_BYTES, KEEP_LEFTOVERS, LOG_DIR};
pub use ids::{check_ids_free, wait_ids_free};
pub use verify::Verified;
use verify::verify;

use super::Criu;
use super::as_caller::CallerCreds;
use super::engine::first_error;
use super::generation::{Resolved, resolve};
use super::images::ImageMeta;
use super::manifest::Key;
use super::private_dir::PrivateDir;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a restore did not happen.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestoreError {
    /// The images did not verify, or may not be restored for this
    /// requester: nothing of them ran.
    Refused(String),
    /// A pid, session or process group the images need is taken.
    IdInUse {
        /// What kind of id.
        what: &'static str,
        /// The id.
        id: u32,
        /// Who holds it (a process name or pid), if known.
        holder: String,
    },
    /// CRIU failed; its log is kept in a directory of root's
    /// ([`LOG_DIR`]), never in the images directory.
    Criu {
        /// What CRIU or the system said.
        message: String,
        /// The restore log.
        log: PathBuf,
    },
}

impl RestoreError {
    pub(crate) fn refused(e: impl fmt::Display) -> Self {
        Self::Refused(e.to_string())
    }
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(why) => write!(f, "restore refused: {why}"),
            Self::IdInUse { what, id, holder } => write!(
                f,
                "{what} {id} is in use by {holder}; the restored tree needs it free: stop that \
                 process (and reap it if it is a zombie) before restoring"
            ),
            Self::Criu { message, log } => {
                write!(f, "criu restore failed: {message}; see {}", log.display())?;
                if message.contains("has bad size") {
                    f.write_str(BAD_SIZE)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RestoreError {}

/// What CRIU's "File ... has bad size N (expect M)" means: a regular file
/// the tree had open changed size since the dump.
const BAD_SIZE: &str = ". A file the program had open changed size since the dump: CRIU \
     restores a file written without O_APPEND only at the size it was dumped with. Open \
     logs for append (`>>` in a shell, O_APPEND), which CRIU restores whatever their size \
     (the preflight lists files written otherwise); a program or library file must be \
     the one that was dumped (the same build)";

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreSettings {
    /// The CRIU to run.
    pub criu: Criu,
    /// The key the images must be signed with (`None`: only with
    /// `trust_unsigned`).
    pub key: Option<Key>,
    /// Restore images without a manifest (made by plain CRIU), unchecked.
    pub trust_unsigned: bool,
    /// How long to wait for the images' pids, sessions and groups to be
    /// free (a previous copy still dying).
    pub wait: Duration,
    /// How long CRIU may take; past it, CRIU and whatever it restored so
    /// far are killed.
    pub deadline: Duration,
}

impl RestoreSettings {
    /// Defaults: signed images only, no waiting, a 60 s deadline.
    pub fn new(criu: Criu, key: Option<Key>) -> Self {
        Self {
            criu,
            key,
            trust_unsigned: false,
            wait: Duration::ZERO,
            deadline: Duration::from_secs(60),
        }
    }
}

/// A restored tree.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The restored root pid.
    pub pid: i32,
    /// The images' owner.
    pub uid: u32,
    /// The generation restored; `None` for images directly in the
    /// directory given.
    pub generation: Option<String>,
    /// Time spent verifying the images.
    pub verify: Duration,
    /// Time from the request to CRIU's answer.
    pub total: Duration,
}

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
    verify(
        resolved,
        settings.key.as_ref(),
        settings.trust_unsigned,
        creds,
        |_| Ok(()),
    )
}

/// Restores the images in `dir` (resolved: [`resolve`]), detached, after
/// verifying them. `creds` are the credentials under which the service
/// works in the images directory (its owner's, or the requester's);
/// `may_restore` checks the signed owner against the requester, before
/// anything else is done.
pub(crate) fn restore(
    dir: Resolved,
    settings: &RestoreSettings,
    creds: CallerCreds,
    may_restore: impl FnOnce(&ImageMeta) -> Result<(), RestoreError>,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let verified = verify(
        dir,
        settings.key.as_ref(),
        settings.trust_unsigned,
        creds,
        may_restore,
    )?;
    let verify_time = started.elapsed();
    // images of a whole pid namespace restore into a fresh one: their pids
    // are the namespace's own, never the host's
    if !verified.meta.pid_namespace {
        wait_ids_free(&verified.tree, verified.meta.shell_job, settings.wait)?;
    }
    let pid = match run_criu(&verified, settings) {
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
            run_criu(&verified, settings)?
        }
        other => other?,
    };
    Ok(Restored {
        pid,
        uid: verified.meta.uid,
        generation: verified.generation.clone(),
        verify: verify_time,
        total: started.elapsed(),
    })
}

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
fn open_dir(dir: &Path) -> Result<(Resolved, CallerCreds), RestoreError> {
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
fn owner_of(dir: &OwnedFd) -> Result<CallerCreds, RestoreError> {
    let stat = rustix::fs::fstat(dir).map_err(RestoreError::refused)?;
    Ok(CallerCreds {
        uid: stat.st_uid,
        gid: stat.st_gid,
        groups: Vec::new(),
    })
}

fn run_criu(verified: &Verified, settings: &RestoreSettings) -> Result<i32, RestoreError> {
    // CRIU's own files go to a directory of root's: the images directory
    // is the caller's, and root must not create files there by name.
    let no_place = |e: std::io::Error| RestoreError::Criu {
        message: format!("no place for the restore log: {e}"),
        log: PathBuf::from(LOG_DIR),
    };
    let logs = PrivateDir::open_or_create(Path::new(LOG_DIR)).map_err(no_place)?;
    logs.prune_leftovers(KEEP_LEFTOVERS, KEEP_LEFTOVER_BYTES);
    let meta = &verified.meta;
    let owner = (meta.uid != 0).then(|| as_owner::Owner {
        uid: meta.uid,
        gid: meta.gid,
        groups: meta.groups.clone(),
    });
    // A non-root checkpoint's CRIU runs as its owner (see `as_owner`): a
    // work directory of its own inside root's LOG_DIR (which it cannot
    // reach by path), and read access to the verified images, both
    // reached through inherited fds.
    let owners_work = match &owner {
        None => None,
        Some(o) => Some(owners_work_dir(verified, o).map_err(|e| {
            RestoreError::Refused(format!("cannot prepare a restore as uid {}: {e}", o.uid))
        })?),
    };
    let work = owners_work.as_ref().unwrap_or(&logs);
    let files = CriuFiles::new();
    // in use until this returns (an owner's work directory is, itself)
    let _log_in_use = match owners_work {
        None => Some(logs.create_locked(&files.log).map_err(no_place)?),
        Some(_) => None,
    };
    let failed = |message: String| RestoreError::Criu {
        message,
        log: work.shown().join(&files.log),
    };
    let cmd = criu_command(verified, settings, owner.as_ref(), work, &files);
    let status = wait_within(cmd, verified, settings).map_err(failed)?;
    let pid = work
        .read(&files.pid)
        .and_then(|p| String::from_utf8_lossy(&p).trim().parse().ok());
    let _ = work.remove(&files.pid);
    match pid {
        Some(pid) if status.success() => {
            let _ = work.remove(&files.log);
            if let Some(dir) = owners_work {
                let _ = dir.remove_all();
            }
            Ok(pid)
        }
        _ => {
            let logged = work
                .read(&files.log)
                .and_then(|l| first_error(&String::from_utf8_lossy(&l)));
            Err(failed(
                logged.unwrap_or_else(|| format!("criu exited with {status}")),
            ))
        }
    }
}

/// The names of one restore's log and pid file in CRIU's work directory.
struct CriuFiles {
    log: String,
    pid: String,
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

/// `criu restore` of the verified images, detached, in a process group of
/// its own; run as `owner` (with `--unprivileged`) when there is one.
fn criu_command(
    verified: &Verified,
    settings: &RestoreSettings,
    owner: Option<&as_owner::Owner>,
    work: &PrivateDir,
    files: &CriuFiles,
) -> Command {
    let (images_fd, work_fd) = (verified.subdir.dir.as_raw_fd(), work.as_fd().as_raw_fd());
    // the owner's CRIU cannot look into this process's fds: it inherits them
    let fd_path = |fd: i32| match owner {
        Some(_) => format!("/proc/self/fd/{fd}"),
        None => format!("/proc/{}/fd/{fd}", std::process::id()),
    };
    let mut cmd = Command::new(&settings.criu.path);
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(fd_path(images_fd))
        .arg("--work-dir")
        .arg(fd_path(work_fd))
        .arg("--restore-detached")
        .arg("--pidfile")
        .arg(&files.pid)
        .arg("--log-file")
        .arg(&files.log)
        .arg(format!("-v{}", settings.criu.log_level))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(o) = owner {
        cmd.arg("--unprivileged");
        as_owner::run_as(&mut cmd, o, &[verified.subdir.dir.as_fd(), work.as_fd()]);
    }
    cmd.args(crate::server::engine::CriuFlags::of(&verified.meta).restore_args());
    use std::os::unix::process::CommandExt;
    // a group of its own, so that a deadline kills its helpers too
    cmd.process_group(0);
    cmd
}

/// Runs `cmd` until it exits or the deadline passes; past it, CRIU and
/// what it restored are killed.
fn wait_within(
    mut cmd: Command,
    verified: &Verified,
    settings: &RestoreSettings,
) -> Result<std::process::ExitStatus, String> {
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", settings.criu.path.display()))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if started.elapsed() < settings.deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            _ => {
                abandon(&child, verified, started);
                let _ = child.wait();
                return Err(format!(
                    "criu restore did not finish within {:?}; it was killed, with whatever \
                     it had restored",
                    settings.deadline
                ));
            }
        }
    }
}

/// The owner's CRIU's work directory (fresh, inside root's [`LOG_DIR`],
/// owned by the owner), after giving the owner read access to the verified
/// images.
fn owners_work_dir(verified: &Verified, owner: &as_owner::Owner) -> std::io::Result<PrivateDir> {
    use rustix::fs::{Gid, Mode, OFlags, Uid};
    as_owner::grant_read(&verified.subdir.dir, owner.uid, true)?;
    for name in verified.subdir.names()? {
        let file = rustix::fs::openat(
            &verified.subdir.dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        as_owner::grant_read(&file, owner.uid, false)?;
    }
    let work = PrivateDir::create_in(Path::new(LOG_DIR), "restore-")?;
    rustix::fs::fchown(
        &work,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )?;
    Ok(work)
}

/// Kills a CRIU past its deadline, its process group, and the tasks of the
/// images that came to life after it started (their pids were free then).
fn abandon(child: &std::process::Child, verified: &Verified, started: Instant) {
    use rustix::process::{Pid, Signal};
    if let Some(group) = Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    let since_boot = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| crate::procstat::field::<u64>(&s, crate::procstat::START_TIME))
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
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
