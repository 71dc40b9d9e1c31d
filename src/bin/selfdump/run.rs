//! `selfdump run`: a program as the init's child in a pid namespace of its
//! own, and the init itself (`selfdump __init`, the same binary).
//!
//! The process tree, from the host's side:
//!
//! ```text
//! selfdump run -- CMD        (host's namespace: waits, passes signals on)
//! └─ selfdump __init -- CMD  pid 1 of the new namespace, leader of its own
//!    │                       session (setsid): the root of every dump
//!    └─ CMD                  pid 3 (the init's reactor thread is 2): the
//!                            program, which calls checkpoint()
//! ```
//!
//! No parent-death signal anywhere: a restored copy's init would get it as
//! soon as CRIU exits. No mount namespace either: the host's `/proc` names
//! every task of the namespace by its host pid, which is what the service
//! and the client's preflight read (the preflight walks `/proc` from
//! `/proc/self`, never from `getpid()`), and a private mount namespace
//! would make CRIU dump and restore mounts, which needs `--root` and
//! external-mount options for every restore.
//!
//! The init is this binary, so it is in every image like the program's
//! own binary: CRIU refuses to restore when a mapped file changed size, so
//! images made under one build of `selfdump` need that build on disk.

use crate::cli::{Exit, Res, usage};
use crate::help_requested;
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use rustix::process::{Pid, WaitOptions, WaitStatus};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

/// The signals an init passes on to the program (all but SIGCHLD).
const FORWARDED: [Signal; 9] = [
    Signal::Term,
    Signal::Int,
    Signal::Hup,
    Signal::Quit,
    Signal::Usr1,
    Signal::Usr2,
    Signal::Winch,
    Signal::Alarm,
    Signal::Child, // not forwarded: reaps (see `supervise`)
];

/// The exit code that tells how a process ended, as a shell says it.
fn exit_code(status: WaitStatus) -> u8 {
    if let Some(code) = status.exit_status() {
        code as u8
    } else if let Some(sig) = status.terminating_signal() {
        128u8.wrapping_add(sig as u8)
    } else {
        1
    }
}

/// Registers the signals an init or `run` passes on, before its child
/// starts (none is lost in between). It also starts async-io's reactor
/// thread, which must happen before `unshare(CLONE_NEWPID)`: after it, the
/// kernel refuses new threads (EINVAL).
fn signals() -> std::io::Result<Signals> {
    Signals::new(FORWARDED)
}

/// Passes signals on to `child` and waits for it. With `reap_all`, reaps
/// every child (an init's orphans) too.
fn supervise(
    mut signals: Signals,
    child: std::process::Child,
    reap_all: bool,
) -> std::io::Result<ExitCode> {
    let pid = Pid::from_raw(child.id() as i32).expect("a child pid");
    async_io::block_on(async {
        loop {
            // reap first: the child may have ended before the first signal
            loop {
                let waited = if reap_all {
                    rustix::process::waitpid(None, WaitOptions::NOHANG)
                } else {
                    rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)
                };
                match waited {
                    Ok(Some((p, status))) if p == pid => {
                        return Ok(ExitCode::from(exit_code(status)));
                    }
                    Ok(Some(_)) => continue, // an orphan, reaped
                    Ok(None) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            match signals.next().await {
                Some(Ok(Signal::Child)) | None => {}
                Some(Ok(signal)) => {
                    let sig = rustix::process::Signal::from_named_raw(signal as i32);
                    if let Some(sig) = sig {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(e)) => return Err(e),
            }
        }
    })
}

/// `selfdump run -- CMD ARGS`: its own failures exit 125 (see `main`).
pub fn run(program: OsString, args: Vec<OsString>) -> Res<ExitCode> {
    let signals = signals()?;
    // Only this thread's children go in the new namespace.
    // SAFETY: only this thread starts processes from here on.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) }.map_err(
        |e| format!("cannot make a pid namespace ({e}): `selfdump run` needs root (CAP_SYS_ADMIN)"),
    )?;
    let mut init = Command::new("/proc/self/exe");
    init.arg("__init").arg("--").arg(&program).args(&args);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        init.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let init = init
        .spawn()
        .map_err(|e| format!("cannot start the namespace's init: {e}"))?;
    Ok(supervise(signals, init, false)?)
}

/// `selfdump __init -- CMD ARGS`: pid 1 of the namespace. CMD not found
/// exits 127, found but not executable 126, as a shell says it; `run`
/// passes the code on.
pub fn init(program: OsString, args: Vec<OsString>) -> Res<ExitCode> {
    // what `ps` and `selfdump inspect` show for pid 1, rather than the
    // `exe` of `/proc/self/exe`
    let _ = rustix::thread::set_name(c"selfdump-init");
    let signals = signals()?;
    let child = Command::new(&program).args(&args).spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        let message = format!("cannot start {}: {e}", program.to_string_lossy());
        Exit { code, message }
    })?;
    Ok(supervise(signals, child, true)?)
}

pub(crate) const USAGE: &str = "\
selfdump run: run a program in a pid namespace of its own

USAGE: selfdump run -- CMD [ARGS]

Starts `selfdump __init` as pid 1 of a new pid namespace, leader of a session
of its own, and CMD as its child. The init passes SIGTERM, SIGINT, SIGHUP,
SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH and SIGALRM on to CMD, reaps orphans,
and exits with CMD's status (128+N if a signal N ended it); so does this
command, which passes the same signals on to the init. When CMD calls
selfdump::checkpoint(), the service dumps the whole namespace, and the
images restore as many copies at once (`selfdump restore --copies N`).

SIGKILL to this command does not end the namespace (no parent-death signal
is set: a restored copy's init would get it when CRIU exits); SIGKILL the
init (this command's child) for that. Needs root (CAP_SYS_ADMIN). The
namespace shares the host's /proc: inside
it, getpid() is the namespace's number (CMD is pid 3) while /proc/<pid> is
the host's; read /proc/self, not /proc/<getpid()>.

EXIT CODES: CMD's own status, or 128+N if a signal N ended it; 127 if CMD
was not found, 126 if it could not be executed; 125 if `selfdump run`
itself failed (not root, a usage error), as env and podman do.";

/// `selfdump run -- CMD ARGS` and the init it starts (`__init`).
pub(crate) fn run_cmd(command: &str, mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut words: Vec<std::ffi::OsString> = Vec::new();
    while let Some(arg) = parser.next()? {
        if words.is_empty() && help_requested(&arg, USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Value(v) => {
                // the program and everything after it, verbatim
                words.push(v);
                words.extend(parser.raw_args()?);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    if words.is_empty() {
        return Err(usage("which program? selfdump run -- CMD [ARGS]"));
    }
    let program = words.remove(0);
    if command == "run" {
        run(program, words)
    } else {
        init(program, words)
    }
}
