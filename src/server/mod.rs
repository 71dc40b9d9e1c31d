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

pub mod check;
mod connection;
mod dump;
pub mod engine;
mod error;
pub mod images;
mod jobs;
pub mod peer;
pub mod policy;
pub mod restore;
pub mod systemd;
mod tree;

pub use engine::Criu;
pub use error::Error;
pub use policy::{CallerInfo, Policy};

use async_io::{Async, Timer};
use async_lock::Semaphore;
use event_listener::Event;
use futures_lite::FutureExt;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/selfdump.sock";

/// Limits and choices of a [`Server`]. Build it with [`Server::builder`].
///
/// ```no_run
/// use selfdump::server::{Criu, Server};
/// # fn main() -> Result<(), selfdump::server::Error> {
/// let server = Server::builder()
///     .criu(Criu { path: "/usr/local/sbin/criu".into(), log_level: 2 })
///     .admit(|caller| {
///         if caller.uid == 1000 {
///             Ok(())
///         } else {
///             Err(format!("uid {} is not one of this supervisor's users", caller.uid))
///         }
///     })
///     .max_dumps(2)
///     .bind("/run/myinit/selfdump.sock")?;
/// let stop = server.shutdown_handle(); // give it to the signal handler
/// # drop(stop);
/// async_io::block_on(server.run())
/// # }
/// ```
///
/// # The engine
///
/// There is one engine: CRIU driven over its RPC protocol (`criu swrk`, a
/// child of the service), chosen and configured with [`Builder::criu`]
/// (the binary's path and CRIU's log level). There is no engine that runs
/// the `criu dump` command line instead: the service must act while the
/// caller's tree is frozen and before CRIU collects its sockets (check that
/// the frozen tree is still the caller's, tell the caller it is frozen,
/// close its connection so the images hold it half-closed), and only the
/// RPC protocol stops there (its `post-dump`/notify round trips); the
/// command line offers action scripts, which cannot reach the service's
/// connection or veto the dump.
#[derive(Debug, Clone)]
pub struct Builder {
    criu: Criu,
    policy: Policy,
    admit: Option<Admit>,
    max_dumps: usize,
    max_dumps_per_uid: usize,
    max_connections: usize,
    max_connections_per_uid: usize,
    request_timeout: Duration,
    dump_timeout: Duration,
    result_ttl: Duration,
    socket_mode: u32,
    socket_owner: Option<(u32, u32)>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            criu: Criu::default(),
            policy: Policy::root_only(),
            admit: None,
            max_dumps: 8,
            max_dumps_per_uid: 4,
            max_connections: 256,
            max_connections_per_uid: 64,
            request_timeout: Duration::from_secs(5),
            dump_timeout: Duration::from_secs(300),
            result_ttl: Duration::from_secs(600),
            socket_mode: 0o600,
            socket_owner: None,
        }
    }
}

