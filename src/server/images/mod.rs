//! What the service adds to a dump's images and reads back from them.

pub(crate) mod criu_entries;
pub(crate) mod criu_log;
pub(crate) mod format;
mod key;
pub mod manifest;

pub use format::{ImageMeta, Published, entries, read_image};
