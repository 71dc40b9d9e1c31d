//! The checkpoint service: listener, peer identity, policy, jobs and the
//! CRIU engine. Embed it with [`Server`], or run `selfdump serve`.
//!
//! ```no_run
//! use selfdump::server::Server;
//! # fn main() -> Result<(), selfdump::server::Error> {
//! let server = Server::builder().socket_mode(0o660).bind("/run/selfdump.sock")?;
//! async_io::block_on(server.run())
//! # }
//! ```

mod adopt;
mod as_caller;
mod builder;
pub mod caps;
pub mod check;
mod check_non_root;
mod commit;
mod config;
mod connection;
pub mod copies;
mod dump;
mod dump_failure;
mod engine;
mod error;
pub mod generation;
pub mod images;
pub mod inspect;
mod jobs;
mod leftovers;
pub mod manifest;
mod outcome;
mod peer;
mod pidns;
mod policy;
mod private_dir;
// the restore work adds modules now: their `pub` items narrow once it merges
#[allow(unreachable_pub)]
pub mod restore;
mod restoring;
mod retention;
mod shared;
mod shutdown;
mod slots;
// the restore work edits it now: its `pub` items narrow once that merges
#[allow(unreachable_pub)]
mod staging;
mod subdir;
pub mod systemd;
mod test_hold;
mod tree;
mod verified_images;

pub use builder::Builder;
pub use config::MAX_KEEP;
pub use engine::{Criu, NonRootFallback, SpawnGuard, spawn_guard};
pub use error::Error;
pub use jobs::{MAX_RESULTS, MAX_RESULTS_PER_UID};
pub use policy::{CallerInfo, Policy};
use shared::Shared;
pub use shutdown::ShutdownHandle;

/// The service's internals, for this crate's benches and tests only: not
/// part of the API, and they change without notice.
#[doc(hidden)]
pub mod internals {
    pub use super::engine::run_as::RunAs;
    pub use super::engine::{
        DumpHooks, DumpSpec, Dumped, EngineError, FrozenVerdict, Worker, kdat, rpc,
    };
}

use async_io::{Async, Timer};
use futures_lite::FutureExt;
use std::future::Future;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/selfdump.sock";

/// The checkpoint service. It has no runtime of its own: [`Server::run`] is
/// a future that serves every connection while it is polled.
#[derive(Debug)]
pub struct Server {
    listener: Async<UnixListener>,
    path: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The socket path, when the server created it.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A handle that stops this server gracefully from another task or
    /// thread (see [`ShutdownHandle`]).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: self.shared.stop.clone(),
        }
    }

    /// Serves until a [`ShutdownHandle`] stops it, or the listening socket
    /// itself is gone (see [`Error::Accept`]). Nothing a client does ends
    /// it: a failing `accept` (out of fds, memory, a connection aborted) is
    /// logged and retried after a short pause.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes or a [`ShutdownHandle`] stops it,
    /// then drains as [`ShutdownHandle`] describes: checkpoint requests are
    /// refused as `ShuttingDown`, the dumps in flight finish and their
    /// callers get their results, then it returns. If the listening socket
    /// is unusable (`EBADF`, `EINVAL`, `ENOTSOCK`: never a client's doing),
    /// it returns that error once the connections in flight have finished;
    /// every other `accept` error is backed off from, never fatal.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let executor = async_executor::Executor::new();
        self.shared.workers.refill();
        let stop = async {
            shutdown.or(self.shared.stop.requested()).await;
            Ok(())
        };
        let serve = async {
            self.accept_loop(&executor)
                .await
                .map(|never| match never {})
        };
        let result = executor.run(serve.or(stop)).await;
        self.shared.stop.request();
        log::info!(
            "shutting down: refusing new checkpoints, waiting for {} connection(s)",
            self.shared.tasks.load(Ordering::SeqCst)
        );
        let drained = async {
            loop {
                // listen first: a change between the look and the wait still wakes us
                let listener = self.shared.changed.listen();
                match self.shared.drain_wait() {
                    None => break,
                    Some(None) => listener.await,
                    Some(Some(at)) => {
                        listener
                            .or(async {
                                Timer::at(at).await;
                            })
                            .await;
                    }
                }
            }
        };
        let keep_accepting = async {
            // Until the drain ends: refuse newcomers, serve expected callers.
            if result.is_ok()
                && let Err(e) = self.accept_loop(&executor).await
            {
                log::warn!("while shutting down: {e}");
            }
            std::future::pending::<()>().await;
        };
        executor.run(drained.or(keep_accepting)).await;
        self.shared.workers.stop().await;
        log::info!("shut down");
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Accepts connections and spawns their tasks on `executor`, until the
    /// listener is gone ([`listener_gone`]); other accept errors are
    /// backed off from ([`AcceptBackoff`]). Once a stop is requested, only callers that may be
    /// coming for a dump's result are served; the others are refused.
    async fn accept_loop(
        &self,
        executor: &async_executor::Executor<'_>,
    ) -> Result<std::convert::Infallible, Error> {
        let mut backoff = AcceptBackoff::default();
        let mut reserve = ReserveFd::new();
        loop {
            // Let the tasks spawned so far run (refusals close their fds at
            // once): a backlog of thousands of connections must not be
            // accepted in one go before any of them is answered. Here, not
            // after the accept: this loop may be dropped at any await, and
            // an accepted connection must reach its task with none between.
            futures_lite::future::yield_now().await;
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) if listener_gone(&e) => return Err(Error::Accept(e)),
                Err(e) => {
                    backoff.log(&e);
                    // out of fds: answer the oldest waiting connection
                    // "busy" rather than leave it (and all behind it) hanging
                    if !reserve.refuse_one(self.listener.get_ref()) {
                        backoff.wait().await;
                    }
                    continue;
                }
            };
            self.spawn_connection(executor, stream);
        }
    }

    /// Gives an accepted connection its task on `executor`: served if the
    /// limits have room for it (and, once a stop is requested, if its
    /// caller may be coming for a dump's result), else refused.
    fn spawn_connection(&self, executor: &async_executor::Executor<'_>, stream: Async<UnixStream>) {
        if self.shared.stop.is_requested() && !self.shared.is_expected(&stream) {
            // Not counted: the drain does not wait for newcomers.
            executor
                .spawn(connection::refuse_shutting_down(stream))
                .detach();
            return;
        }
        let task = self.shared.task();
        let uid_slot = match connection::uid_slot(&self.shared, &stream) {
            Ok(uid_slot) => uid_slot,
            Err(busy) => {
                executor
                    .spawn(async move {
                        connection::refuse_at_accept(stream, busy).await;
                        drop(task);
                    })
                    .detach();
                return;
            }
        };
        // root is not held to the global cap (only to its per-uid one):
        // no flood of other users keeps it out
        let slot = self.shared.connections.try_acquire_arc();
        let root = uid_slot.as_ref().is_some_and(|s| s.uid() == 0);
        if slot.is_none() && !root {
            executor
                .spawn(async move {
                    connection::refuse_busy(stream).await;
                    drop(task);
                })
                .detach();
            return;
        }
        let shared = self.shared.clone();
        executor
            .spawn(async move {
                connection::handle(shared, stream).await;
                drop(slot);
                drop(uid_slot);
                drop(task);
            })
            .detach();
    }
}

