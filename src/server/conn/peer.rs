//! Who is on the other end of a connection, as the kernel says.

use rustix::event::{PollFd, PollFlags, poll};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// A connected caller: its credentials and a pidfd that pins its identity.
///
/// The pid is never taken from a request. The pidfd comes from
/// `SO_PEERPIDFD`: while [`Peer::is_alive`] holds, the pid cannot have been
/// recycled, so anything read through `/proc/<pid>` before that check was
/// read about the caller. A caller that exits and whose pid goes to another
/// process before the service acts is refused ("the caller exited"), and
/// the process now holding the pid is never touched (`tests/adversarial/identity.rs`,
/// `recycled_pid`).
///
/// Kernels without `SO_PEERPIDFD` (before Linux 6.5): there is no silent
/// fallback. Every caller is refused with a message naming the kernel
/// requirement. The obvious fallback, `pidfd_open(SO_PEERCRED pid)` after
/// the accept, would reopen the race the pidfd exists to close: between
/// `connect()` and `pidfd_open()` the caller may exit and its pid go to
/// another process, which would then be dumped in its place.
#[derive(Debug)]
pub struct Peer {
    /// Process id at connect time.
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// A pidfd for the caller.
    pub pidfd: OwnedFd,
}

impl Peer {
    /// Reads the peer of a connected stream from the kernel.
    pub fn of(stream: &UnixStream) -> io::Result<Self> {
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
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
            pidfd,
        })
    }

    /// True while the caller has not exited, so its pid still names it.
    pub fn is_alive(&self) -> bool {
        is_alive(&self.pidfd)
    }

    /// The caller's session id, read from `/proc/<pid>/stat`: 0 when its
    /// session leader is outside the service's pid namespace (`getsid`
    /// reports the same 0, which rustix's `Pid` cannot hold).
    pub fn session_id(&self) -> io::Result<i32> {
        let stat = self.read_proc("stat")?;
        crate::procfs::field(&stat, crate::procfs::SESSION).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat")
        })
    }

    /// Reads `/proc/<pid>/<file>` of the caller; fails if the caller exited
    /// meanwhile (the pid might name another process by now).
    pub fn read_proc(&self, file: &str) -> io::Result<String> {
        let text = crate::procfs::read_of(self.pid, file)?;
        self.checked(text)
    }

    fn checked<T>(&self, value: T) -> io::Result<T> {
        self.alive_or("the caller exited")
            .map(|()| value)
            .map_err(|m| io::Error::new(io::ErrorKind::NotFound, m))
    }

    /// The one "is the caller still there" check: `Err(gone)` once the
    /// process behind this peer's pidfd has exited (its pid may then name
    /// another process), so whatever was read about the pid before holds.
    pub(crate) fn alive_or(&self, gone: &str) -> Result<(), String> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(gone.to_owned())
        }
    }

    /// Whether `other` is this same process (same pid, and this pidfd's
    /// process still alive, so the pid was not recycled).
    pub fn is_same_process(&self, other: &Peer) -> bool {
        self.pid == other.pid && self.is_alive()
    }
}

/// True while the process behind `pidfd` has not exited.
pub(crate) fn is_alive(pidfd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    match poll(
        &mut fds,
        Some(&rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    ) {
        Ok(0) => true,
        Ok(_) => !fds[0]
            .revents()
            .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR),
        Err(_) => false,
    }
}

/// The peer's `SO_PEERCRED`. Through nix, not rustix: rustix's `UCred`
/// holds a non-zero `Pid`, but the kernel reports pid 0 for a peer in a pid
/// namespace this process cannot see.
pub(crate) fn credentials(stream: &UnixStream) -> io::Result<nix::sys::socket::UnixCredentials> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)
}
