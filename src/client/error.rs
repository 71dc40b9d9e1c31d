use super::Outcome;
use super::preflight::Finding;
use crate::proto::{FrameError, JobId, RefusalKind};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a checkpoint did not happen (or its outcome is unknown).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The images directory could not be opened.
    ImagesDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No service answers at the socket path.
    NoService {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A service listens (or a socket file is there) but this uid may not
    /// connect to it: the socket's mode or owner, or a directory on the
    /// way, keep it out (`EACCES`).
    SocketDenied {
        /// The socket path.
        socket: PathBuf,
        /// This process's effective uid.
        uid: u32,
        /// Whether the kernel lists a socket listening at that path.
        service_listens: bool,
        /// Why.
        source: io::Error,
    },
    /// The service refused the request before anything ran; or, `Busy`,
    /// it stayed too busy to answer the query for the result of a dump
    /// that ran (the message says so). See [`Error::is_retryable`].
    Refused {
        /// The class of refusal.
        kind: RefusalKind,
        /// The service's explanation.
        message: String,
    },
    /// Client and service speak different protocol versions.
    VersionMismatch {
        /// This client's version.
        client: u16,
        /// The service's version.
        service: u16,
    },
    /// CRIU failed; this process kept running.
    Dump {
        /// What CRIU or the service said.
        message: String,
        /// CRIU's log, when it was kept.
        log: Option<PathBuf>,
    },
    /// The tree was frozen but the result is lost (the service restarted,
    /// or the result expired): the images may or may not be good.
    OutcomeUnknown {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// The service broke the protocol or the connection failed.
    Protocol(FrameError),
    /// A restore through the service was refused (`kind`) or failed.
    Restore {
        /// The class of refusal; `None` when CRIU itself failed.
        kind: Option<RefusalKind>,
        /// What went wrong and what to do.
        message: String,
    },
    /// The preflight found what CRIU would refuse (or, with
    /// [`Options::strict_preflight`](crate::Options::strict_preflight),
    /// mishandle); nothing was frozen. Each finding says what to do.
    Preflight(Vec<Finding>),
    /// A [`Resource`](crate::Resource) hook failed (see
    /// [`Hooks`](crate::Hooks)).
    Hook(HookFailure),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImagesDir { path, source } => write!(
                f,
                "cannot open images directory {}: {source} (create it first; it must be a directory)",
                path.display()
            ),
            Self::NoService { socket, source } => write!(
                f,
                "no selfdump service at {}: {source} (start `selfdump serve`, or set SELFDUMP_SOCKET)",
                socket.display()
            ),
            Self::SocketDenied {
                socket,
                uid,
                service_listens,
                source,
            } => socket_denied(f, socket, *uid, *service_listens, source),
            Self::Refused { kind, message } => {
                write!(f, "checkpoint refused ({kind:?}): {message}")
            }
            Self::VersionMismatch { client, service } => write!(
                f,
                "protocol version mismatch: client speaks {client}, service speaks {service}; \
                 upgrade the older of the two"
            ),
            Self::Dump {
                message,
                log: Some(log),
            } => {
                write!(f, "checkpoint failed: {message} (log: {})", log.display())
            }
            Self::Dump { message, log: None } => write!(f, "checkpoint failed: {message}"),
            Self::OutcomeUnknown { job, reason } => write!(
                f,
                "outcome of checkpoint {job} unknown: {reason}; do not trust its images"
            ),
            Self::Protocol(e) => write!(f, "talking to the selfdump service failed: {e}"),
            Self::Restore {
                kind: Some(kind),
                message,
            } => write!(f, "restore refused ({kind:?}): {message}"),
            Self::Restore {
                kind: None,
                message,
            } => write!(f, "restore failed: {message}"),
            Self::Preflight(findings) => {
                write!(
                    f,
                    "checkpoint not attempted: the preflight found {} problem{} (nothing was frozen):",
                    findings.len(),
                    if findings.len() == 1 { "" } else { "s" }
                )?;
                let list = super::preflight::describe(findings, "  ");
                write!(f, "\n{}", list.trim_end())
            }
            Self::Hook(failure) => write!(f, "{failure}"),
        }
    }
}

/// [`Error::SocketDenied`]: who is kept out, and what the operator can do.
fn socket_denied(
    f: &mut fmt::Formatter<'_>,
    socket: &std::path::Path,
    uid: u32,
    service_listens: bool,
    source: &io::Error,
) -> fmt::Result {
    let socket = socket.display();
    if service_listens {
        write!(
            f,
            "the selfdump service at {socket} runs, but uid {uid} may not connect"
        )?;
    } else {
        write!(f, "uid {uid} may not connect to {socket}")?;
    }
    write!(
        f,
        " ({source}); the operator can open the socket to it (`selfdump serve --socket-mode \
         666`, or `--socket-owner 0:GID --socket-mode 660` for a group of its) and admit it \
         (`--allow-uid {uid}` or `--allow-gid GID`)"
    )
}

impl Error {
    /// Whether the same call may work later unchanged: the service was
    /// busy (too many dumps or connections) or shutting down (its
    /// successor may take the call).
    ///
    /// ```
    /// use selfdump::{Error, proto::RefusalKind};
    /// let busy = Error::Refused { kind: RefusalKind::Busy, message: "retry later".into() };
    /// assert!(busy.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                kind: RefusalKind::Busy | RefusalKind::ShuttingDown,
                ..
            } | Self::Restore {
                kind: Some(RefusalKind::Busy | RefusalKind::ShuttingDown),
                ..
            }
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::ImagesDir { source, .. }
            | Self::NoService { source, .. }
            | Self::SocketDenied { source, .. } => Some(source),
            Self::Protocol(e) => Some(e),
            Self::Hook(failure) => failure.failures.first().map(|(_, e)| &**e as _),
            _ => None,
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::VersionMismatch { ours, theirs, .. } => Self::VersionMismatch {
                client: ours,
                service: theirs,
            },
            e => Self::Protocol(e),
        }
    }
}

/// What a hook returns when it fails.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which hook failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// [`Resource::before_checkpoint`](crate::Resource::before_checkpoint): nothing was dumped.
    BeforeCheckpoint,
    /// [`Resource::after_restore`](crate::Resource::after_restore): this is a restored copy.
    AfterRestore,
    /// [`Resource::after_continue`](crate::Resource::after_continue): this is the original process.
    AfterContinue,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BeforeCheckpoint => "before-checkpoint",
            Self::AfterRestore => "after-restore",
            Self::AfterContinue => "after-continue",
        })
    }
}

/// The hooks that failed in one phase, and what the checkpoint did.
#[derive(Debug)]
pub struct HookFailure {
    /// The phase.
    pub phase: Phase,
    /// Each failing resource's name and error, in the order they ran.
    pub failures: Vec<(String, HookError)>,
    /// What the checkpoint returned, when it ran and succeeded: a failed
    /// `after_restore` still happens in a restored copy, and the caller
    /// must know that.
    pub outcome: Option<Box<Outcome>>,
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, error)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} hook of {name:?} failed: {error}", self.phase)?;
        }
        match self.phase {
            Phase::BeforeCheckpoint => f.write_str(" (nothing was dumped)"),
            Phase::AfterRestore => f.write_str(" (in a restored copy)"),
            Phase::AfterContinue => f.write_str(" (in the original process)"),
        }
    }
}
