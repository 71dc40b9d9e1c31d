//! What the service adds to a dump's images and reads back from them: its
//! metadata and CRIU's image format (`format.rs`, `criu_entries.rs`,
//! `criu_log.rs`), and the signed manifest (`manifest.rs`) with its key
//! (`key.rs`).

pub(crate) mod criu_entries;
pub(crate) mod criu_log;
pub(crate) mod format;
mod key;
pub mod manifest;

pub use format::{ImageMeta, Published, entries, read_image};
