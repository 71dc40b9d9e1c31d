//! Who is on the other end of a connection, as the kernel says.

use crate::server::caller::process::Process;
use std::io;
use std::os::unix::net::UnixStream;

/// A connected caller: its uid at connect time and its process, pinned.
///
/// The pid is never taken from a request. The pidfd comes from
/// `SO_PEERPIDFD`: while [`Process::is_alive`] holds, the pid cannot have
/// been recycled, so anything read through `/proc/<pid>` before that check
/// was read about the caller. A caller that exits and whose pid goes to
/// another process before the service acts is refused ("the caller
/// exited"), and the process now holding the pid is never touched
/// (`tests/adversarial/identity.rs`, `recycled_pid`).
///
/// Kernels without `SO_PEERPIDFD` (before Linux 6.5): there is no silent
/// fallback. Every caller is refused with a message naming the kernel
/// requirement. The obvious fallback, `pidfd_open(SO_PEERCRED pid)` after
/// the accept, would reopen the race the pidfd exists to close: between
/// `connect()` and `pidfd_open()` the caller may exit and its pid go to
/// another process, which would then be dumped in its place.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Effective uid at connect time.
    pub(crate) uid: u32,
    /// The calling process (its pid at connect time, and a pidfd).
    pub(crate) process: Process,
}

impl Peer {
    /// Reads the peer of a connected stream from the kernel.
    pub(crate) fn of(stream: &UnixStream) -> io::Result<Self> {
        let cred = credentials(stream)?;
        if cred.pid() <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the caller is in a pid namespace the service cannot see; \
                 run the service in the caller's pid namespace or an ancestor of it",
            ));
        }
        let pidfd = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd)
            .map_err(|e| {
                // only a kernel without the option is a kernel problem; out
                // of fds or memory is this request's failure alone
                let (kind, hint) = if matches!(
                    e,
                    nix::errno::Errno::ENOPROTOOPT | nix::errno::Errno::EINVAL
                ) {
                    (
                        io::Error::from(e).kind(),
                        "; selfdump needs Linux 6.5 or newer",
                    )
                } else {
                    (io::ErrorKind::ResourceBusy, "; retry later")
                };
                io::Error::new(kind, format!("SO_PEERPIDFD failed ({e}){hint}"))
            })?;
        Ok(Self {
            uid: cred.uid(),
            process: Process {
                pid: cred.pid(),
                pidfd,
            },
        })
    }

    /// The calling process's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.process.pid
    }
}

/// The peer's `SO_PEERCRED`. Through nix, not rustix: rustix's `UCred`
/// holds a non-zero `Pid`, but the kernel reports pid 0 for a peer in a pid
/// namespace this process cannot see.
pub(super) fn credentials(stream: &UnixStream) -> io::Result<nix::sys::socket::UnixCredentials> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)
}
