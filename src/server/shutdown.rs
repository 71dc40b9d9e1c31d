//! Stopping a [`Server`](super::Server) gracefully: the stop request, its handle, and the
//! drain's bookkeeping (tasks running, callers that may come back for a
//! result).

use super::peer;
use super::{CallerInfo, Shared};
use async_io::Async;
use event_listener::Event;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long, after its admitted checkpoint request ended, a live caller
/// may still come back for its result before a draining server gives up
/// on it. A caller whose tree was dumped asks as soon as CRIU lets it run,
/// before the images are even published, so this covers a caller slowed
/// down by load; the cost is a drain that waits this long for a caller
/// whose dump failed before the freeze (it had its answer and does not
/// come back).
pub(super) const RESULT_GRACE: Duration = Duration::from_secs(3);

/// Callers admitted for a checkpoint whose request is running or just
/// ended: while the server drains, they are the only ones it still serves
/// (their result queries), and it waits for them.
#[derive(Debug, Default)]
pub(super) struct Expected {
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
    pub(super) fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    pub(super) fn expected(&self) -> std::sync::MutexGuard<'_, Expected> {
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
    pub(super) fn is_expected(&self, stream: &Async<std::os::unix::net::UnixStream>) -> bool {
        let Ok(cred) = peer::credentials(stream.get_ref()) else {
            return false;
        };
        let pid = cred.pid();
        let now = Instant::now();
        self.expected()
            .callers
            .iter()
            .any(|c| c.pid == pid && c.still_expected(now))
    }

    /// `None` once no task runs and no caller is expected; else when to
    /// look again at the latest (callers exit without a notification).
    pub(super) fn drain_wait(&self) -> Option<Option<Instant>> {
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
pub(super) struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify(usize::MAX);
        }
    }
}

/// The stop request shared by a server and its [`ShutdownHandle`]s.
#[derive(Debug, Default)]
pub(super) struct Stop {
    requested: AtomicBool,
    event: Event,
}

impl Stop {
    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub(super) fn request(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            self.event.notify(usize::MAX);
        }
    }

    pub(super) async fn requested(&self) {
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

/// Stops a [`Server`](super::Server) gracefully, from any task or thread: get one with
/// [`Server::shutdown_handle`](super::Server::shutdown_handle) before running the server.
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
/// Then [`Server::run`](super::Server::run) returns `Ok(())` and the socket file, if the
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
    pub(super) stop: Arc<Stop>,
}

impl ShutdownHandle {
    /// Asks the server to stop; returns at once. Calling it again, or
    /// before the server runs, is harmless (a server asked to stop before
    /// it runs stops at once).
    pub fn shutdown(&self) {
        self.stop.request();
    }

    /// Whether [`ShutdownHandle::shutdown`] was called (or the future given
    /// to [`Server::run_until`](super::Server::run_until) completed).
    pub fn is_shutdown(&self) -> bool {
        self.stop.is_requested()
    }
}
