//! The checkpoint service. Embed it with [`Server`], or run `selfdump serve`.
//!
//! ```no_run
//! use selfdump::server::Server;
//! # fn main() -> Result<(), selfdump::server::Error> {
//! let server = Server::builder().socket_mode(0o660).bind("/run/selfdump.sock")?;
//! async_io::block_on(server.run())
//! # }
//! ```
//!
//! # How the service is built
//!
//! A root service that dumps whoever asks is only as safe as its least
//! careful line, so the code is laid out for reading: each folder holds
//! one concern, named after it, and a request goes through them one way.
//!
//! **The service's lifetime and state** are the files here. A [`Builder`]
//! (`builder.rs`) makes a [`Server`] with its configuration (`config.rs`);
//! [`Server::run`] accepts connections (`accept.rs`: each gets a task if
//! the connection limits have room, `slots.rs` counts what each uid holds)
//! and drains on a stop request (`shutdown.rs`). The tasks share one
//! `Shared` (`shared.rs`): the configuration, the limits' counters, the
//! CRIU workers started ahead, and `jobs/`, where a dump's result waits
//! for the process that asked.
//!
//! **`conn/`** is the only code that touches a client's socket. A
//! `Connection` learns the peer from the kernel (`peer.rs`:
//! `SO_PEERCRED`, `SO_PEERPIDFD`, never the request), reads its one
//! request (`request.rs`), and writes every frame the service sends, each
//! within its time limit. `reply.rs` is what the service says in its own
//! terms (a refusal, how a dump ended) and how that becomes a frame.
//!
//! **`requests/`** has one handler per request kind: `checkpoint/`,
//! `result.rs`, `restore.rs`. A handler returns what its caller is told;
//! it never writes to the socket. The one frame sent in the middle of a
//! handler's work, "you are frozen" at CRIU's freeze, goes through the
//! connection too (`Connection::tell_frozen`). Checkpoint and restore
//! share their admission and the reservation of a CRIU run
//! (`admission.rs`).
//!
//! Below the handlers, each folder is used by those above it and uses
//! only those below it:
//!
//! - **`restore/`**: restoring signed images: verify first (`verify.rs`),
//!   then CRIU: root's through a `criu swrk` started while verifying
//!   (`criu.rs`), held at `post-restore` while large pages are hashed
//!   (`gate.rs`); `criu restore` as the images' owner for a non-root
//!   checkpoint (`as_owner.rs`); many copies at once (`copies/`).
//! - **`engine/`**: driving CRIU: one `criu swrk` child per dump
//!   (`worker.rs`, started ahead by `pool.rs`) or per root restore
//!   (`restore.rs`), spoken to over CRIU's RPC (`rpc.rs`), the dump and
//!   its freeze hooks (`dump.rs`), as root or as
//!   the caller (`run_as.rs`, `non_root.rs`), CRIU's kernel-feature cache
//!   (`kdat/`), this host's facts a checkpoint records (`host.rs`). Every
//!   child the service starts goes through `engine::spawn` or `output`
//!   (`forks.rs`), which hold the fork guard from fork to exec.
//! - **`fs/`**: the filesystem rule (below) and all the service does in
//!   directories: acting as the caller (`as_caller.rs`), root's directory
//!   inside a caller's (`root_subdir.rs`) and the service's own
//!   (`service_dir.rs`), the staging directory CRIU dumps into
//!   (`staging.rs`), generations and their commit, retention and adoption
//!   (`generations/`), what a dead service left (`leftovers.rs`), the
//!   signing key's file (`key_file.rs`) and the trust directory
//!   (`trust_dir.rs`).
//! - **`images/`**: what the service adds to CRIU's images and reads back:
//!   their format and metadata (`format.rs`), CRIU's entries and log, what
//!   the checkpoint needs of a host (`host_needs.rs`), the signed manifest,
//!   its signature, the keys and whose signatures a host accepts
//!   (`trust.rs`).
//! - **`caller/`**: who asks and whether they may be dumped: credentials,
//!   the process pinned by its pidfd (`process.rs`) and its `/proc` status
//!   (`status.rs`), the operator's policy (`policy.rs`), the frozen tree
//!   (`tree.rs`), a caller's own pid namespace (`pidns.rs`), the
//!   capabilities CRIU needs (`caps.rs`). Everything it reads of `/proc`
//!   goes through the crate's one reader (`procfs.rs`), which tests point at
//!   a directory of their own.
//!
//! **`operator/`** is tooling off the request path: `selfdump check`,
//! `selfdump inspect`, systemd's socket activation and readiness.
//!
//! **Beyond one machine**, off the request path too, and above `restore/`:
//!
//! - **`archive/`** (feature `archive`): a checkpoint as one compressed
//!   file (`selfdump export`, `import`), and the committed generation both
//!   it and the store read and write (`generation.rs`).
//! - **`store/`** (feature `remote`): checkpoints in an object store
//!   (`selfdump push`, `pull`, `restore URL`, `inspect URL`): the image
//!   files cut into content-addressed zstd chunks (`chunker.rs`, `format.rs`),
//!   pushed (`push.rs`) and fetched in parallel (`fetch.rs`) on a tokio
//!   runtime of its own (`runtime.rs`), each chunk checked by its hash
//!   into a root-only cache (`cache.rs`), the images assembled from it
//!   (`assemble.rs`) and restored through `restore/` (`restore.rs`). The
//!   service never touches a store: an owner pushes with its own
//!   credentials, root restores with read access (`selfdump restore URL`).
//!
//! Who may sign what a host restores: a service signs its manifests with
//! an Ed25519 key derived from its secret (`images/key.rs`,
//! `images/signature.rs`); a host verifies with its own key and the public
//! keys of its trust directory (`images/trust.rs`, read by
//! `fs/trust_dir.rs`), and compares what the checkpoint needs of a host
//! (`images/host_needs.rs`) with itself (`engine/host.rs`) before CRIU runs.
//!
//! # The two rules everything rests on
//!
//! - **The filesystem rule.** In a place the caller can write, the service
//!   acts with the caller's own credentials (`fs/as_caller.rs`) or through
//!   an fd it opened itself (`O_NOFOLLOW`) and verified, never through a
//!   name the caller could change between two calls. Everything under
//!   `fs/` says how it keeps it.
//! - **The resource rule.** Nothing a client does, alone or many at once,
//!   makes the service exit or stop serving root: every wait has a limit
//!   (`conn/`), every count a cap (`accept.rs`, `requests/admission.rs`,
//!   `jobs/`), and errors are backed off from, never fatal.
//!
//! # A checkpoint, end to end
//!
//! `accept.rs` takes the connection's slots and spawns
//! `requests::serve`, which has the connection identify the peer and read
//! the request, then hands it to `requests/checkpoint/`: the caller is
//! checked (`checks.rs`: `caller/`, the images directory), a CRIU run and a
//! job reserved, a staging directory made (`fs/staging.rs`), and CRIU
//! dumps (`engine/`). While the tree is frozen, `frozen.rs` checks every
//! task of it (`caller/tree.rs`), tells the caller it is frozen and closes
//! its connection. Once CRIU is done, `conclude.rs` commits the images as a
//! generation (`fs/generations/`) or says why it failed, and the answer
//! goes to the connection if it is still open, else to the job, which the
//! original process asks for on a new connection (`requests/result.rs`).

mod accept;
#[cfg(feature = "archive")]
pub mod archive;
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
#[cfg(feature = "remote")]
pub mod store;

pub use builder::Builder;
pub use caller::caps;
pub use caller::policy::{CallerInfo, Policy};
pub use config::MAX_KEEP;
pub use engine::{Criu, NonRootFallback, SpawnGuard, host, spawn_guard};
pub use error::Error;
pub use fs::generations as generation;
pub use fs::key_file::public_key_file;
pub use images::{host_needs, manifest, trust};
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
