//! Accepting connections: each gets a task of its own if the connection
//! limits have room for it (root is held only to its per-uid one), and is
//! refused at once otherwise. Nothing a client does ends the accept loop
//! (the resource rule): a failing `accept` is backed off from, and when
//! the service is out of fds the oldest waiting connection is answered
//! "busy" with a fd held in reserve for that.

use crate::server::conn::{Connection, Refused};
use crate::server::slots::UidSlot;
use crate::server::{Error, Server, requests};
use async_io::{Async, Timer};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

impl Server {
    /// Accepts connections and spawns their tasks on `executor`, until the
    /// listener is gone ([`listener_gone`]); other accept errors are
    /// backed off from ([`AcceptBackoff`]). Once a stop is requested, only
    /// callers that may be coming for a dump's result are served; the
    /// others are refused.
    pub(super) async fn accept_loop(
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
        let conn = Connection::new(stream);
        let shared = &self.shared;
        if shared.stop.is_requested()
            && !conn
                .credentials()
                .is_ok_and(|c| shared.is_expected(c.pid()))
        {
            // Not counted: the drain does not wait for newcomers.
            let refusal = conn.refuse_after_request(Refused::shutting_down());
            executor.spawn(refusal).detach();
            return;
        }
        let task = shared.task();
        let uid_slot = match self.uid_slot(&conn) {
            Ok(uid_slot) => uid_slot,
            Err(busy) => {
                executor
                    .spawn(async move {
                        conn.refuse_at_accept(busy).await;
                        drop(task);
                    })
                    .detach();
                return;
            }
        };
        // root is not held to the global cap (only to its per-uid one):
        // no flood of other users keeps it out
        let slot = shared.connections.try_acquire_arc();
        let root = uid_slot.as_ref().is_some_and(|s| s.uid() == 0);
        if slot.is_none() && !root {
            let busy = Refused::busy("too many connections to the selfdump service; retry later");
            executor
                .spawn(async move {
                    conn.refuse_at_accept(busy).await;
                    drop(task);
                })
                .detach();
            return;
        }
        let shared = shared.clone();
        executor
            .spawn(async move {
                requests::serve(shared, conn).await;
                drop(slot);
                drop(uid_slot);
                drop(task);
            })
            .detach();
    }

    /// Takes a connection slot for the peer's uid, right at the accept
    /// (before the connection takes one of the global slots, so that one
    /// uid's flood cannot fill them). `Ok(None)` when the peer's uid is
    /// unknown: the connection is then refused once it is served. `Err` is
    /// the refusal to send.
    fn uid_slot(&self, conn: &Connection) -> Result<Option<UidSlot>, Refused> {
        let Ok(cred) = conn.credentials() else {
            return Ok(None);
        };
        let uid = cred.uid();
        let per_uid = self.shared.config.max_connections_per_uid;
        match UidSlot::take(&self.shared.connections_per_uid, uid, per_uid) {
            Some(slot) => Ok(Some(slot)),
            None => Err(Refused::busy(format!(
                "uid {uid} already has {per_uid} connections open to the selfdump service; \
                 retry later"
            ))),
        }
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
    delay: Duration,
    failures: u64,
    last_log: Option<Instant>,
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
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

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
            self.last_log = Some(Instant::now());
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

/// One fd held in reserve for when `accept` fails for lack of fds
/// (`EMFILE`, `ENFILE`): given up, it makes room to accept the oldest
/// waiting connection and answer it "busy" at once (then it is taken
/// back). Without it, every connection waiting in the backlog (a root
/// caller's among a flood) would hang until fds come free.
#[derive(Debug)]
struct ReserveFd(Option<OwnedFd>);

impl ReserveFd {
    fn new() -> Self {
        Self(Self::open())
    }

    fn open() -> Option<OwnedFd> {
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
                let busy =
                    Refused::busy("the selfdump service is out of file descriptors; retry later");
                Connection::refuse_at_once(&stream, busy);
                true
            }
            Err(_) => false,
        };
        self.0 = Self::open();
        refused
    }
}
