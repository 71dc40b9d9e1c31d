//! Is CRIU usable here? (`selfdump check`)

use super::Criu;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One line of the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub what: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details or the fix.
    pub detail: String,
}

fn finding(what: &str, ok: bool, detail: impl Into<String>) -> Finding {
    Finding {
        what: what.into(),
        ok,
        detail: detail.into(),
    }
}

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
    let version = match Command::new(&criu.path).arg("--version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            out.push(finding(
                "criu installed",
                false,
                format!("{}: {e}; run scripts/install-criu.sh", criu.path.display()),
            ));
            return out;
        }
    };
    out.push(finding(
        "criu installed",
        true,
        criu.path.display().to_string(),
    ));
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .and_then(|v| v.split('.').next()?.trim().parse::<u32>().ok());
    let version_line = version.lines().next().unwrap_or("").trim().to_owned();
    match major {
        Some(m) if m >= 4 => out.push(finding("criu version >= 4", true, version_line)),
        _ => {
            out.push(finding(
                "criu version >= 4",
                false,
                format!("{version_line}; run scripts/install-criu.sh"),
            ));
            return out;
        }
    }
    match Command::new(&criu.path).arg("check").output() {
        Ok(o) if o.status.success() => out.push(finding("criu check", true, "kernel supported")),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty());
            // CRIU says some things (a missing capability) on stdout
            let said = String::from_utf8_lossy(&o.stdout);
            let first_said = said.lines().find(|l| !l.trim().is_empty());
            let detail = last.or(first_said).unwrap_or("(criu said nothing)");
            out.push(finding("criu check", false, detail.trim()));
            return out;
        }
        Err(e) => {
            out.push(finding("criu check", false, e.to_string()));
            return out;
        }
    }
    out.push(match dump_and_restore(criu, scratch) {
        Ok(d) => finding("dump and restore of a tiny process", true, format!("{d:?}")),
        Err(e) => finding("dump and restore of a tiny process", false, e),
    });
    out.push(super::check_non_root::non_root_callers(criu, scratch));
    out
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
    cmd.spawn().map_err(|e| format!("cannot start sleep: {e}"))
}

fn dump_and_restore(criu: &Criu, scratch: &Path) -> Result<Duration, String> {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let started = Instant::now();
    // a fresh directory of root's, reached through its fd: `scratch` (the
    // temporary directory) is writable by everyone
    let scratch_dir = super::private_dir::PrivateDir::create_in(scratch, "selfdump-check-")
        .map_err(|e| e.to_string())?;
    let dir = scratch_dir.proc_path();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| e.to_string())?;
    let mut child = start_sleeper()?;
    let pid = child.id();
    let run = |args: &[&str]| -> Result<(), String> {
        let o = Command::new(&criu.path)
            .args(args)
            .arg("-D")
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "criu {} failed (log in {})",
                args[0],
                scratch_dir.shown().display()
            ))
        }
    };
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
    let alive = Path::new(&format!("/proc/{restored}")).exists();
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
