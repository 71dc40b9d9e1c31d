//! `selfdump check`: which engine non-root callers get here, and whether
//! it works, by a tiny dump and restore as uid 65534 run the way the
//! service runs them.

use super::finding::Finding;
use crate::procfs::{self, PROC};
use crate::server::caller::credentials::Credentials;
use crate::server::engine::Criu;
use crate::server::engine::kdat::{UNPRIVILEGED_DIR, UNPRIVILEGED_FILE};
use crate::server::engine::run_as::{DUMP_CAPS, Keep, cannot_grant};
use crate::server::fs::service_dir::ServiceDir;
use rustix::fs::{Gid, Mode, OFlags, Uid};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::CapabilitySet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WHAT: &str = "dumps of non-root callers";
const NOBODY: u32 = 65534;

/// The finding on non-root callers: CRIU running as the caller works here
/// (a tiny dump and restore as uid 65534 worked), or why not and what the
/// service then does.
pub(crate) fn non_root_callers(criu: &Criu, scratch: &Path) -> Finding {
    let why = match cannot_grant(DUMP_CAPS) {
        Some(why) => why,
        None => match dump_and_restore_as_nobody(criu, scratch) {
            Ok(took) => {
                return Finding {
                    what: WHAT.into(),
                    ok: true,
                    detail: format!(
                        "CRIU runs as the caller (CAP_CHECKPOINT_RESTORE only): a dump and \
                         restore as uid {NOBODY} took {took:?}"
                    ),
                };
            }
            Err(e) => e,
        },
    };
    let root = match crate::server::caller::caps::own_effective()
        .and_then(crate::server::caller::caps::other_uids_blocked)
    {
        None => "which works here".to_owned(),
        Some(blocked) => format!("which cannot work here either: {blocked}"),
    };
    Finding {
        what: WHAT.into(),
        ok: false,
        detail: format!(
            "CRIU cannot run as the caller here: {why}; `selfdump serve` refuses non-root \
             checkpoints, or with --non-root-fallback root has root's CRIU dump them, {root}; \
             root callers are not affected"
        ),
    }
}

/// A directory of uid 65534's (0700) in a fresh one of root's (0700)
/// under `scratch`: CRIU as 65534 reaches it through an inherited fd.
fn nobodys_dir(scratch: &Path) -> Result<(ServiceDir, OwnedFd), String> {
    let outer = ServiceDir::create_in(scratch, "selfdump-check-").map_err(|e| e.to_string())?;
    let inner = (|| {
        rustix::fs::mkdirat(&outer, "user", Mode::RWXU)?;
        let inner = rustix::fs::openat(
            &outer,
            "user",
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        rustix::fs::fchown(
            &inner,
            Some(Uid::from_raw(NOBODY)),
            Some(Gid::from_raw(NOBODY)),
        )?;
        Ok::<_, rustix::io::Errno>(inner)
    })();
    match inner {
        Ok(inner) => Ok((outer, inner)),
        Err(e) => {
            let _ = outer.remove_all();
            Err(e.to_string())
        }
    }
}

fn dump_and_restore_as_nobody(criu: &Criu, scratch: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let (outer, inner) = nobodys_dir(scratch)?;
    let result = dump_and_restore_in(criu, &inner);
    for name in crate::server::images::format::entry_names(&inner).unwrap_or_default() {
        let _ = rustix::fs::unlinkat(&inner, name.as_str(), rustix::fs::AtFlags::empty());
    }
    let _ = rustix::fs::unlinkat(&outer, "user", rustix::fs::AtFlags::REMOVEDIR);
    let _ = outer.remove_all();
    result.map(|()| started.elapsed())
}

fn dump_and_restore_in(criu: &Criu, dir: &OwnedFd) -> Result<(), String> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| e.to_string())?;
    let mut sleeper = start_sleeper()?;
    let pid = sleeper.id() as i32;
    let dumped = run(
        criu,
        dir,
        &["dump", "-t", &pid.to_string(), "-o", "dump.log"],
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    dumped?;
    let restore = [
        "restore",
        "-d",
        "--pidfile",
        "restore.pid",
        "-o",
        "restore.log",
    ];
    run(criu, dir, &restore)?;
    let restored: i32 = crate::server::images::format::read_image(dir, "restore.pid")
        .and_then(|p| String::from_utf8_lossy(&p).trim().parse().ok())
        .ok_or("criu restore as uid 65534 wrote no pid")?;
    let alive_as_nobody = PROC.read(restored, "status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534"))
    });
    if let Some(rpid) = Pid::from_raw(restored) {
        let _ = rustix::process::kill_process(rpid, Signal::KILL);
        let _ = rustix::process::waitpid(Some(rpid), WaitOptions::empty());
    }
    if restored != pid || !alive_as_nobody {
        return Err(format!(
            "restored pid {restored} (alive as uid {NOBODY}: {alive_as_nobody}), expected {pid}"
        ));
    }
    Ok(())
}

/// A `sleep 600` of uid 65534's (no supplementary groups: std drops
/// them when root sets a uid) in a session of its own.
fn start_sleeper() -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sleep");
    cmd.arg("600")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    crate::server::engine::spawn(&mut cmd).map_err(|e| format!("cannot start sleep: {e}"))
}

/// `criu ARGS --unprivileged -D <dir> -v4` as uid 65534, as the service
/// runs it: `CAP_CHECKPOINT_RESTORE` only for a dump (and `CAP_SETPCAP`
/// for a restore, as `restore/as_owner.rs` does).
fn run(criu: &Criu, dir: &OwnedFd, args: &[&str]) -> Result<(), String> {
    let restore = args[0] == "restore";
    let caps = match restore {
        true => DUMP_CAPS | CapabilitySet::SETPCAP,
        false => DUMP_CAPS,
    };
    let mut cmd = criu.command();
    cmd.args(args)
        .arg("--unprivileged")
        .arg("-D")
        .arg(procfs::self_fd(dir.as_raw_fd()))
        .arg("-v4")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let nobody = Credentials {
        uid: NOBODY,
        gid: NOBODY,
        groups: Vec::new(),
    };
    let cache = Path::new(UNPRIVILEGED_FILE).exists();
    nobody.apply(
        &mut cmd,
        Keep {
            caps,
            confine: !restore,
            fds: &[dir.as_fd()],
            runtime_dir: cache.then(|| Path::new(UNPRIVILEGED_DIR)),
        },
    );
    let status = crate::server::engine::spawn(&mut cmd)
        .and_then(|mut child| child.wait())
        .map_err(|e| format!("cannot run {}: {e}", criu.path.display()))?;
    if status.success() {
        return Ok(());
    }
    let log = if restore { "restore.log" } else { "dump.log" };
    let first = crate::server::images::format::read_image(dir, log)
        .and_then(|l| crate::server::images::criu_log::first_error(&String::from_utf8_lossy(&l)))
        .unwrap_or_else(|| format!("exit {status}"));
    Err(format!("criu {} as uid {NOBODY} failed: {first}", args[0]))
}
