use super::DUMP_LOG;
use super::rpc::{self, CriuOpts, CriuReq, CriuResp, req_type};
use crate::proto::DumpOptions;
use async_io::{Async, Timer};
use futures_lite::FutureExt;
use prost::Message;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

/// Held for reading while a child is forked and exec'd, and for writing while
/// a caller's connection is closed: a fork in progress holds copies of every
/// fd, and a copy of the caller's connection alive at the freeze would make
/// CRIU see a live external socket.
static FORK_GUARD: RwLock<()> = RwLock::new(());

/// Runs `f` so that no child is between fork and exec meanwhile.
pub(crate) fn without_forks<T>(f: impl FnOnce() -> T) -> T {
    let _guard = FORK_GUARD.write().unwrap_or_else(|e| e.into_inner());
    f()
}

/// How to run CRIU.
#[derive(Debug, Clone)]
pub struct Criu {
    /// Path of the `criu` binary.
    pub path: PathBuf,
    /// CRIU log verbosity (0–4).
    pub log_level: i32,
}

impl Default for Criu {
    fn default() -> Self {
        Self {
            path: PathBuf::from("criu"),
            log_level: 4,
        }
    }
}

/// One dump to run.
#[derive(Debug)]
pub struct DumpSpec<'a> {
    /// Root of the tree to dump.
    pub pid: i32,
    /// Directory CRIU writes into (resolved by CRIU through `/proc/<service>/fd/N`).
    pub images_dir: BorrowedFd<'a>,
    /// The caller's options.
    pub options: DumpOptions,
    /// The caller does not lead its session.
    pub shell_job: bool,
}

/// What the service does while CRIU holds the tree frozen.
pub trait DumpHooks {
    /// The tree is frozen and CRIU has not collected its sockets yet
    /// (CRIU's `query-ext-files` notification): the caller's connection
    /// must be closed here. A veto makes CRIU resume the tree and fail.
    fn frozen(&mut self) -> impl Future<Output = FrozenVerdict>;

    /// The images are written and flushed; the tree is still frozen and
    /// CRIU next resumes or ends it (`post-dump`). A veto makes CRIU resume
    /// it and fail the dump.
    fn images_written(&mut self) -> impl Future<Output = FrozenVerdict>;
}

/// What a successful dump cost the service itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dumped {
    /// Time CRIU waited for the service while the tree was frozen: from
    /// receiving each notification to sending its answer (hooks included).
    pub service_frozen: Duration,
}

/// What a hook decided.
#[derive(Debug)]
pub enum FrozenVerdict {
    /// Let CRIU go on dumping.
    Proceed,
    /// Abort the dump (CRIU resumes the tree), for this reason.
    Veto(String),
}

/// Why a dump did not succeed.
#[derive(Debug)]
pub enum EngineError {
    /// `criu swrk` could not be started or spoken to.
    Io(io::Error),
    /// CRIU broke its protocol.
    Protocol(String),
    /// CRIU reported failure (its first error message, if any).
    Failed(Option<String>),
    /// The freeze hook refused the frozen tree.
    Vetoed(String),
    /// The dump took longer than allowed and CRIU was killed.
    TimedOut(Duration),
    /// CRIU died in the middle of the dump (killed, or it crashed).
    Died,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "could not run criu: {e}"),
            Self::Protocol(e) => write!(f, "criu broke its RPC protocol: {e}"),
            Self::Failed(Some(m)) => write!(f, "criu dump failed: {m}"),
            Self::Failed(None) => write!(f, "criu dump failed"),
            Self::Vetoed(why) => write!(f, "dump refused after the freeze: {why}"),
            Self::TimedOut(d) => {
                write!(f, "dump exceeded its time limit of {d:?}; criu was killed")
            }
            Self::Died => write!(
                f,
                "criu died in the middle of the dump; the process was left running"
            ),
        }
    }
}

