//! Starting children from a test process that also runs a service.
//!
//! The service closes a caller's connection at the freeze so that CRIU
//! records it half-closed. A child forked by the test process in that
//! instant holds a copy of the service's end until it execs, and CRIU then
//! sees a live external socket and fails that caller's dump ("External
//! socket is used"). The service's own children hold
//! [`selfdump::server::spawn_guard`] from fork to exec; so do the tests'.

use std::io;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// `spawn`, `output` and `status` that hold the service's fork guard from
/// fork to exec (never while the child runs).
pub trait Guarded {
    /// [`Command::spawn`] under the guard.
    fn spawn_guarded(&mut self) -> io::Result<Child>;
    /// [`Command::output`] (stdout and stderr captured), the guard held only
    /// while the child starts.
    fn output_guarded(&mut self) -> io::Result<Output>;
    /// [`Command::status`], the guard held only while the child starts.
    fn status_guarded(&mut self) -> io::Result<ExitStatus>;
}

impl Guarded for Command {
    fn spawn_guarded(&mut self) -> io::Result<Child> {
        let _guard = selfdump::server::spawn_guard();
        self.spawn()
    }

    fn output_guarded(&mut self) -> io::Result<Output> {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_guarded()?
            .wait_with_output()
    }

    fn status_guarded(&mut self) -> io::Result<ExitStatus> {
        self.spawn_guarded()?.wait()
    }
}
