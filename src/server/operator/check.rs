//! Is CRIU usable here? (`selfdump check`)

pub use super::finding::Finding;
use super::finding::finding;
use crate::server::engine::{Criu, output, spawn};
use crate::server::fs::service_dir::ServiceDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Finds `criu` on `PATH`, then in `/usr/local/sbin` and `/usr/sbin`.
pub fn find_criu() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("criu"))
}

/// Runs every check, stopping at the first that makes the rest pointless;
/// the last says which engine non-root callers get here and whether it
/// works (a tiny dump and restore as uid 65534).
pub fn check(criu: &Criu, scratch: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    // each step only once the one before passed
    let criu_works = installed(criu)
        .and_then(|(found, version)| {
            out.push(found);
            at_least_4(&version)
        })
        .and_then(|recent| {
            out.push(recent);
            kernel_supported(criu)
        });
    match criu_works {
        Ok(passed) => out.push(passed),
        Err(failed) => {
            out.push(failed);
            return out;
        }
    }
    out.push(match dump_and_restore(criu, scratch) {
        Ok(d) => finding("dump and restore of a tiny process", true, format!("{d:?}")),
        Err(e) => finding("dump and restore of a tiny process", false, e),
    });
    out.push(crate::server::operator::check_non_root::non_root_callers(
        criu, scratch,
    ));
    out
}

/// Whether CRIU runs at all: the finding and what `criu --version` said.
fn installed(criu: &Criu) -> Result<(Finding, String), Finding> {
    match output(criu.command().arg("--version")) {
        Ok(o) => Ok((
            finding("criu installed", true, criu.path.display().to_string()),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )),
        Err(e) => Err(finding(
            "criu installed",
            false,
            format!("{}: {e}; run scripts/install-criu.sh", criu.path.display()),
        )),
    }
}

/// Whether `criu --version` said 4 or newer.
fn at_least_4(version: &str) -> Result<Finding, Finding> {
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .and_then(|v| v.split('.').next()?.trim().parse::<u32>().ok());
    let version_line = version.lines().next().unwrap_or("").trim().to_owned();
    match major {
        Some(m) if m >= 4 => Ok(finding("criu version >= 4", true, version_line)),
        _ => Err(finding(
            "criu version >= 4",
            false,
            format!("{version_line}; run scripts/install-criu.sh"),
        )),
    }
}

/// Whether `criu check` passes on this kernel.
fn kernel_supported(criu: &Criu) -> Result<Finding, Finding> {
    match output(criu.command().arg("check")) {
        Ok(o) if o.status.success() => Ok(finding("criu check", true, "kernel supported")),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty());
            // CRIU says some things (a missing capability) on stdout
            let said = String::from_utf8_lossy(&o.stdout);
            let first_said = said.lines().find(|l| !l.trim().is_empty());
            let detail = last.or(first_said).unwrap_or("(criu said nothing)");
            Err(finding("criu check", false, detail.trim()))
        }
        Err(e) => Err(finding("criu check", false, e.to_string())),
    }
}

/// A `sleep 600` in a session of its own: the process the check dumps.
fn start_sleeper() -> Result<std::process::Child, String> {
    let mut cmd = Command::new("sleep");
    cmd.arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    spawn(&mut cmd).map_err(|e| format!("cannot start sleep: {e}"))
}

/// Runs `criu ARGS -D DIR`; `Err` says where its log is.
fn run_criu(criu: &Criu, scratch: &ServiceDir, dir: &Path, args: &[&str]) -> Result<(), String> {
    let o = output(criu.command().args(args).arg("-D").arg(dir)).map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "criu {} failed (log in {})",
            args[0],
            scratch.shown().display()
        ))
    }
}

fn dump_and_restore(criu: &Criu, scratch: &Path) -> Result<Duration, String> {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let started = Instant::now();
    // a fresh directory of root's, reached through its fd: `scratch` (the
    // temporary directory) is writable by everyone
    let scratch_dir =
        ServiceDir::create_in(scratch, "selfdump-check-").map_err(|e| e.to_string())?;
    let dir = scratch_dir.proc_path();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| e.to_string())?;
    let mut child = start_sleeper()?;
    let pid = child.id();
    let run = |args: &[&str]| run_criu(criu, &scratch_dir, &dir, args);
    let dumped = run(&["dump", "-t", &pid.to_string(), "-o", "dump.log", "-v4"]);
    if dumped.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    dumped?;
    run(&[
        "restore",
        "-d",
        "--pidfile",
        "restore.pid",
        "-o",
        "restore.log",
        "-v4",
    ])?;
    let restored: i32 = scratch_dir
        .read("restore.pid")
        .and_then(|p| String::from_utf8_lossy(&p).trim().parse().ok())
        .ok_or("criu restore wrote no pid")?;
    let rpid = Pid::from_raw(restored).ok_or("bad restored pid")?;
    let alive = crate::procfs::PROC.exists(restored);
    let _ = kill_process(rpid, Signal::KILL);
    let _ = waitpid(Some(rpid), WaitOptions::empty());
    let _ = scratch_dir.remove_all();
    if restored as u32 != pid || !alive {
        return Err(format!(
            "restored pid {restored} (alive: {alive}), expected {pid}"
        ));
    }
    Ok(started.elapsed())
}
