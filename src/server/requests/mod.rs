//! One handler per request kind: each returns what its caller is told.

pub(crate) mod checkpoint;
pub(crate) mod restore;
