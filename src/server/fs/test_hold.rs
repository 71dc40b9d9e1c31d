//! Holds between the steps of a commit, for the tests that kill the service
//! or CRIU at each step (`tests/commit_crashes.rs`). Only with the hidden
//! cargo feature `test-hooks` (the test suite runs with `--all-features`);
//! in any other build [`hold`] is empty and reads nothing.
//!
//! With `SELFDUMP_TEST_HOLD_DIR=D` in the service's environment, a commit
//! reaching step `S` while the file `D/hold-S` exists creates `D/held-S`
//! and waits until `D/hold-S` is removed (or the service is killed).

/// Waits at `step` while the test asks (see the module docs).
#[cfg(feature = "test-hooks")]
pub(crate) fn hold(step: &str) {
    let Some(dir) = std::env::var_os("SELFDUMP_TEST_HOLD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let hold = dir.join(format!("hold-{step}"));
    if !hold.exists() {
        return;
    }
    let held = dir.join(format!("held-{step}"));
    let _ = std::fs::write(&held, std::process::id().to_string());
    log::warn!("test hook: held at {step} until {} goes", hold.display());
    while hold.exists() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&held);
}

/// Does nothing: holds exist only with the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn hold(_step: &str) {}
