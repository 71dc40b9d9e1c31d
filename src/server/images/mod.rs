//! What the service adds to a dump's images and reads back from them.

pub(crate) mod format;
pub mod inspect;
mod key;
pub mod manifest;

pub use format::{ImageMeta, Published, entries, read_image};
