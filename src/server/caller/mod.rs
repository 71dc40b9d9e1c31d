//! Who asks, and whether they may be dumped.

pub mod caps;
pub(crate) mod credentials;
pub(crate) mod pidns;
pub(crate) mod policy;
pub(crate) mod process;
pub(crate) mod status;
pub(crate) mod tree;
