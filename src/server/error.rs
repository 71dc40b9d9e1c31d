use std::fmt;
use std::io;
use std::path::PathBuf;

/// What can stop the service from serving.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be created at this path.
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Setting the socket's owner or mode failed.
    SocketPermissions {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The listening socket is unusable (`accept` failed with `EBADF`,
    /// `EINVAL` or `ENOTSOCK`), or could not be registered with the
    /// reactor. Never the result of what a client does: other `accept`
    /// errors (out of fds or memory, aborted connections) are logged and
    /// retried, not returned.
    Accept(io::Error),
    /// CRIU is missing, too old, or broken.
    Criu(String),
    /// The signing key cannot be read or made.
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { path, source } => write!(
                f,
                "cannot listen on {}: {source} (is another selfdump service running, or is the \
                 directory missing?)",
                path.display()
            ),
            Self::SocketPermissions { path, source } => {
                write!(f, "cannot set owner/mode of {}: {source}", path.display())
            }
            Self::Accept(e) => write!(f, "the listening socket is unusable: {e}"),
            Self::Criu(e) => write!(f, "{e} (run `selfdump check`, or scripts/install-criu.sh)"),
            Self::Key { path, source } if source.kind() == io::ErrorKind::PermissionDenied => {
                write!(
                    f,
                    "cannot read or make the signing key {}: {source} (the service must run \
                     as root)",
                    path.display()
                )
            }
            Self::Key { path, source } => write!(
                f,
                "cannot read or make the signing key {}: {source} (a key is 32 bytes, root's, \
                 mode 0600; keep it: every checkpoint signed so far verifies with it alone, \
                 so fix its owner or mode, or put back a copy of it; --key-file names \
                 another)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. }
            | Self::SocketPermissions { source, .. }
            | Self::Key { source, .. } => Some(source),
            Self::Accept(e) => Some(e),
            Self::Criu(_) => None,
        }
    }
}
