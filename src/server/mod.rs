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

mod as_caller;
mod builder;
pub mod check;
mod connection;
pub mod copies;
mod dump;
pub mod engine;
mod error;
pub mod images;
mod jobs;
mod leftovers;
pub mod peer;
mod pidns;
pub mod policy;
mod private_dir;
pub mod restore;
mod shutdown;
mod staging;
pub mod systemd;
mod tree;

pub use builder::Builder;
pub use engine::Criu;
pub use error::Error;
pub use policy::{CallerInfo, Policy};
pub use shutdown::ShutdownHandle;
use shutdown::Stop;

use async_io::{Async, Timer};
use async_lock::Semaphore;
use event_listener::Event;
use futures_lite::FutureExt;
use std::future::Future;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/selfdump.sock";

/// State shared by all connections.
#[derive(Debug)]
struct Shared {
    config: Builder,
    jobs: jobs::Jobs,
    /// `criu swrk` workers started ahead of time.
    workers: Arc<engine::WorkerPool>,
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
    /// Notified when `tasks` drops to zero.
    changed: Event,
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
        self.shared.workers.stop().await;
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