/// Whether an `accept` error means the listening socket itself is unusable
/// (closed, not a socket, not listening): only then does the accept loop
/// end. Everything else (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`,
/// `ECONNABORTED`, `EPROTO`, `EPERM`, ...) passes: clients can cause it,
/// and it must not stop the service (the resource rule).
fn listener_gone(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    matches!(errno, Some(Errno::BADF | Errno::INVAL | Errno::NOTSOCK))
}

/// The pause after a failed `accept`: 50 ms, doubling to 1 s while the
/// failures go on, back to none after a success. Without it a listener
/// with a pending connection that cannot be accepted (no fd left) would
/// spin. Logged at most once every 10 s, with the count since.
#[derive(Debug)]
struct AcceptBackoff {
    delay: std::time::Duration,
    failures: u64,
    last_log: Option<std::time::Instant>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            delay: Self::FIRST,
            failures: 0,
            last_log: None,
        }
    }
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(50);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Logs a failure, at most once every [`Self::LOG_EVERY`].
    fn log(&mut self, e: &std::io::Error) {
        self.failures += 1;
        if self
            .last_log
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY)
        {
            log::warn!(
                "accepting a connection failed ({e}; {} time(s) since the last message); \
                 retrying in {:?}{}",
                self.failures,
                self.delay,
                if e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) {
                    " (out of fds: raise LimitNOFILE= / `ulimit -n`)"
                } else {
                    ""
                }
            );
            self.last_log = Some(std::time::Instant::now());
            self.failures = 0;
        }
    }

    /// Waits before the next try, longer each time.
    async fn wait(&mut self) {
        Timer::after(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and
/// returns the new soft limit. `selfdump serve` calls it at start; an
/// embedder should too (or set a high enough limit itself), since
/// systemd's default soft limit of 1024 fds runs out with a few hundred
/// connections and dumps. Idle connections are capped
/// ([`Builder::max_connections`]), and a service that runs out of fds
/// anyway does not stop: it backs off and retries `accept`.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// One fd held in reserve for when `accept` fails for lack of fds
/// (`EMFILE`, `ENFILE`): given up, it makes room to accept the oldest
/// waiting connection and answer it "busy" at once (then it is taken
/// back). Without it, every connection waiting in the backlog (a root
/// caller's among a flood) would hang until fds come free.
#[derive(Debug)]
struct ReserveFd(Option<std::os::fd::OwnedFd>);

impl ReserveFd {
    fn new() -> Self {
        Self(Self::open())
    }

    fn open() -> Option<std::os::fd::OwnedFd> {
        rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
    }

    /// With the reserve fd closed, accepts one connection and answers it
    /// "busy"; whether one was. Never blocks (the listener is non-blocking).
    fn refuse_one(&mut self, listener: &UnixListener) -> bool {
        if self.0.take().is_none() {
            self.0 = Self::open();
            return false;
        }
        let refused = match listener.accept() {
            Ok((stream, _)) => {
                let busy = connection::refusal(
                    crate::proto::RefusalKind::Busy,
                    "the selfdump service is out of file descriptors; retry later",
                );
                let _ = stream.set_nonblocking(true);
                // a fresh socket's buffer holds this small frame whole
                let _ = std::io::Write::write(&mut &stream, &crate::proto::encode_frame(&busy));
                true
            }
            Err(_) => false,
        };
        self.0 = Self::open();
        refused
    }
}
