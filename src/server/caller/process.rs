//! A process the service acts on, pinned so that its pid cannot name
//! another process behind the service's back.

use crate::procfs::{self, PROC, ProcFs};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// A process held by a pidfd. While [`Process::is_alive`] holds, its pid
/// has not been recycled, so anything read through `/proc/<pid>` before
/// that check was read about this process.
#[derive(Debug)]
pub(crate) struct Process {
    /// Its pid, in the service's pid namespace.
    pub(crate) pid: i32,
    /// A pidfd for it.
    pub(crate) pidfd: OwnedFd,
}

impl Process {
    /// Pins the process `pid` now. Only as good as the moment: the pid
    /// must be known to name the process meant (checked again after).
    pub(crate) fn open(pid: i32) -> io::Result<Self> {
        let id = Pid::from_raw(pid).ok_or_else(|| io::Error::other(format!("bad pid {pid}")))?;
        let pidfd = pidfd_open(id, PidfdFlags::empty())?;
        Ok(Self { pid, pidfd })
    }

    /// Another handle on the same process.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            pid: self.pid,
            pidfd: self.pidfd.try_clone()?,
        })
    }

    /// True while the process has not exited, so its pid still names it.
    pub(crate) fn is_alive(&self) -> bool {
        is_alive(&self.pidfd)
    }

    /// The one "is it still there" check: `Err(gone)` once the process has
    /// exited (its pid may then name another process), so whatever was
    /// read about the pid before holds.
    pub(crate) fn alive_or(&self, gone: &str) -> Result<(), String> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(gone.to_owned())
        }
    }

    /// Reads `/proc/<pid>/<file>` of the process; fails if it exited
    /// meanwhile (the pid might name another process by now).
    pub(crate) fn read(&self, file: &str) -> io::Result<String> {
        self.read_in(PROC, file)
    }

    /// [`Process::read`] from `proc`.
    pub(crate) fn read_in(&self, proc: ProcFs<'_>, file: &str) -> io::Result<String> {
        let text = proc.read(self.pid, file)?;
        self.alive_or("the caller exited")
            .map(|()| text)
            .map_err(|m| io::Error::new(io::ErrorKind::NotFound, m))
    }

    /// Its session id, read from `/proc/<pid>/stat`: 0 when its session
    /// leader is outside the service's pid namespace (`getsid` reports the
    /// same 0, which rustix's `Pid` cannot hold).
    pub(crate) fn session_id(&self) -> io::Result<i32> {
        self.session_id_in(PROC)
    }

    /// [`Process::session_id`] from `proc`.
    pub(crate) fn session_id_in(&self, proc: ProcFs<'_>) -> io::Result<i32> {
        let stat = self.read_in(proc, "stat")?;
        procfs::field(&stat, procfs::SESSION).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat")
        })
    }

    /// What identifies it for its whole life, read while its pidfd shows
    /// it alive.
    pub(crate) fn identity(&self) -> io::Result<Identity> {
        let stat = self.read("stat")?;
        let start = procfs::field(&stat, procfs::START_TIME).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat")
        })?;
        let ino = rustix::fs::fstat(self.pidfd.as_fd())?.st_ino;
        Ok(Identity {
            pid: self.pid,
            start,
            ino,
        })
    }
}

/// What identifies a process for its whole life without holding an fd:
/// its pid, its start time and the inode of its pidfd (pidfs, Linux 6.9+,
/// gives each process its own; on older kernels every pidfd shares one,
/// and the pid and start time decide alone). A later process with the
/// same pid has a later start time and another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) pid: i32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    start: u64,
    /// Inode of a pidfd of the process.
    ino: u64,
}

impl Identity {
    /// Whether the process still runs: a process with its pid and start
    /// time exists (a zombie counts as gone).
    pub(crate) fn is_alive(&self) -> bool {
        let Ok(stat) = PROC.read(self.pid, "stat") else {
            return false;
        };
        procfs::field::<u64>(&stat, procfs::START_TIME) == Some(self.start)
            && procfs::field::<char>(&stat, procfs::STATE).is_some_and(|s| s != 'Z' && s != 'X')
    }
}

/// True while the process behind `pidfd` has not exited.
fn is_alive(pidfd: &impl AsFd) -> bool {
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
