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

impl Criu {
    /// A command that runs this CRIU, without GnuTLS's start-up (see
    /// [`QUIET_TLS`]).
    pub(crate) fn command(&self) -> std::process::Command {
        command_at(&self.path)
    }
}

/// A command that runs the CRIU at `path` (see [`Criu::command`]).
pub(crate) fn command_at(path: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(path);
    cmd.env(QUIET_TLS.0, QUIET_TLS.1);
    cmd
}

/// CRIU links GnuTLS for its page server's `--tls`, which selfdump never
/// asks for, and GnuTLS initializes itself as it is loaded (p11-kit's
/// modules, the system's priorities) unless this is set: ~0.9 ms of every
/// CRIU start here (`criu --version` 4.6 → 3.7 ms, medians of 40). Only a
/// CRIU asked for TLS would need that initialization.
pub(crate) const QUIET_TLS: (&str, &str) = ("GNUTLS_NO_IMPLICIT_INIT", "1");

impl Default for Criu {
    fn default() -> Self {
        Self {
            path: PathBuf::from("criu"),
            log_level: 4,
        }
    }
}
