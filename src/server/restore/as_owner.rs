//! A checkpoint of a non-root process is restored by CRIU running as the
//! checkpoint's owner (`criu restore --unprivileged`), never as root.
//!
//! Why: CRIU reopens the files a checkpoint recorded (`files.img`) by
//! path. The signature proves the paths are the dumped ones, not that
//! they still lead where they led: an owner could since have put a symlink
//! to a file of root's at such a path. Run as the owner, CRIU opens them
//! with the owner's rights, and such a symlink gets it nothing.
//!
//! The owner's CRIU holds only `CAP_CHECKPOINT_RESTORE` (to choose pids
//! and restore memory maps) and `CAP_SETPCAP` (to drop bounding-set
//! capabilities the images' tasks did not have), as ambient capabilities;
//! the restored tasks end with the credentials their images hold, which
//! the verification checked are the owner's, without capabilities. It
//! reaches the verified images and its work directory only through fds it
//! inherits (`/proc/self/fd/N`): both live under directories of root's,
//! and the owner gets read access to the verified files (a POSIX ACL
//! entry for its uid alone), never write access.

use super::criu::{CriuFiles, abandon_tasks, timed_out};
use super::settings::{RestoreError, RestoreSettings};
use super::verify::Verified;
use crate::procfs;
use crate::server::caller::credentials::Credentials;
use crate::server::engine::kdat::{UNPRIVILEGED_DIR, UNPRIVILEGED_FILE};
use crate::server::engine::run_as::Keep;
use crate::server::engine::{CriuFlags, kill_group};
use crate::server::fs::service_dir::{LOG_DIR, ServiceDir};
use crate::server::images::criu_log::first_error;
use rustix::thread::CapabilitySet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `criu restore` of `verified` as `owner`; the root pid. Its work
/// directory is its own, inside root's [`LOG_DIR`] (which it cannot reach
/// by path), and it reads the verified images with the read access given
/// here, both reached through inherited fds.
pub(super) fn run_criu(
    verified: &Verified,
    settings: &RestoreSettings,
    owner: &Credentials,
    files: &CriuFiles,
) -> Result<i32, RestoreError> {
    let work = owners_work_dir(verified, owner).map_err(|e| {
        RestoreError::Refused(format!(
            "cannot prepare a restore as uid {}: {e}",
            owner.uid
        ))
    })?;
    let failed = |message: String| RestoreError::Criu {
        message,
        log: work.shown().join(&files.log),
    };
    let cmd = criu_command(verified, settings, owner, &work, files);
    let status = wait_within(cmd, verified, settings).map_err(failed)?;
    let pid = work
        .read(&files.pid)
        .and_then(|p| String::from_utf8_lossy(&p).trim().parse().ok());
    match pid {
        Some(pid) if status.success() => {
            let _ = work.remove_all();
            Ok(pid)
        }
        _ => {
            let _ = work.remove(&files.pid);
            let logged = work
                .read(&files.log)
                .and_then(|l| first_error(&String::from_utf8_lossy(&l)));
            Err(failed(
                logged.unwrap_or_else(|| format!("criu exited with {status}")),
            ))
        }
    }
}

/// The only capabilities the owner's CRIU holds.
const CAPS: CapabilitySet = CapabilitySet::CHECKPOINT_RESTORE.union(CapabilitySet::SETPCAP);

/// Makes `cmd` run as `owner` with only [`CAPS`], ambient, keeping the
/// fds `inherit` open across the exec; it finds the kernel-feature cache
/// of unprivileged CRIUs if a service made one (see
/// [`kdat`](crate::server::engine::kdat)).
pub(super) fn run_as(cmd: &mut Command, owner: &Credentials, inherit: &[BorrowedFd<'_>]) {
    let cache = Path::new(UNPRIVILEGED_FILE).exists();
    owner.apply(
        cmd,
        Keep {
            caps: CAPS,
            // its restored tasks inherit the bounding set and no_new_privs
            confine: false,
            fds: inherit,
            runtime_dir: cache.then(|| Path::new(UNPRIVILEGED_DIR)),
        },
    );
}

/// `criu restore --unprivileged` of the verified images as `owner`,
/// detached, in a process group of its own.
fn criu_command(
    verified: &Verified,
    settings: &RestoreSettings,
    owner: &Credentials,
    work: &ServiceDir,
    files: &CriuFiles,
) -> Command {
    // the owner's CRIU cannot look into this process's fds: it inherits them
    let (images_fd, work_fd) = (verified.subdir.dir.as_raw_fd(), work.as_fd().as_raw_fd());
    let mut cmd = settings.criu.command();
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(procfs::self_fd(images_fd))
        .arg("--work-dir")
        .arg(procfs::self_fd(work_fd))
        .arg("--restore-detached")
        .arg("--pidfile")
        .arg(&files.pid)
        .arg("--log-file")
        .arg(&files.log)
        .arg(format!("-v{}", settings.criu.log_level))
        .arg("--unprivileged")
        .args(CriuFlags::of(&verified.meta).restore_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    run_as(
        &mut cmd,
        owner,
        &[verified.subdir.dir.as_fd(), work.as_fd()],
    );
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
                kill_group(child.id());
                abandon_tasks(verified, started);
                let _ = child.wait();
                return Err(timed_out(settings));
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
    grant_read(&verified.subdir.dir, owner.uid, true)?;
    for name in verified.subdir.names()? {
        let file = rustix::fs::openat(
            &verified.subdir.dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        grant_read(&file, owner.uid, false)?;
    }
    let work = ServiceDir::create_in(Path::new(LOG_DIR), "restore-")?;
    rustix::fs::fchown(
        &work,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )?;
    Ok(work)
}

/// Lets `uid` read (and, for a directory, search) a file of root's,
/// through a POSIX ACL entry for that uid alone; nobody else gains
/// anything, and nobody but root can write.
pub(super) fn grant_read(file: &impl AsFd, uid: u32, directory: bool) -> io::Result<()> {
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED: u32 = u32::MAX;
    let (own, theirs) = if directory { (7, 5) } else { (6, 4) };
    let mut acl = 2u32.to_le_bytes().to_vec(); // POSIX_ACL_XATTR_VERSION
    for (tag, perm, id) in [
        (USER_OBJ, own, UNDEFINED),
        (USER, theirs, uid),
        (GROUP_OBJ, 0, UNDEFINED),
        (MASK, theirs, UNDEFINED),
        (OTHER, 0, UNDEFINED),
    ] {
        acl.extend_from_slice(&u16::to_le_bytes(tag));
        acl.extend_from_slice(&u16::to_le_bytes(perm));
        acl.extend_from_slice(&id.to_le_bytes());
    }
    rustix::fs::fsetxattr(
        file,
        "system.posix_acl_access",
        &acl,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot give uid {uid} read access to the verified images (POSIX ACLs: {e}); \
                 a non-root checkpoint restores only on a filesystem with ACLs"
            ),
        )
    })
}
