//! `selfdump serve` in a process of its own: a service that can be killed
//! for real (SIGKILL: no destructor runs) or starved of fds, whose log
//! (`RUST_LOG=info`) the attack reads. Dropping it stops it as systemd
//! would (SIGTERM, then it drains).

use crate::common::Guarded;
use crate::common::*;
use crate::support::{poll_until, reap_orphaned_criu_helpers};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct ServeProcess {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl ServeProcess {
    /// Starts `selfdump serve` on `socket` (`extra` arguments; `nofile`:
    /// its fd limit, soft and hard), its log in `log`, once it serves.
    pub fn start(socket: &Path, log: &Path, extra: &[&str], nofile: Option<u64>) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(selfdump_bin());
        cmd.args(["serve", "--socket-mode", "666", "--socket"])
            .arg(socket)
            .arg("--criu")
            .arg(criu().path)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = rustix::process::Rlimit {
                        current: Some(limit),
                        maximum: Some(limit),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                        .map_err(Into::into)
                });
            }
        }
        let serve = Self {
            child: Some(cmd.spawn_guarded().unwrap()),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
            if read(log).contains("serving on") {
                return Ok(());
            }
            Err(format!("selfdump serve never served:\n{}", read(log)))
        });
        serve
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn assert_running(&mut self) {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "selfdump serve exited ({status:?}):\n{}",
            read(&self.log)
        );
    }

    /// SIGKILLs it and reaps it: it was killed by that signal, for
    /// certain (the status says so), with no chance to clean up. Returns
    /// the status and its CRIU children, which come to this process (a
    /// subreaper): see [`reap_when_done`].
    pub fn kill9(&mut self) -> (ExitStatus, Vec<i32>) {
        let mut child = self.child.take().unwrap();
        let criu: Vec<i32> = crate::common::children_of(child.id() as i32)
            .into_iter()
            .filter(|(_, _, comm)| comm == "criu")
            .map(|(pid, ..)| pid)
            .collect();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "selfdump serve ended otherwise: {status}"
        );
        (status, criu)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        reap_orphaned_criu_helpers();
    }
}

/// Waits for `pid` (a CRIU of a killed service, reparented to this
/// process, a subreaper) to end by itself, and reaps it.
pub fn reap_when_done(pid: i32) {
    use rustix::process::{Pid, WaitOptions, waitpid};
    let p = Pid::from_raw(pid).unwrap();
    poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
        let _ = waitpid(Some(p), WaitOptions::NOHANG);
        reap_orphaned_criu_helpers();
        match process_state(pid) {
            None => Ok(()),
            state => Err(format!("pid {pid} still there ({state:?})")),
        }
    });
}
