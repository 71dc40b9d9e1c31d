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
pub use policy::Policy;

use async_io::Async;
use async_lock::Semaphore;
use futures_lite::FutureExt;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/selfdump.sock";

/// Limits and choices of a [`Server`]. Build it with [`Server::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    criu: Criu,
    policy: Policy,
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
    /// How to run CRIU (binary path, log level).
    pub fn criu(mut self, criu: Criu) -> Self {
        self.criu = criu;
        self
    }
    /// Who may ask (default: root only).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
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
            }),
        })
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

    /// Serves until accepting fails.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then stops accepting and lets the
    /// connections in flight (dumps included) finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let executor = async_executor::Executor::new();
        let tasks = std::cell::RefCell::new(Vec::new());
        let accept = async {
            loop {
                let (stream, _) = self.listener.accept().await.map_err(Error::Accept)?;
                let uid_slot = match connection::uid_slot(&self.shared, &stream) {
                    Ok(uid_slot) => uid_slot,
                    Err(busy) => {
                        executor
                            .spawn(async move { connection::send(&stream, &busy).await })
                            .detach();
                        continue;
                    }
                };
                let Some(slot) = self.shared.connections.try_acquire_arc() else {
                    executor.spawn(connection::refuse_busy(stream)).detach();
                    continue;
                };
                let shared = self.shared.clone();
                let task = executor.spawn(async move {
                    connection::handle(shared, stream).await;
                    drop(slot);
                    drop(uid_slot);
                });
                let mut tasks = tasks.borrow_mut();
                tasks.retain(|t: &async_executor::Task<()>| !t.is_finished());
                tasks.push(task);
            }
        };
        let stop = async {
            shutdown.await;
            Ok(())
        };
        let result = executor.run(accept.or(stop)).await;
        log::info!(
            "shutting down: waiting for {} connection(s)",
            tasks.borrow().len()
        );
        let pending = std::mem::take(&mut *tasks.borrow_mut());
        executor
            .run(async {
                for task in pending {
                    task.await;
                }
            })
            .await;
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}
