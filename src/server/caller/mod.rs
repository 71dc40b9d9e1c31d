//! Who asks, and whether they may be dumped: the caller's credentials
//! (`credentials.rs`), its process pinned by a pidfd (`process.rs`), what
//! `/proc` says of it and of every task of its tree (`status.rs`), the
//! operator's policy and the dumpability rules (`policy.rs`), the frozen
//! tree (`tree.rs`), a caller in a pid namespace of its own (`pidns.rs`),
//! and the capabilities CRIU needs to dump another uid (`caps.rs`).

pub mod caps;
pub(crate) mod credentials;
pub(crate) mod pidns;
pub(crate) mod policy;
pub(crate) mod process;
pub(crate) mod status;
pub(crate) mod tree;
