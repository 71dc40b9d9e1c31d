//! Configuring a [`Server`]: limits, policy, the embedder's admit callback,
//! and where it listens.

use super::Server;
use super::caller::policy::{CallerInfo, Policy};
use super::config::{Admit, Config};
use super::engine::NonRootEngine;
use super::engine::kdat::{self, KdatCache};
use super::engine::{Criu, NonRootFallback};
use super::error::Error;
use super::manifest::{DEFAULT_KEY_FILE, Key};
use super::shared::Shared;
use async_io::Async;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
///
/// The CRIU that dumps a root caller runs as root (one may be started
/// ahead, [`Builder::warm_workers`]); the one that dumps a non-root caller
/// runs as that caller, with `CAP_CHECKPOINT_RESTORE` as its only
/// capability, started for its dump. Where it cannot run so, non-root
/// checkpoints are refused or go to root's CRIU, as
/// [`Builder::non_root_fallback`] says.
#[derive(Debug, Clone)]
#[must_use = "a Builder serves nothing until `bind` or `listener` makes the Server"]
pub struct Builder {
    pub(super) config: Config,
    socket_mode: u32,
    socket_owner: Option<(u32, u32)>,
    key: Option<Key>,
    key_file: PathBuf,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            config: Config::default(),
            socket_mode: 0o600,
            socket_owner: None,
            key: None,
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
        }
    }
}