impl From<io::Error> for EngineError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A started `criu swrk` child, on a seqpacket socket, serving one request.
///
/// [`Criu::dump`] starts one per dump. Starting one ahead of time saves the
/// exec and CRIU's start-up, which `benches/checkpoint/workers.rs`
/// measures; the server keeps some ready in a [`WorkerPool`](super::WorkerPool)
/// ([`Builder::warm_workers`](crate::server::Builder::warm_workers)).
///
/// ```no_run
/// # async_io::block_on(async {
/// use selfdump::server::engine::{Criu, Worker};
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
    log_level: i32,
}

impl Worker {
    /// Starts `criu swrk`; it waits for its one request.
    pub fn start(criu: &Criu) -> io::Result<Self> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let child_fd: RawFd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(&criu.path);
        cmd.arg("swrk").arg(child_fd.to_string());
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
            .kill_on_drop(true);
        let child = {
            let _forking = FORK_GUARD.read().unwrap_or_else(|e| e.into_inner());
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
        })
    }

    async fn send(&self, req: &CriuReq) -> io::Result<()> {
        let buf = req.encode_to_vec();
        self.sock
            .write_with(|s| Ok(rustix::net::send(s, &buf, SendFlags::NOSIGNAL)?))
            .await?;
        Ok(())
    }

    async fn recv(&self) -> Result<CriuResp, EngineError> {
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

    async fn ack(&self, ok: bool) -> io::Result<()> {
        self.send(&CriuReq {
            r#type: req_type::NOTIFY,
            notify_success: Some(ok),
            ..Default::default()
        })
        .await
    }

    /// Whether the child still runs (a dead one is reaped here).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_status(), Ok(None))
    }

    /// Closes the channel and reaps the child; `kill` first when CRIU may
    /// still be running (time limit, protocol error).
    pub(super) async fn finish(mut self, kill: bool) {
        if kill {
            // CRIU and the helpers it forked (the caller's tree is in no
            // group of CRIU's)
            let group = rustix::process::Pid::from_raw(self.child.id() as i32);
            if group.is_none_or(|g| {
                rustix::process::kill_process_group(g, rustix::process::Signal::KILL).is_err()
            }) {
                let _ = self.child.kill();
            }
        }
        drop(self.sock);
        let _ = self.child.status().await;
    }
}

impl Worker {
    /// Dumps `spec.pid`'s tree, calling `hooks` while CRIU holds it frozen;
    /// kills CRIU if it takes longer than `timeout`.
    pub async fn dump(
        self,
        spec: &DumpSpec<'_>,
        timeout: Duration,
        hooks: &mut impl DumpHooks,
    ) -> Result<Dumped, EngineError> {
        let started = std::time::Instant::now();
        let run = self.run_dump(spec, hooks, started);
        let limit = async {
            Timer::after(timeout).await;
            Err(EngineError::TimedOut(timeout))
        };
        let result = run.or(limit).await;
        let criu_may_run = matches!(
            result,
            Err(EngineError::TimedOut(_)
                | EngineError::Io(_)
                | EngineError::Protocol(_)
                | EngineError::Died)
        );
        self.finish(criu_may_run).await;
        log::debug!(
            "criu swrk for pid {} reaped at {:?}",
            spec.pid,
            started.elapsed()
        );
        result
    }

