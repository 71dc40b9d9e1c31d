//! What to checkpoint and how, and where the service is.

use super::Error;
use super::preflight::{Finding, Preflight, Severity};
use crate::proto::{DEFAULT_SOCKET, DumpOptions};
use std::path::{Path, PathBuf};

/// Environment variable naming the service socket.
pub const SOCKET_ENV: &str = "SELFDUMP_SOCKET";
/// What to checkpoint, and how.
///
/// ```
/// use selfdump::Options;
/// let opts = Options::new("/tmp/images").exit_after_dump().tcp_established(true);
/// assert_eq!(opts.images_dir(), std::path::Path::new("/tmp/images"));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(super) images_dir: PathBuf,
    socket: Option<PathBuf>,
    pub(super) dump: DumpOptions,
    preflight: PreflightLevel,
}

/// Which preflight findings stop a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreflightLevel {
    Off,
    Refusals,
    All,
}

impl Options {
    /// Images go into `images_dir`, which must exist and be writable by this process.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            socket: None,
            dump: DumpOptions::default(),
            preflight: PreflightLevel::Refusals,
        }
    }

    /// Do not run the [preflight](crate::preflight::Preflight) before the dump: let
    /// CRIU find out, while the process is frozen, what it refuses.
    pub fn skip_preflight(mut self) -> Self {
        self.preflight = PreflightLevel::Off;
        self
    }

    /// Fail the checkpoint on every preflight finding, the
    /// [risky](Severity::Risky) ones included (by default they are logged,
    /// and only what CRIU would refuse stops the checkpoint).
    pub fn strict_preflight(mut self) -> Self {
        self.preflight = PreflightLevel::All;
        self
    }

    /// The preflight that [`checkpoint`](crate::checkpoint) runs with these options (same TCP
    /// and unix socket choices), to run it yourself.
    pub fn preflight(&self) -> Preflight {
        Preflight::new()
            .tcp_established(self.dump.tcp_established)
            .ext_unix_sk(self.dump.ext_unix_sk)
    }

    /// Have CRIU end this process tree after a successful dump (by default
    /// it keeps running). A failed dump still returns its error here.
    pub fn exit_after_dump(mut self) -> Self {
        self.dump.leave_running = false;
        self
    }

    /// The service socket (default: `$SELFDUMP_SOCKET`, else `/run/selfdump.sock`).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Dump established TCP connections (CRIU `--tcp-established`).
    pub fn tcp_established(mut self, on: bool) -> Self {
        self.dump.tcp_established = on;
        self
    }

    /// Dump file locks (CRIU `--file-locks`).
    pub fn file_locks(mut self, on: bool) -> Self {
        self.dump.file_locks = on;
        self
    }

    /// Allow connections to unix sockets outside the tree (CRIU `--ext-unix-sk`).
    pub fn ext_unix_sk(mut self, on: bool) -> Self {
        self.dump.ext_unix_sk = on;
        self
    }

    /// Generations to keep in the images directory, this checkpoint's
    /// included (default [`DEFAULT_KEEP`](crate::proto::DEFAULT_KEEP); at
    /// least 1; the service caps it at its operator's limit,
    /// `selfdump serve --max-keep`). Each checkpoint is a new generation,
    /// `DIR/gen-...`, which `DIR/latest` names once it is whole; older ones
    /// go after it is committed, oldest first, except one `latest` still
    /// names or one being restored.
    pub fn keep(mut self, generations: u32) -> Self {
        self.dump.keep = generations.max(1);
        self
    }

    /// The images directory.
    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// The socket this call will use.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }
}

/// `$SELFDUMP_SOCKET`, else the default path.
pub(super) fn default_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

impl Options {
    /// Fails with the findings that stop a checkpoint at this level; logs
    /// the rest.
    pub(super) fn check_preflight(&self) -> Result<(), Error> {
        if self.preflight == PreflightLevel::Off {
            return Ok(());
        }
        let findings = match self.preflight().run() {
            Ok(f) => f,
            Err(e) => {
                log::warn!("preflight could not look at this process: {e}; checkpointing anyway");
                return Ok(());
            }
        };
        let (stop, go): (Vec<Finding>, Vec<Finding>) = findings.into_iter().partition(|f| {
            f.severity == Severity::Refused || self.preflight == PreflightLevel::All
        });
        for finding in &go {
            log::warn!("preflight: {finding}");
        }
        if stop.is_empty() {
            Ok(())
        } else {
            Err(Error::Preflight(stop))
        }
    }
}
