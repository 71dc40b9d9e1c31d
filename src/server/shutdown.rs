//! Stopping a [`Server`](super::Server) gracefully: the stop request, its
//! handle, and when the drain is over (no task runs, and no caller still
//! has a result to collect: the job table knows those).

use event_listener::Event;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long, after its dump ended, a live caller that has not asked for
/// its result yet may still come back for it before a draining server
/// gives up on it. A caller whose tree was dumped asks as soon as CRIU lets
/// it run, usually before the dump has even ended, so this only covers a
/// caller slowed down by load (or one that never asks).
pub(super) const RESULT_GRACE: Duration = Duration::from_secs(3);

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
