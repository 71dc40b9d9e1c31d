//! The filesystem rule, and everything the service does in directories.

pub(crate) mod as_caller;
pub mod generations;
mod key_file;
pub(crate) mod leftovers;
pub(crate) mod root_subdir;
pub(crate) mod service_dir;
// the restore work edits it now: its `pub` items narrow once that merges
#[allow(unreachable_pub)]
pub(crate) mod staging;
pub(crate) mod test_hold;