impl Builder {
    /// The engine: how to run CRIU (binary path, log level). See
    /// [the engine](Builder#the-engine) for why CRIU's RPC is the only one.
    pub fn criu(mut self, criu: Criu) -> Self {
        self.config.criu = criu;
        self
    }
    /// Who may ask (default: root only).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = policy;
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
        self.config.admit = Some(Admit(Arc::new(f)));
        self
    }
    /// What non-root callers get where CRIU cannot run as the caller here
    /// (default [`NonRootFallback::Refuse`]); where it can, their dumps run
    /// as themselves whatever this says. The server finds out when it
    /// starts, by starting a CRIU as uid 65534 (see [`Builder::listener`]).
    pub fn non_root_fallback(mut self, fallback: NonRootFallback) -> Self {
        self.config.non_root_fallback = fallback;
        self
    }
    /// `criu swrk` workers kept started ahead of time (default 1; 0 for
    /// none). A dump that finds one ready skips CRIU's exec and start-up,
    /// 3–11 ms on the machines of BENCHMARKS.md; each waiting worker is an
    /// idle `criu swrk` child of the service. Dumps beyond the ready ones
    /// start their own, as with 0. They serve root callers: a non-root
    /// caller's CRIU runs as that caller, whose uid is known only once it
    /// asks (BENCHMARKS.md measures what that costs).
    pub fn warm_workers(mut self, n: usize) -> Self {
        self.config.warm_workers = n;
        self
    }
    /// Dumps running at once; more are refused as busy (default 8).
    ///
    /// Restores asked of the service count too: a dump and a restore each
    /// run one CRIU and hold the same resources (fds, memory, a CRIU
    /// process), so they share this limit. The name stays what embedders
    /// and `selfdump serve --max-dumps` already use.
    pub fn max_dumps(mut self, n: usize) -> Self {
        self.config.max_criu_runs = n.max(1);
        self
    }
    /// Dumps one uid may have running at once, so that one user cannot take
    /// every dump slot; more are refused as busy (default 4). Its restores
    /// count too, as for [`Builder::max_dumps`].
    pub fn max_dumps_per_uid(mut self, n: usize) -> Self {
        self.config.max_criu_runs_per_uid = n.max(1);
        self
    }
    /// Connections open at once; more are refused as busy (default 256).
    ///
    /// Root's connections do not count against it (only against
    /// [`Builder::max_connections_per_uid`]), so that a flood from other
    /// users never keeps root out. When the server is created, it and
    /// [`Builder::max_connections_per_uid`] are lowered if the fd limit
    /// (`RLIMIT_NOFILE`, soft) could not hold that many connections (2 fds
    /// each), root's, and the dumps' fds: the extras are then refused as
    /// busy rather than run the service out of fds. Raise the limit first
    /// ([`raise_fd_limit`](super::raise_fd_limit)).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.max(1);
        self
    }
    /// Connections one uid may have open at once (default 64): a flood of
    /// idle connections from one user leaves room for the others. More are
    /// refused as busy.
    pub fn max_connections_per_uid(mut self, n: usize) -> Self {
        self.config.max_connections_per_uid = n.max(1);
        self
    }
    /// Time a client has to send its request (default 5 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }
    /// Time a whole dump may take before it is abandoned (default 300 s).
    ///
    /// Past it the service closes CRIU's channel. At its next step CRIU
    /// takes its parasite out of the tree, lets it run and exits, and the
    /// service reaps it; only if it has not within 10 s is it killed. It is
    /// not killed at once because killing CRIU while its parasite runs
    /// inside a process kills that process too. Either way the tree runs
    /// on, whether the limit struck before or during the freeze. The caller
    /// gets a `DumpFailed` error and no images are kept (only the caller's
    /// `dump.log`). `tests/adversarial/faults.rs` (`dump_timeout_exceeded`)
    /// checks both cases against real CRIU.
    ///
    /// A restore asked of the service has the same time (its CRIU is
    /// killed past it, with what it had restored, and the caller told so).
    pub fn dump_timeout(mut self, d: Duration) -> Self {
        self.config.criu_run_timeout = d;
        self
    }
    /// How long a result waits for its process to ask (default 600 s). A
    /// result also goes when its process exits, or when the caps
    /// ([`Builder::max_results`], [`Builder::max_results_per_uid`]) push
    /// it out; a process asking after that is told "result expired".
    pub fn result_ttl(mut self, d: Duration) -> Self {
        self.config.result_ttl = d;
        self
    }
    /// Finished results kept for their callers at most, in all (default
    /// [`MAX_RESULTS`](super::MAX_RESULTS)). Past it, the oldest go first
    /// and their callers are told "result expired". A finished result holds
    /// no fd, only its answer.
    pub fn max_results(mut self, n: usize) -> Self {
        self.config.max_results = n.max(1);
        self
    }
    /// Finished results kept at most per uid (default
    /// [`MAX_RESULTS_PER_UID`](super::MAX_RESULTS_PER_UID)), so that one
    /// user that never collects cannot push out the others' results.
    pub fn max_results_per_uid(mut self, n: usize) -> Self {
        self.config.max_results_per_uid = n.max(1);
        self
    }
    /// Generations a checkpoint may keep in its images directory at most
    /// (default [`MAX_KEEP`](super::MAX_KEEP)): a caller asking to keep
    /// more ([`Options::keep`](crate::Options::keep)) keeps this many. Each
    /// generation is a whole checkpoint (the process's memory), so this
    /// bounds what one directory of checkpoints takes on disk, in units of
    /// checkpoints.
    pub fn max_keep(mut self, n: usize) -> Self {
        self.config.max_keep = n.max(1);
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

    /// The key that signs the images (default: the one in
    /// [`Builder::key_file`], made there on first start).
    pub fn signing_key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }
    /// Where the signing key is kept (default
    /// [`DEFAULT_KEY_FILE`]): root's, mode 0600, made with its directory
    /// (root's, 0700) if missing. Share it between hosts that restore each
    /// other's images.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = path.into();
        self
    }

    /// Where the public keys of other services are (default
    /// [`DEFAULT_TRUST_DIR`](crate::server::images::trust::DEFAULT_TRUST_DIR)): an owner's
    /// restore through the service accepts images they signed (a checkpoint
    /// pulled from a store, `selfdump pull`). Read at each restore.
    pub fn trust_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.trust_dir = dir.into();
        self
    }

    /// Creates the socket at `path` (replacing a stale one) and the server,
    /// after checking CRIU as [`Builder::listener`] does.
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
        let mut server = self.listener(listener).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        server.path = Some(path);
        Ok(server)
    }

    /// A server on an already bound listener (socket activation, tests).
    ///
    /// Like [`Builder::bind`], it first checks CRIU (it must run and be 4
    /// or newer, else [`Error::Criu`]) and makes sure dumps find CRIU's
    /// kernel-feature cache (see [`kdat`](super::engine::kdat)), and
    /// whether CRIU can run as a non-root caller here (it starts one as uid
    /// 65534; see [`Builder::non_root_fallback`]), as `selfdump serve`
    /// does; this runs CRIU and blocks meanwhile.
    pub fn listener(self, listener: UnixListener) -> Result<Server, Error> {
        let key = match &self.key {
            Some(key) => key.clone(),
            None => Key::load_or_create(&self.key_file).map_err(|source| Error::Key {
                path: self.key_file.clone(),
                source,
            })?,
        };
        let kdat = prepare_criu(&self.config.criu)?;
        // learned once here, not at the first dump (it runs `criu --version`)
        let _ = crate::server::engine::host::this_host(&self.config.criu.path);
        let non_root = NonRootEngine::decide(&self.config.criu, self.config.non_root_fallback);
        log::info!("non-root callers: {}", non_root.describe());
        let listener = Async::new(listener).map_err(Error::Accept)?;
        Ok(Server {
            listener,
            path: None,
            shared: Arc::new(Shared::new(self.config, key, kdat, non_root)),
        })
    }
}

/// What `selfdump serve` and an embedded [`Server`] both do before they
/// serve: check that CRIU runs and is 4 or newer, then make sure dumps find
/// its kernel-feature cache ([`kdat`](super::engine::kdat)).
fn prepare_criu(criu: &Criu) -> Result<KdatCache, Error> {
    let (major, minor, sub) = async_io::block_on(criu.version()).map_err(|e| {
        Error::Criu(format!(
            "{}: {e}; is CRIU >= 4 installed?",
            criu.path.display()
        ))
    })?;
    if major < 4 {
        return Err(Error::Criu(format!(
            "criu {major}.{minor}.{sub} is too old; selfdump needs CRIU 4 or newer"
        )));
    }
    log::info!("using {} (CRIU {major}.{minor}.{sub})", criu.path.display());
    let kdat = kdat::ensure_cache(criu);
    log::info!("CRIU kernel-feature cache: {kdat}");
    Ok(kdat)
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
