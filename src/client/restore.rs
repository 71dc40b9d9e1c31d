//! Restores through the service: the owner of a checkpoint asks, as it
//! asked for the dump, with the images directory as an open fd. The
//! service verifies the images' signature, checks that the caller owns
//! them (root may restore anyone's), and restores them detached.
//!
//! ```no_run
//! use selfdump::RestoreOptions;
//!
//! # async fn run() -> Result<(), selfdump::Error> {
//! let restored = selfdump::restore(RestoreOptions::new("/var/lib/myapp/images")).await?;
//! println!("restored as pid {} in {:?}", restored.pid, restored.total);
//! # Ok(()) }
//! ```

use super::Error;
use super::options::default_socket;
use super::wire::{ask, connect};
use crate::proto::{FrameError, Request, Response, RestoreReport, RestoreRequest, encode_frame};
use rustix::fs::{Mode, OFlags};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

/// What to restore, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    images_dir: PathBuf,
    socket: Option<PathBuf>,
    trust_unsigned: bool,
}

impl RestoreOptions {
    /// Restores the checkpoint in `images_dir` (signed by the service):
    /// the generation `images_dir/latest` names, or the generation whose
    /// directory `images_dir` is (`DIR/gen-...`), or images directly in it
    /// (made before generations).
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            socket: None,
            trust_unsigned: false,
        }
    }

    /// The service's socket (default `$SELFDUMP_SOCKET`, else
    /// `/run/selfdump.sock`).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Also restore images without a manifest (plain CRIU's), unchecked.
    /// The service honours it for root only.
    pub fn trust_unsigned(mut self) -> Self {
        self.trust_unsigned = true;
        self
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The restored root pid.
    pub pid: i32,
    /// The images' owner, whose credentials the restored tasks have.
    pub owner: u32,
    /// The generation restored (what `latest` named, or the one whose
    /// directory was given); `None` for images directly in the directory.
    pub generation: Option<String>,
    /// Time the service spent verifying the images.
    pub verify: Duration,
    /// Time from the service receiving the request to CRIU's answer.
    pub total: Duration,
}

/// Asks the service to restore the images of `options`; returns once the
/// tree runs (detached: it is not this process's child).
pub async fn restore(options: RestoreOptions) -> Result<Restored, Error> {
    let dir = rustix::fs::open(
        &options.images_dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::ImagesDir {
        path: options.images_dir.clone(),
        source: e.into(),
    })?;
    let socket = options.socket.clone().unwrap_or_else(default_socket);
    let stream = connect(&socket).await.map_err(|e| match e {
        Error::Refused { kind, message } => Error::Restore {
            kind: Some(kind),
            message,
        },
        e => e,
    })?;
    let request = Request::Restore(RestoreRequest {
        trust_unsigned: options.trust_unsigned,
    });
    match ask(&stream, &encode_frame(&request), &[dir.as_fd()]).await? {
        Response::Restored(RestoreReport {
            pid,
            owner,
            generation,
            verify_us,
            total_us,
        }) => Ok(Restored {
            pid,
            owner,
            generation,
            verify: Duration::from_micros(verify_us),
            total: Duration::from_micros(total_us),
        }),
        Response::Refused(r) => Err(Error::Restore {
            kind: Some(r.kind),
            message: r.message,
        }),
        Response::RestoreFailed(message) => Err(Error::Restore {
            kind: None,
            message,
        }),
        other => Err(Error::Protocol(FrameError::Malformed(format!(
            "unexpected answer {other:?}"
        )))),
    }
}
