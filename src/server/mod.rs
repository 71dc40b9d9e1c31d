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

mod accept;
mod builder;
mod caller;
mod config;
mod conn;
mod engine;
mod error;
mod fs;
pub mod images;
mod jobs;
mod operator;
mod requests;
// the restore work adds modules now: their `pub` items narrow once it merges
#[allow(unreachable_pub)]
pub mod restore;
mod shared;
mod shutdown;
mod slots;

pub use builder::Builder;
pub use caller::caps;
pub use caller::policy::{CallerInfo, Policy};
pub use config::MAX_KEEP;
pub use engine::{Criu, NonRootFallback, SpawnGuard, spawn_guard};
pub use error::Error;
pub use fs::generations as generation;
pub use images::manifest;
pub use jobs::{MAX_RESULTS, MAX_RESULTS_PER_UID};
pub use operator::{check, inspect, systemd};
pub use restore::copies;
use shared::{Drain, Shared};
pub use shutdown::ShutdownHandle;

/// The service's internals, for this crate's benches and tests only: not
/// part of the API, and they change without notice.
#[doc(hidden)]
pub mod internals {
    pub use super::caller::credentials::Credentials;
    pub use super::engine::{
        DumpHooks, DumpSpec, Dumped, EngineError, FrozenVerdict, Worker, kdat,
    };
    /// CRIU's RPC messages and the image entries selfdump reads.
    pub mod rpc {
        pub use crate::server::engine::rpc::*;
        pub use crate::server::images::criu_entries::*;
    }
}

use async_io::{Async, Timer};
use futures_lite::FutureExt;
use std::future::Future;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The default socket path (the client's too).
pub use crate::proto::DEFAULT_SOCKET;

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
                match self.shared.drain() {
                    Drain::Over => break,
                    Drain::TasksRun => listener.await,
                    Drain::ResultsAwaited { look_again } => {
                        listener
                            .or(async {
                                Timer::at(look_again).await;
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
