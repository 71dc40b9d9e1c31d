//! How to run CRIU.

use std::path::PathBuf;

/// How to run CRIU.
#[derive(Debug, Clone)]
pub struct Criu {
    /// Path of the `criu` binary.
    pub path: PathBuf,
    /// CRIU log verbosity (0–4).
    pub log_level: i32,
}

impl Default for Criu {
    fn default() -> Self {
        Self {
            path: PathBuf::from("criu"),
            log_level: 4,
        }
    }
}
