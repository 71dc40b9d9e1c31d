//! No fork while a caller's connection closes: a child between fork and
//! exec holds a copy of every fd of the service, and a copy of the caller's
//! connection alive at the freeze would make CRIU see a live external
//! socket.

use std::sync::RwLock;

/// Held for reading while a child is forked and exec'd, and for writing while
/// a caller's connection is closed: a fork in progress holds copies of every
/// fd, and a copy of the caller's connection alive at the freeze would make
/// CRIU see a live external socket.
pub(super) static FORK_GUARD: RwLock<()> = RwLock::new(());

/// Held while this process spawns a child (from fork to exec); see
/// [`spawn_guard`].
#[derive(Debug)]
#[must_use = "the guard protects the spawn only while it is held"]
pub struct SpawnGuard {
    _held: std::sync::RwLockReadGuard<'static, ()>,
}

/// Hold this while your own code spawns a child process (`fork` to
/// `exec`, e.g. around `std::process::Command::spawn`), in a process that
/// embeds a [`Server`](crate::server::Server) and forks while it serves.
///
/// A fork copies every fd of the process, and the server closes a caller's
/// connection at the freeze so that CRIU records it half-closed: a copy
/// alive in a child between fork and exec would make CRIU see a live
/// external socket and fail the dump. The server's own spawns (CRIU) hold
/// this guard; children spawned without it are safe only if they never run
/// during a dump. Many spawns may hold it at once; a freeze waits for them.
pub fn spawn_guard() -> SpawnGuard {
    SpawnGuard {
        _held: FORK_GUARD
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    }
}

/// Spawns `cmd` holding the [`spawn_guard`] from fork to exec only (never
/// while the child runs: a freeze would wait for it). Every child the
/// service starts goes through here.
pub(crate) fn spawn(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    let _forking = spawn_guard();
    cmd.spawn()
}

/// [`spawn`], then waits for the child's exit and output (stdin null,
/// stdout and stderr captured, as `Command::output` does).
pub(crate) fn output(cmd: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(cmd)?.wait_with_output()
}

/// Runs `f` so that no child is between fork and exec meanwhile.
pub(crate) fn without_forks<T>(f: impl FnOnce() -> T) -> T {
    let _guard = FORK_GUARD
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f()
}
