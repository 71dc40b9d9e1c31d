//! One `criu swrk` child: started (as root, or as a user), spoken to over
//! its seqpacket socket, and finished. The dump it serves is `dump.rs`'s.

use super::Criu;
use super::error::EngineError;
use super::forks::FORK_GUARD;
use super::rpc::{CriuReq, CriuResp, req_type};
use super::run_as::{DUMP_CAPS, Keep};
use crate::server::caller::credentials::Credentials;
use async_io::{Async, Timer};
use futures_lite::FutureExt;
use prost::Message;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

/// How long CRIU gets to abandon a dump by itself before it is killed.
const ABANDON_GRACE: Duration = Duration::from_secs(10);

/// A started `criu swrk` child, on a seqpacket socket, serving one request.
///
/// [`Criu::dump`] starts one per dump. Starting one ahead of time saves the
/// exec and CRIU's start-up, which `benches/checkpoint/workers.rs`
/// measures; the server keeps some ready in a pool
/// ([`Builder::warm_workers`](crate::server::Builder::warm_workers)).
///
/// ```no_run
/// # async_io::block_on(async {
/// use selfdump::server::{Criu, internals::Worker};
/// let worker = Worker::start(&Criu::default())?;
/// // ... later, worker.dump(&spec, timeout, &mut hooks).await
/// # drop(worker);
/// # Ok::<(), std::io::Error>(())
/// # });
/// ```
#[derive(Debug)]
pub struct Worker {
    sock: Async<OwnedFd>,
    child: async_process::Child,
    pub(super) log_level: i32,
    /// Set when CRIU runs as a user (see [`Worker::start_as`]).
    pub(super) as_user: Option<AsUser>,
}

/// A CRIU that runs as a user: the fd number at which it inherited the
/// directory it dumps into.
#[derive(Debug, Clone, Copy)]
pub(super) struct AsUser {
    pub(super) images_dir: Option<RawFd>,
}

impl Worker {
    /// Starts `criu swrk` as root (the service's own rights); it waits for
    /// its one request.
    pub fn start(criu: &Criu) -> io::Result<Self> {
        Self::spawn(criu, None, |_, _| {})
    }

    /// Starts `criu swrk` as `user`, holding [`DUMP_CAPS`] only, in
    /// CRIU's unprivileged mode (see the module docs of
    /// [`engine`](super)). It inherits `images_dir`, the one directory it
    /// may dump into, and finds CRIU's kernel-feature cache for
    /// unprivileged runs in `runtime_dir` (see [`kdat`](super::kdat)).
    pub fn start_as(
        criu: &Criu,
        user: &Credentials,
        images_dir: Option<BorrowedFd<'_>>,
        runtime_dir: Option<&std::path::Path>,
    ) -> io::Result<Self> {
        let as_user = AsUser {
            images_dir: images_dir.map(|fd| fd.as_raw_fd()),
        };
        Self::spawn(criu, Some(as_user), |cmd, channel| {
            let fds: Vec<BorrowedFd<'_>> = [Some(channel)]
                .into_iter()
                .chain([images_dir])
                .flatten()
                .collect();
            user.apply(
                cmd,
                Keep {
                    caps: DUMP_CAPS,
                    confine: true,
                    fds: &fds,
                    runtime_dir,
                },
            );
        })
    }

