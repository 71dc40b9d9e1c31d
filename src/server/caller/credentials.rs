//! Whose rights something is done with.

/// A user's uid, gid and supplementary groups: the rights the service
/// lends a thread when it acts in a caller's directory (`run`, in
/// `fs/as_caller.rs`), or gives a CRIU it starts as that user (`apply`, in
/// `engine/run_as.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The uid (real, effective, saved and filesystem alike).
    pub uid: u32,
    /// The gid, likewise.
    pub gid: u32,
    /// The supplementary groups.
    pub groups: Vec<u32>,
}
