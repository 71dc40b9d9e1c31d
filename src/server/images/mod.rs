//! What the service adds to a dump's images and reads back from them: its
//! metadata and CRIU's image format (`format.rs`, `criu_entries.rs`,
//! `criu_log.rs`), what the checkpoint needs of a host that restores it
//! (`host_needs.rs`), and the signed manifest (`manifest.rs`), its
//! signature (`signature.rs`), the keys (`key.rs`) and whose signatures a
//! host accepts (`trust.rs`).

pub(crate) mod criu_entries;
pub(crate) mod criu_log;
pub(crate) mod format;
pub mod host_needs;
mod key;
pub mod manifest;
mod signature;
pub mod trust;

pub use format::{ImageMeta, Published, entries, read_image};
