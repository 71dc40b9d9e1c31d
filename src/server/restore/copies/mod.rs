//! Many copies of one image at once (`selfdump restore --copies N`).
//!
//! The images are verified once per call ([`verify_path`]: signature,
//! files, credentials, as for any restore), and every copy's CRIU reads
//! that one verified set, root's only, which stays until the last copy no
//! longer needs it (for lazy copies, until every page is in). A harness
//! that restores the same images round after round verifies them once
//! with [`VerifiedImages`] and re-checks them cheaply before each round.
//!
//! [`verify_path`]: crate::server::restore::verify_path
//!
//! Images of a whole pid namespace (a program started with `selfdump run`,
//! [`ImageMeta::pid_namespace`]) restore into a fresh pid namespace each
//! time: CRIU makes one per restore when the root task is a namespace's
//! init, so no pid of the images needs to be free and N restores of the
//! same images can run side by side. Each copy is one `criu restore`, all
//! started at once, each with a root-only work directory of its own (its
//! log and pid file) under [`LOG_DIR`]. Each has the restore deadline
//! ([`RestoreSettings::deadline`]): a CRIU still running then is killed
//! with what it had restored (CRIU 4.1.1 hangs when a copy exits before
//! CRIU has detached from it), and the call fails saying so.
//!
//! **How a copy learns its number.** The client keeps a *copy slot* across
//! each checkpoint (the read end of a pipe with no writer, whose fd
//! number goes in the request) and the images name it
//! ([`ImageMeta::copy_slot`], `pipe:[INODE]`). For each copy the restorer
//! makes a fresh pipe, writes the copy's number and a random restore id into
//! it, closes the write end, and hands the read end to CRIU as
//! `--inherit-fd fd[0]:pipe:[INODE]`: CRIU puts it in the copy in place of
//! the slot. So a copy reads its own record from its own fd; no pid or name
//! is involved that anyone could swap, and each pipe reaches exactly one
//! copy of the caller's own images.
//!
//! **Lazy copies** (`--lazy`): each copy gets its own `criu lazy-pages`
//! daemon (one per copy: CRIU's daemon serves the one restore that
//! connects to it, in the same work directory), started and ready
//! (`--status-fd`) before its `criu restore --lazy-pages`. A copy runs as
//! soon as its tree is rebuilt; its memory arrives on first touch
//! (userfaultfd) and in the background, and the daemon exits once every
//! page is in. [`Copies::supervise`] waits for that: a daemon that ends any
//! other way (killed, failed) would leave its copy reading pages that never
//! came, so the copy is killed at once (SIGKILL to its init ends its whole
//! namespace) and the reason logged with the daemon's log. The verified
//! images stay until then (held by [`Copies`]).
//!
//! [`ImageMeta::pid_namespace`]: crate::server::images::ImageMeta::pid_namespace
//! [`ImageMeta::copy_slot`]: crate::server::images::ImageMeta::copy_slot
//! [`LOG_DIR`]: crate::server::restore::LOG_DIR

mod launch;
mod round;
mod rules;
mod verified;
mod watchdog;

pub use round::{Copies, Copy, Pages};
pub use rules::MAX_COPIES;
#[cfg(feature = "remote")]
pub(crate) use rules::{check_count, copyable};
pub use verified::VerifiedImages;

use crate::server::restore::{RestoreError, RestoreSettings};
use std::path::Path;

/// Restores `copies` copies of the images in `dir` at once, each in a
/// fresh pid namespace, and returns each root pid. `lazy` restores with
/// CRIU's lazy pages ([`Copies::supervise`] then waits for the memory).
/// All or nothing: if one copy fails, those started are killed.
///
/// The images are verified (hashed) on every call: this is
/// [`VerifiedImages::open`] then one [`VerifiedImages::restore_copies`].
/// A harness restoring the same images round after round keeps a
/// [`VerifiedImages`] instead and hashes them once.
pub fn restore_copies(
    settings: &RestoreSettings,
    dir: &Path,
    copies: u32,
    lazy: bool,
) -> Result<Copies, RestoreError> {
    // refused before anything is hashed
    rules::check_count(copies)?;
    VerifiedImages::open(settings, dir)?.restore_copies(settings, copies, lazy)
}