impl Builder {
    /// The engine: how to run CRIU (binary path, log level). See
    /// [the engine](Builder#the-engine) for why CRIU's RPC is the only one.
    pub fn criu(mut self, criu: Criu) -> Self {
        self.criu = criu;
        self
    }
    /// Who may ask (default: root only).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// The embedder's own say on who may checkpoint: `f` sees each
    /// checkpoint request's caller ([`CallerInfo`]: uid, gid, pid and a
    /// pidfd) and returns `Err(why)` to refuse it. The caller then gets a
    /// `NotPermitted` refusal carrying `why` (cut to the protocol's message
    /// limit).
    ///
    /// It runs after every built-in check ([`Builder::policy`], the
    /// caller's dumpability, the images directory), so it only sees
    /// callers the service would otherwise admit, and before any dump
    /// slot is taken. Result queries (a process asking how its dump went)
    /// do not reach it. A caller that exits while `f` runs is refused, so
    /// an `Ok` given about a pid never applies to a process that got that
    /// pid later. A panic in `f` refuses the request.
    ///
    /// `f` runs on the server's executor, inside [`Server::run`]: keep it
    /// quick (a lookup, not I/O), or every connection waits for it.
    pub fn admit<F>(mut self, f: F) -> Self
    where
        F: Fn(&CallerInfo<'_>) -> Result<(), String> + Send + Sync + 'static,
    {
        self.admit = Some(Admit(Arc::new(f)));
        self
    }
    /// Dumps running at once; more are refused as busy (default 8).
    pub fn max_dumps(mut self, n: usize) -> Self {
        self.max_dumps = n.max(1);
        self
    }
    /// Dumps one uid may have running at once, so that one user cannot take
    /// every dump slot; more are refused as busy (default 4).
    pub fn max_dumps_per_uid(mut self, n: usize) -> Self {
        self.max_dumps_per_uid = n.max(1);
        self
    }
    /// Connections open at once; more are refused as busy (default 256).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
    /// Connections one uid may have open at once (default 64): a flood of
    /// idle connections from one user leaves room for the others. More are
    /// refused as busy.
    pub fn max_connections_per_uid(mut self, n: usize) -> Self {
        self.max_connections_per_uid = n.max(1);
        self
    }
    /// Time a client has to send its request (default 5 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
    /// Time a whole dump may take before CRIU is killed (default 300 s).
    ///
    /// Past it the service kills CRIU (`SIGKILL`) and reaps it. The tree is
    /// held by CRIU's ptrace (no freezer cgroup), and the kernel lets go of
    /// the tracees when their tracer dies, so the tree runs on whether the
    /// limit struck before or during the freeze; the caller gets a
    /// `DumpFailed` error and no images are kept (only the caller's
    /// `dump.log`). `tests/adversarial.rs` (`dump_timeout_exceeded`)
    /// checks both cases against real CRIU.
    pub fn dump_timeout(mut self, d: Duration) -> Self {
        self.dump_timeout = d;
        self
    }
    /// How long a result waits for its process to ask (default 600 s).
    pub fn result_ttl(mut self, d: Duration) -> Self {
        self.result_ttl = d;
        self
    }
    /// Mode of a socket created by [`Builder::bind`] (default 0o600).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }
    /// Owner (uid, gid) of a socket created by [`Builder::bind`].
    pub fn socket_owner(mut self, uid: u32, gid: u32) -> Self {
        self.socket_owner = Some((uid, gid));
        self
    }

    /// Creates the socket at `path` (replacing a stale one) and the server.
    pub fn bind(self, path: impl AsRef<Path>) -> Result<Server, Error> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path);
        let listener = UnixListener::bind(&path).map_err(|source| Error::Bind {
            path: path.clone(),
            source,
        })?;
        let perms = |source| Error::SocketPermissions {
            path: path.clone(),
            source,
        };
        if let Some((uid, gid)) = self.socket_owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(perms)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(self.socket_mode))
            .map_err(perms)?;
        let mut server = self.listener(listener)?;
        server.path = Some(path);
        Ok(server)
    }

    /// A server on an already bound listener (socket activation, tests).
    pub fn listener(self, listener: UnixListener) -> Result<Server, Error> {
        let listener = Async::new(listener).map_err(Error::Accept)?;
        Ok(Server {
            listener,
            path: None,
            shared: Arc::new(Shared {
                jobs: jobs::Jobs::new(self.result_ttl),
                dumps: Arc::new(Semaphore::new(self.max_dumps)),
                dumps_per_uid: Default::default(),
                connections_per_uid: Default::default(),
                connections: Arc::new(Semaphore::new(self.max_connections)),
                config: self,
                stop: Default::default(),
                tasks: AtomicUsize::new(0),
                changed: Event::new(),
                expected: Default::default(),
            }),
        })
    }

    /// Runs the embedder's [`Builder::admit`] callback, if any.
    fn embedder_admits(&self, caller: &CallerInfo<'_>) -> Result<(), String> {
        let Some(Admit(f)) = &self.admit else {
            return Ok(());
        };
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(caller)))
            .unwrap_or_else(|_| {
                log::error!("the embedder's admit callback panicked");
                Err("the service's admission check failed".into())
            });
        verdict?;
        if !peer::is_alive(&caller.pidfd) {
            return Err("you exited".into());
        }
        Ok(())
    }
}

/// The signature of an embedder's [`Builder::admit`] callback.
type AdmitFn = dyn Fn(&CallerInfo<'_>) -> Result<(), String> + Send + Sync;

/// The embedder's callback given to [`Builder::admit`].
#[derive(Clone)]
struct Admit(Arc<AdmitFn>);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit(<callback>)")
    }
}

fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// State shared by all connections.
#[derive(Debug)]
struct Shared {
    config: Builder,
    jobs: jobs::Jobs,
    dumps: Arc<Semaphore>,
    /// Dumps running per caller uid.
    dumps_per_uid: connection::UidCounts,
    connections: Arc<Semaphore>,
    /// Connections open per peer uid.
    connections_per_uid: connection::UidCounts,
    /// Set once the server is asked to stop.
    stop: Arc<Stop>,
    /// Connection tasks (and refusals being sent) not finished yet.
    tasks: AtomicUsize,
    /// Notified when `tasks` drops to zero or `expected` shrinks.
    changed: Event,
    /// Callers that may come back to ask for a dump's result.
    expected: Mutex<Expected>,
}

/// How long, after its admitted checkpoint request ended, a live caller
/// may still come back for its result before a draining server gives up
/// on it. A caller whose tree was dumped asks as soon as CRIU lets it run,
/// before the images are even published, so this covers a caller slowed
/// down by load; the cost is a drain that waits this long for a caller
/// whose dump failed before the freeze (it had its answer and does not
/// come back).
const RESULT_GRACE: Duration = Duration::from_secs(3);

/// Callers admitted for a checkpoint whose request is running or just
/// ended: while the server drains, they are the only ones it still serves
/// (their result queries), and it waits for them.
#[derive(Debug, Default)]
struct Expected {
    callers: Vec<ExpectedCaller>,
}

#[derive(Debug)]
struct ExpectedCaller {
    pid: i32,
    /// Pins `pid` to the caller: once it exits, nothing is expected of it.
    pidfd: OwnedFd,
    /// `None` while its checkpoint request runs; then the end of its grace.
    until: Option<Instant>,
}

impl ExpectedCaller {
    fn still_expected(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now < until) && peer::is_alive(&self.pidfd)
    }
}

impl Shared {
    /// Counts a connection task until the returned guard drops.
    fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    fn expected(&self) -> std::sync::MutexGuard<'_, Expected> {
        self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last step of admitting a checkpoint request, once the built-in
    /// checks passed: the embedder's callback ([`Builder::admit`]). An
    /// admitted caller may come back for its result, so it is noted for
    /// the drain until [`Shared::checkpoint_ended`] and its grace after.
    pub(super) fn admitted(&self, caller: &CallerInfo<'_>) -> Result<(), String> {
        self.config.embedder_admits(caller)?;
        // Without a second pidfd to pin it, the caller is not waited for.
        if let Ok(pidfd) = caller.pidfd.try_clone_to_owned() {
            let now = Instant::now();
            let mut expected = self.expected();
            expected.callers.retain(|c| c.still_expected(now));
            expected.callers.push(ExpectedCaller {
                pid: caller.pid,
                pidfd,
                until: None,
            });
        }
        Ok(())
    }

    /// A checkpoint request of `pid` is over; if it was admitted, its
    /// caller has a little while ([`RESULT_GRACE`]) to ask for the result.
    pub(super) fn checkpoint_ended(&self, pid: i32) {
        let until = Instant::now() + RESULT_GRACE;
        for c in &mut self.expected().callers {
            if c.pid == pid && c.until.is_none() {
                c.until = Some(until);
            }
        }
        self.changed.notify(usize::MAX);
    }

    /// The caller `pid` asked for a result: nothing more is expected of it.
    pub(super) fn result_asked(&self, pid: i32) {
        self.expected().callers.retain(|c| c.pid != pid);
        self.changed.notify(usize::MAX);
    }

    /// Whether a caller connecting while the server drains may be coming
    /// for a result (its checkpoint request is running or just ended).
    fn is_expected(&self, stream: &Async<std::os::unix::net::UnixStream>) -> bool {
        let Ok(cred) = rustix::net::sockopt::socket_peercred(stream.get_ref()) else {
            return false;
        };
        let pid = cred.pid.as_raw_nonzero().get();
        let now = Instant::now();
        self.expected()
            .callers
            .iter()
            .any(|c| c.pid == pid && c.still_expected(now))
    }

    /// `None` once no task runs and no caller is expected; else when to
    /// look again at the latest (callers exit without a notification).
    fn drain_wait(&self) -> Option<Option<Instant>> {
        let now = Instant::now();
        let mut expected = self.expected();
        expected.callers.retain(|c| c.still_expected(now));
        let tasks = self.tasks.load(Ordering::SeqCst);
        if tasks == 0 && expected.callers.is_empty() {
            return None;
        }
        if expected.callers.is_empty() {
            Some(None)
        } else {
            Some(Some(now + Duration::from_millis(100)))
        }
    }
}

