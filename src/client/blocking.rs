//! [`checkpoint`] for programs without an async executor: it drives the
//! async call on the current thread (`async_io::block_on`).
//!
//! ```no_run
//! use selfdump::{Options, Outcome};
//!
//! match selfdump::blocking::checkpoint(Options::new("/tmp/images"))? {
//!     Outcome::Continued(report) => println!("dumped in {:?}", report.total),
//!     Outcome::Restored(info) => println!("restored from {}", info.images_dir.display()),
//! }
//! # Ok::<(), selfdump::Error>(())
//! ```
//!
//! Do not call these from inside an async task: they block its thread
//! until the dump is over.

use super::{Error, Hooks, Options, Outcome, RestoreOptions, Restored};

/// Checkpoints this process and its children; blocks until the dump is
/// over. See [`crate::checkpoint`].
pub fn checkpoint(options: Options) -> Result<Outcome, Error> {
    async_io::block_on(super::checkpoint(options))
}

/// Checkpoints with the hooks of `hooks` around the dump; blocks until it
/// is over. See [`Hooks::checkpoint`].
pub fn checkpoint_with(hooks: &mut Hooks, options: Options) -> Result<Outcome, Error> {
    async_io::block_on(hooks.checkpoint(options))
}

/// Restores a checkpoint through the service; blocks until the tree runs.
/// See [`crate::restore`].
pub fn restore(options: RestoreOptions) -> Result<Restored, Error> {
    async_io::block_on(super::restore(options))
}