    async fn run_dump(
        &self,
        spec: &DumpSpec<'_>,
        hooks: &mut impl DumpHooks,
        started: std::time::Instant,
    ) -> Result<Dumped, EngineError> {
        let opts = CriuOpts {
            images_dir_fd: spec.images_dir.as_fd().as_raw_fd(),
            pid: Some(spec.pid),
            leave_running: Some(spec.options.leave_running),
            ext_unix_sk: Some(spec.options.ext_unix_sk),
            tcp_established: Some(spec.options.tcp_established),
            shell_job: Some(spec.shell_job),
            file_locks: Some(spec.options.file_locks),
            log_level: Some(self.log_level),
            log_file: Some(DUMP_LOG.into()),
            notify_scripts: Some(true),
        };
        self.send(&CriuReq {
            r#type: req_type::DUMP,
            opts: Some(opts),
            ..Default::default()
        })
        .await?;
        let mut frozen = false;
        let mut veto = None;
        let mut dumped = Dumped::default();
        loop {
            let resp = self.recv().await?;
            match resp.r#type {
                req_type::NOTIFY => {
                    let script = resp.notify.and_then(|n| n.script).unwrap_or_default();
                    log::debug!(
                        "criu notification {script:?} for pid {} at {:?}",
                        spec.pid,
                        started.elapsed()
                    );
                    let answering = std::time::Instant::now();
                    let verdict = match script.as_str() {
                        "query-ext-files" if !frozen => {
                            frozen = true;
                            hooks.frozen().await
                        }
                        "post-dump" if frozen && veto.is_none() => hooks.images_written().await,
                        _ => FrozenVerdict::Proceed,
                    };
                    if let FrozenVerdict::Veto(why) = verdict {
                        veto.get_or_insert(why);
                        self.ack(false).await?;
                    } else {
                        self.ack(true).await?;
                    }
                    if frozen {
                        dumped.service_frozen += answering.elapsed();
                    }
                }
                req_type::DUMP => {
                    log::debug!(
                        "criu result for pid {} at {:?}",
                        spec.pid,
                        started.elapsed()
                    );
                    if let Some(why) = veto {
                        return Err(EngineError::Vetoed(why));
                    }
                    if !frozen && resp.success {
                        return Err(EngineError::Protocol(
                            "criu finished without the query-ext-files notification (criu < 3.19?)"
                                .into(),
                        ));
                    }
                    return if resp.success {
                        Ok(dumped)
                    } else {
                        Err(EngineError::Failed(resp.cr_errmsg))
                    };
                }
                other => {
                    return Err(EngineError::Protocol(format!(
                        "unexpected response type {other}"
                    )));
                }
            }
        }
    }
}

impl Criu {
    /// Dumps `spec.pid`'s tree with a freshly started [`Worker`], calling
    /// `hooks` while CRIU holds it frozen.
    pub async fn dump(
        &self,
        spec: &DumpSpec<'_>,
        timeout: Duration,
        hooks: &mut impl DumpHooks,
    ) -> Result<Dumped, EngineError> {
        let started = std::time::Instant::now();
        let worker = Worker::start(self)?;
        log::debug!(
            "criu swrk for pid {} started in {:?}",
            spec.pid,
            started.elapsed()
        );
        worker.dump(spec, timeout, hooks).await
    }

    /// Asks CRIU for its version over RPC: (major, minor, sublevel).
    pub async fn version(&self) -> Result<(i32, i32, i32), EngineError> {
        let resp = self
            .ask(CriuReq {
                r#type: req_type::VERSION,
                ..Default::default()
            })
            .await?;
        match resp.version {
            Some(v) if resp.success => {
                Ok((v.major_number, v.minor_number, v.sublevel.unwrap_or(0)))
            }
            _ => Err(EngineError::Failed(resp.cr_errmsg)),
        }
    }

    /// Whether CRIU and the kernel can track memory changes (soft-dirty
    /// bits), which iterative pre-dumps need. Asked once per process.
    pub async fn can_track_memory(&self) -> bool {
        static ANSWER: async_lock::OnceCell<bool> = async_lock::OnceCell::new();
        *ANSWER
            .get_or_init(|| async { self.supports_mem_track().await.unwrap_or(false) })
            .await
    }

    /// Asks CRIU (`FEATURE_CHECK`) whether memory change tracking works here.
    pub async fn supports_mem_track(&self) -> Result<bool, EngineError> {
        let resp = self
            .ask(CriuReq {
                r#type: req_type::FEATURE_CHECK,
                features: Some(rpc::CriuFeatures {
                    mem_track: Some(true),
                }),
                ..Default::default()
            })
            .await?;
        Ok(resp.success && resp.features.and_then(|f| f.mem_track).unwrap_or(false))
    }

    /// One request to a fresh `criu swrk`, and its answer.
    async fn ask(&self, req: CriuReq) -> Result<CriuResp, EngineError> {
        let swrk = Worker::start(self)?;
        let answer = async {
            swrk.send(&req).await?;
            swrk.recv().await
        }
        .await;
        swrk.finish(answer.is_err()).await;
        answer
    }
}