/// One running connection task of a [`Shared`].
struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify(usize::MAX);
        }
    }
}

/// The stop request shared by a server and its [`ShutdownHandle`]s.
#[derive(Debug, Default)]
struct Stop {
    requested: AtomicBool,
    event: Event,
}

impl Stop {
    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn request(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            self.event.notify(usize::MAX);
        }
    }

    async fn requested(&self) {
        loop {
            if self.is_requested() {
                return;
            }
            let listener = self.event.listen();
            if self.is_requested() {
                return;
            }
            listener.await;
        }
    }
}

/// Stops a [`Server`] gracefully, from any task or thread: get one with
/// [`Server::shutdown_handle`] before running the server.
///
/// After [`ShutdownHandle::shutdown`], the server takes no new work but
/// keeps accepting until the drain ends, so no client waits in the listen
/// backlog: a newcomer gets a `ShuttingDown` refusal ("the selfdump
/// service is shutting down; retry against its successor") as soon as its
/// request is read (within a second, whether or not it sends one), and so
/// does a checkpoint request on a connection opened before. The dumps in
/// flight finish, and their callers still get their results: they ask on
/// a new connection once CRIU lets them run, and they alone are still
/// served. The drain also waits for connections opened before the stop
/// that have not sent their request yet (at most the request timeout).
/// Then [`Server::run`] returns `Ok(())` and the socket file, if the
/// server created it, is removed.
///
/// ```no_run
/// # fn main() -> Result<(), selfdump::server::Error> {
/// let server = selfdump::server::Server::builder().bind("/run/selfdump.sock")?;
/// let stop = server.shutdown_handle();
/// std::thread::spawn(move || {
///     // ... on the embedder's own stop request:
///     stop.shutdown();
/// });
/// async_io::block_on(server.run()) // returns once drained
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<Stop>,
}

impl ShutdownHandle {
    /// Asks the server to stop; returns at once. Calling it again, or
    /// before the server runs, is harmless (a server asked to stop before
    /// it runs stops at once).
    pub fn shutdown(&self) {
        self.stop.request();
    }

    /// Whether [`ShutdownHandle::shutdown`] was called (or the future given
    /// to [`Server::run_until`] completed).
    pub fn is_shutdown(&self) -> bool {
        self.stop.is_requested()
    }
}

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

    /// Serves until accepting fails, or until a [`ShutdownHandle`] stops it.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes or a [`ShutdownHandle`] stops it,
    /// then drains as [`ShutdownHandle`] describes: checkpoint requests are
    /// refused as `ShuttingDown`, the dumps in flight finish and their
    /// callers get their results, then it returns. If accepting fails, it
    /// returns that error once the connections in flight have finished.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let executor = async_executor::Executor::new();
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
                            .await
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
            std::future::pending::<()>().await
        };
        executor.run(drained.or(keep_accepting)).await;
        log::info!("shut down");
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Accepts connections and spawns their tasks on `executor`, until
    /// accepting fails. Once a stop is requested, only callers that may be
    /// coming for a dump's result are served; the others are refused.
    async fn accept_loop(
        &self,
        executor: &async_executor::Executor<'_>,
    ) -> Result<std::convert::Infallible, Error> {
        loop {
            let (stream, _) = self.listener.accept().await.map_err(Error::Accept)?;
            if self.shared.stop.is_requested() && !self.shared.is_expected(&stream) {
                // Not counted: the drain does not wait for newcomers.
                executor
                    .spawn(connection::refuse_shutting_down(stream))
                    .detach();
                continue;
            }
            let task = self.shared.task();
            let uid_slot = match connection::uid_slot(&self.shared, &stream) {
                Ok(uid_slot) => uid_slot,
                Err(busy) => {
                    executor
                        .spawn(async move {
                            connection::send(&stream, &busy).await;
                            drop(task);
                        })
                        .detach();
                    continue;
                }
            };
            let Some(slot) = self.shared.connections.try_acquire_arc() else {
                executor
                    .spawn(async move {
                        connection::refuse_busy(stream).await;
                        drop(task);
                    })
                    .detach();
                continue;
            };
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
}
