//! How to run CRIU, what a dump needs, and what can go wrong; the child
//! itself is a [`Worker`].

use super::Worker;
use super::rpc::{self, CriuReq, CriuResp, req_type};
use crate::proto::DumpOptions;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

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

/// Runs `f` so that no child is between fork and exec meanwhile.
pub(crate) fn without_forks<T>(f: impl FnOnce() -> T) -> T {
    let _guard = FORK_GUARD
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    /// CRIU was killed by this signal in the middle of the dump.
    Killed(i32),
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
                write!(
                    f,
                    "dump exceeded its time limit of {d:?}; it was abandoned and the process runs on"
                )
            }
            Self::Died => write!(
                f,
                "criu died in the middle of the dump; the process was left running"
            ),
            Self::Killed(signal) => write!(
                f,
                "criu was killed by signal {signal} ({}) in the middle of the dump; the \
                 process was left running",
                signal_name(*signal)
            ),
        }
    }
}

/// A signal's name, for messages.
fn signal_name(signal: i32) -> String {
    match rustix::process::Signal::from_named_raw(signal) {
        Some(s) => format!("{s:?}")
            .trim_matches('"')
            .replace("Signal::", "SIG"),
        None => format!("signal {signal}"),
    }
}

impl Worker {
    /// Asks this worker for CRIU's version (its one request).
    pub(super) async fn ask_version(self) -> Result<(i32, i32, i32), EngineError> {
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
}

impl From<io::Error> for EngineError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
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
        Worker::start(self)?.ask_version().await
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
        Worker::start(self)?.ask(req).await
    }
}