    /// Starts `criu swrk` on one end of a new socketpair, after `configure`
    /// had its say on the command (given the end CRIU inherits).
    fn spawn(
        criu: &Criu,
        as_user: Option<AsUser>,
        configure: impl FnOnce(&mut std::process::Command, BorrowedFd<'_>),
    ) -> io::Result<Self> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let child_fd: RawFd = theirs.as_raw_fd();
        let mut cmd = criu.command();
        cmd.arg("swrk").arg(child_fd.to_string());
        configure(&mut cmd, theirs.as_fd());
        // SAFETY: the closure only makes raw fcntl and setpgid calls, which
        // are async-signal-safe, on an fd that exists in the child.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(child_fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                // A group of its own: a Ctrl-C meant for the service does
                // not kill CRIU mid-dump, and a kill reaches CRIU's helpers.
                rustix::process::setpgid(None, None)?;
                Ok(())
            });
        }
        let mut cmd = async_process::Command::from(cmd);
        // again: async-process's `From` drops the std command's stdio choice
        // (the child would inherit the service's stdout and stderr)
        cmd.stdin(async_process::Stdio::null())
            .stdout(async_process::Stdio::null())
            .stderr(async_process::Stdio::null())
            // not killed when dropped (a server future dropped mid-dump):
            // its channel closes and it abandons the dump by itself, see
            // `finish`
            .kill_on_drop(false);
        let child = {
            let _forking = FORK_GUARD
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cmd.spawn().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", criu.path.display()),
                )
            })?
        };
        drop(theirs);
        Ok(Self {
            sock: Async::new(ours)?,
            child,
            log_level: criu.log_level,
            as_user,
        })
    }

    /// The pid of the `criu swrk` child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) async fn send(&self, req: &CriuReq) -> io::Result<()> {
        let buf = req.encode_to_vec();
        self.sock
            .write_with(|s| Ok(rustix::net::send(s, &buf, SendFlags::NOSIGNAL)?))
            .await?;
        Ok(())
    }

    pub(super) async fn recv(&self) -> Result<CriuResp, EngineError> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = self
            .sock
            .read_with(|s| Ok(rustix::net::recv(s, &mut buf, rustix::net::RecvFlags::empty())?.0))
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionReset => EngineError::Died,
                _ => EngineError::Io(e),
            })?;
        if n == 0 {
            return Err(EngineError::Died);
        }
        CriuResp::decode(&buf[..n]).map_err(|e| EngineError::Protocol(e.to_string()))
    }

    pub(super) async fn ack(&self, ok: bool) -> io::Result<()> {
        self.send(&CriuReq {
            r#type: req_type::NOTIFY,
            notify_success: Some(ok),
            ..Default::default()
        })
        .await
    }

    /// One request other than a dump, and its answer.
    pub(super) async fn ask(self, req: CriuReq) -> Result<CriuResp, EngineError> {
        let answer = async {
            self.send(&req).await?;
            self.recv().await
        }
        .await;
        self.finish(answer.is_err()).await;
        answer
    }

    /// Whether the child still runs (a dead one is reaped here).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_status(), Ok(None))
    }

    /// Closes the channel and reaps the child. With `abandon` (time limit,
    /// protocol error, CRIU may still be dumping), CRIU is not killed at
    /// once: killing it while its parasite code runs inside the caller would
    /// kill the caller too. It notices the closed channel at its next
    /// notification, takes its parasite out, lets the tree run and exits;
    /// only if it has not within [`ABANDON_GRACE`], it is killed, with the
    /// helpers it forked (its process group; the caller's tree is in none of
    /// CRIU's).
    pub(super) async fn finish(mut self, abandon: bool) -> Option<std::process::ExitStatus> {
        drop(self.sock);
        if abandon {
            let exited = async {
                let _ = self.child.status().await;
                true
            }
            .or(async {
                Timer::after(ABANDON_GRACE).await;
                false
            })
            .await;
            if exited {
                return self.child.status().await.ok();
            }
            log::warn!(
                "criu {} did not stop within {ABANDON_GRACE:?} of its dump being abandoned; killing it",
                self.child.id()
            );
            if !kill_group(self.child.id()) {
                let _ = self.child.kill();
            }
        }
        self.child.status().await.ok()
    }
}

/// Kills the process group `pid` leads (every CRIU the service starts leads
/// its own, with the helpers it forks): whether the signal was sent.
pub(crate) fn kill_group(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32).is_some_and(|group| {
        rustix::process::kill_process_group(group, rustix::process::Signal::KILL).is_ok()
    })
}
