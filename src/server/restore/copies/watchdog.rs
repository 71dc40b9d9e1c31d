//! The restore deadline of a round of copies.

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Kills the copies' `criu restore`s still running at the deadline, with
/// what each had restored (its children: a copy's init, whose death ends
/// its namespace). CRIU can hang: 4.1.1 fails a restore whose task exits
/// before CRIU has detached from it ("Unable to detach") and then waits
/// for ever in its clean-up. Each CRIU is held by a pidfd, so a CRIU
/// already reaped is never mistaken for a recycled pid.
pub(super) struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub(super) fn start(after: Duration, criu_pids: Vec<u32>) -> Self {
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let pidfds: Vec<(u32, OwnedFd)> = criu_pids
            .into_iter()
            .filter_map(|pid| {
                let fd = pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()).ok()?;
                Some((pid, fd))
            })
            .collect();
        let flag = fired.clone();
        std::thread::spawn(move || {
            if wait.recv_timeout(after) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return; // every CRIU finished (or the restore gave up first)
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            for (pid, criu) in pidfds {
                // a pidfd reads as ready once its process has exited; until
                // then `pid` (unreaped) is this CRIU's, and so are its children
                let mut poll = [rustix::event::PollFd::new(
                    &criu,
                    rustix::event::PollFlags::IN,
                )];
                let zero = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                if rustix::event::poll(&mut poll, Some(&zero)) != Ok(0) {
                    continue;
                }
                let pid = pid as i32;
                let children: Vec<OwnedFd> = (crate::procfs::PROC.children(pid, pid))
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| pidfd_open(Pid::from_raw(c)?, PidfdFlags::empty()).ok())
                    .collect();
                for child in &children {
                    let _ = pidfd_send_signal(child, Signal::KILL);
                }
                let _ = pidfd_send_signal(&criu, Signal::KILL);
                log::error!(
                    "criu restore (pid {pid}) still running after {after:?}: killed, with the \
                     {} task(s) it had started",
                    children.len()
                );
            }
        });
        Self {
            done: Some(done),
            fired,
        }
    }

    /// Whether the deadline passed and CRIUs were killed.
    pub(super) fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}
