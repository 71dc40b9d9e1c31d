//! The filesystem rule, and everything the service does in directories.
//!
//! In a place the caller can write, the service acts with the caller's own
//! credentials (`as_caller.rs`) or through an fd it opened itself
//! (`O_NOFOLLOW`) and verified, never through a name the caller could
//! change between two calls. Root's directories: one inside a caller's
//! directory (`root_subdir.rs`: the staging directory, a restore's verified
//! images), the service's own elsewhere (`service_dir.rs`: logs, caches,
//! the signing key's, `key_file.rs`), and the trust directory of public
//! keys, checked like the key file (`trust_dir.rs`). A dump's way into a caller's
//! directory: staged (`staging.rs`), committed as a generation and aged
//! out (`generations/`), with one `syncfs` shared by the commits that end
//! together on a filesystem (`shared_sync.rs`); what a service that died
//! left there goes (`leftovers.rs`). `test_hold.rs` holds a commit between its steps for
//! the crash tests.

pub(crate) mod as_caller;
pub mod generations;
pub(crate) mod key_file;
pub(crate) mod leftovers;
pub(crate) mod root_subdir;
pub(crate) mod service_dir;
pub(crate) mod shared_sync;
// the restore work edits it now: its `pub` items narrow once that merges
#[allow(unreachable_pub)]
pub(crate) mod staging;
pub(crate) mod test_hold;
mod trust_dir;
