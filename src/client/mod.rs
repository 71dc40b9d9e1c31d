//! The application side: [`checkpoint`] asks the service to dump this
//! process and tells, when it returns, whether this is the original process
//! ([`Outcome::Continued`]) or a copy restored from the images
//! ([`Outcome::Restored`]).

pub mod blocking;
mod connect;
mod copy_slot;
mod error;
pub mod hooks;
mod identity;
mod options;
mod outcome;
pub mod preflight;
mod restore;
mod result;
mod wire;

pub use error::Error;
pub use hooks::{HookError, HookFailure, Hooks, Phase, Resource};
pub use options::{Options, SOCKET_ENV};
pub use outcome::{Outcome, Report, RestoredInfo};
pub use preflight::{Finding, Preflight, Severity, preflight};
pub use restore::{RestoreOptions, Restored, restore};

use crate::proto::{FrameError, JobId, Request, Response, encode_frame, read_frame};
use identity::Identity;
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use wire::{ask, connect, unexpected};

/// Socket used when neither the options nor [`SOCKET_ENV`] name one.
pub use crate::proto::DEFAULT_SOCKET;

/// One process's checkpoints run one at a time: a second live connection in
/// the tree would make CRIU refuse the dump.
static ONE_AT_A_TIME: async_lock::Mutex<()> = async_lock::Mutex::new(());

/// Checkpoints this process and its children.
///
/// Returns [`Outcome::Continued`] in the original process once the images
/// are on disk, committed as a new generation of the images directory
/// (`DIR/gen-...`, which `DIR/latest` then names), and
/// [`Outcome::Restored`] in a copy restored from them.
/// Concurrent calls from one process run one after another. Runs under any
/// executor (it uses `async-io`'s reactor); [`blocking::checkpoint`] runs
/// without one, and [`Hooks::checkpoint`] runs resource hooks around it.
///
/// First it runs the [preflight](preflight::Preflight) on this process
/// tree and fails with [`Error::Preflight`] if CRIU would refuse it, before
/// anything is frozen (see [`Options::skip_preflight`],
/// [`Options::strict_preflight`]).
///
/// ```no_run
/// # async fn run() -> Result<(), selfdump::Error> {
/// use selfdump::{checkpoint, Options, Outcome};
/// match checkpoint(Options::new("/tmp/images")).await? {
///     Outcome::Continued(report) => println!("frozen for {:?}", report.frozen),
///     Outcome::Restored(_) => println!("restored"),
/// }
/// # Ok(()) }
/// ```
pub async fn checkpoint(options: Options) -> Result<Outcome, Error> {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    options.check_preflight()?;
    let socket = options.socket_path();
    let images_dir = options.images_dir.clone();
    let dir = rustix::fs::open(
        &images_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::ImagesDir {
        path: images_dir.clone(),
        source: e.into(),
    })?;

    let before = Identity::current();
    // Kept across the dump; see `copy_slot`.
    let slot = copy_slot::make();
    let mut dump = options.dump;
    dump.copy_slot_fd = slot.as_ref().map(|s| s.as_raw_fd());
    let stream = connect(&socket).await?;
    let request = encode_frame(&Request::Checkpoint(dump));
    let answer = ask(&stream, &request, &[dir.as_fd()]).await;
    drop(dir);

    let (job, generation) = match answer? {
        Response::Frozen(notice) => (notice.job, notice.generation),
        other => return Err(unexpected(other, &images_dir)),
    };
    // The service closed its end while we were frozen: the frame above was
    // the last one, and both the original and a restored copy see EOF next.
    if let Some(frame) = read_frame(&stream).await? {
        return Err(Error::Protocol(FrameError::Malformed(format!(
            "unexpected frame after Frozen ({} bytes)",
            frame.body.len()
        ))));
    }
    drop(stream);

    if Identity::current() != before {
        return Ok(restored(job, images_dir, generation, slot));
    }
    drop(slot);
    result::result(&socket, job, images_dir).await
}

/// The outcome of a restored copy: its number and restore id from its
/// copy slot, if the restore filled it.
fn restored(job: JobId, images_dir: PathBuf, generation: String, slot: Option<OwnedFd>) -> Outcome {
    let (copy, restore_id) = match slot.as_ref().and_then(copy_slot::read) {
        Some((copy, id)) => (Some(copy), id),
        None => (None, copy_slot::fresh_id()),
    };
    drop(slot);
    log::debug!("checkpoint {job}: this is a restored copy of {generation} ({copy:?})");
    Outcome::Restored(RestoredInfo {
        job,
        images_dir,
        generation,
        copy,
        restore_id,
    })
}
