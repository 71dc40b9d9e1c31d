//! Who asks, and whether they may be dumped.

pub mod caps;
pub(crate) mod pidns;
pub(crate) mod policy;
pub(crate) mod tree;
