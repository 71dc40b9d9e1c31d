//! `criu restore` of verified images: detached, in a process group of its
//! own, as the images' owner for a non-root checkpoint (`as_owner.rs`),
//! with its log and pid file in a directory of root's, within the restore
//! deadline.

use super::as_owner;
use super::gate::Gate;
use super::settings::{RestoreError, RestoreSettings};
use super::verify::Verified;
use crate::procfs::{self, PROC};
use crate::server::caller::credentials::Credentials;
use crate::server::engine::{Criu, host};
use crate::server::fs::service_dir::{KEEP_LEFTOVER_BYTES, KEEP_LEFTOVERS, LOG_DIR, ServiceDir};
use crate::server::images::criu_log::first_error;
use crate::server::images::format::ImageMeta;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The CRIU that is to restore `meta`'s images is at least as new as the
/// one that dumped them (the rest of the host was checked with the
/// manifest).
pub(crate) fn check_criu(meta: &ImageMeta, criu: &Criu) -> Result<(), RestoreError> {
    host::check(meta.needs.as_ref(), Some(&criu.path)).map_err(RestoreError::Refused)
}

/// Runs `criu restore` of `verified`, held at `gate` (if given) until its
/// pages are verified; the root pid.
pub(super) fn run_criu(
    verified: &Verified,
    settings: &RestoreSettings,
    gate: Option<&Gate>,
) -> Result<i32, RestoreError> {
    // CRIU's own files go to a directory of root's: the images directory
    // is the caller's, and root must not create files there by name.
    let no_place = |e: std::io::Error| RestoreError::Criu {
        message: format!("no place for the restore log: {e}"),
        log: PathBuf::from(LOG_DIR),
    };
    let logs = ServiceDir::open_or_create(Path::new(LOG_DIR)).map_err(no_place)?;
    logs.prune_leftovers(KEEP_LEFTOVERS, KEEP_LEFTOVER_BYTES);
    let meta = &verified.meta;
    let owner = (meta.uid != 0).then(|| meta.owner());
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
    let cmd = criu_command(verified, settings, (owner.as_ref(), gate), work, &files);
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
/// its own; run as `owner` (with `--unprivileged`) when there is one, held
/// at `gate` when given.
fn criu_command(
    verified: &Verified,
    settings: &RestoreSettings,
    (owner, gate): (Option<&Credentials>, Option<&Gate>),
    work: &ServiceDir,
    files: &CriuFiles,
) -> Command {
    let (images_fd, work_fd) = (verified.subdir.dir.as_raw_fd(), work.as_fd().as_raw_fd());
    // the owner's CRIU cannot look into this process's fds: it inherits them
    let fd_path = |fd: i32| match owner {
        Some(_) => procfs::self_fd(fd),
        None => procfs::fd_of(std::process::id(), fd),
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
    if let Some(gate) = gate {
        gate.hold(&mut cmd);
    }
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
    let mut child = crate::server::engine::spawn(&mut cmd)
        .map_err(|e| format!("cannot run {}: {e}", settings.criu.path.display()))?;
    // woken by its exit (a pidfd turns readable), not by polling
    let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                log::debug!("restore: criu restore ran {:?}", started.elapsed());
                return Ok(status);
            }
            Ok(None) if started.elapsed() < settings.deadline => {
                let left = settings.deadline.saturating_sub(started.elapsed());
                wait_readable(pidfd.as_ref(), left.min(Duration::from_millis(100)));
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

/// Waits until `pidfd` is readable (its process exited) or `at_most`
/// passes; without a pidfd, sleeps 2 ms.
fn wait_readable(pidfd: Option<&std::os::fd::OwnedFd>, at_most: Duration) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let Some(pidfd) = pidfd else {
        return std::thread::sleep(Duration::from_millis(2));
    };
    let timeout = Timespec {
        tv_sec: at_most.as_secs() as i64,
        tv_nsec: at_most.subsec_nanos() as i64,
    };
    let _ = rustix::event::poll(&mut [PollFd::new(pidfd, PollFlags::IN)], Some(&timeout));
}

/// The owner's CRIU's work directory (fresh, inside root's [`LOG_DIR`],
/// owned by the owner), after giving the owner read access to the verified
/// images.
fn owners_work_dir(verified: &Verified, owner: &Credentials) -> std::io::Result<ServiceDir> {
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
    let work = ServiceDir::create_in(Path::new(LOG_DIR), "restore-")?;
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
