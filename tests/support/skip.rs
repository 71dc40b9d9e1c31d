//! Skips: the only way a test of selfdump may skip, and only for one of the
//! conditions named in [`Limit`], which the project cannot change on the
//! machine running the tests. Anything else a test cannot do is a failure.
//!
//! A skip is loud: it is written straight to stderr (past the test
//! harness's capture, so it shows for passing tests too) and appended to the
//! skip log (`$SELFDUMP_SKIP_LOG`, else `skips.log` in the target's
//! temporary directory). `scripts/test.sh` clears that log first and ends
//! with its list; a skip it does not know fails the run.
//!
//! Shared by the integration tests (`tests/common`) and the crate's unit
//! tests (`#[path]`-included from `src/lib.rs`): it uses std alone.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;

/// A condition of the machine that the project cannot change there, and
/// under which a test may skip (part of) what it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Unit tests that change file ownership or credentials run as root
    /// only; `scripts/test.sh` always runs as root, plain `cargo test` by a
    /// user may not.
    NotRoot,
    /// The machine has no IPv6 loopback address (`::1`): an IPv6-disabled
    /// kernel or network namespace.
    NoIpv6Loopback,
    /// `io_uring_setup` fails (the kernel is built without it, or
    /// `kernel.io_uring_disabled`, or a seccomp filter forbids it).
    NoIoUring,
    /// `criu check --feature uffd-noncoop` fails: the kernel lacks
    /// non-cooperative userfaultfd, which lazy restores need.
    NoUffd,
    /// This process may not create a pid namespace (`unshare -p` refused:
    /// a container without CAP_SYS_ADMIN in its user namespace).
    NoPidNamespace,
    /// This process may not mount a tmpfs (no CAP_SYS_ADMIN in the mount
    /// namespace's owner), so no small full disk can be made.
    NoTmpfsMount,
    /// Root lacks CAP_SYS_RESOURCE here (a container's bounding set), so a
    /// root CRIU cannot dump another uid's process ("Can't get rlimit").
    NoCapSysResource,
}

impl Limit {
    /// The name the skip log and `scripts/test.sh` know it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotRoot => "not-root",
            Self::NoIpv6Loopback => "no-ipv6-loopback",
            Self::NoIoUring => "no-io-uring",
            Self::NoUffd => "no-uffd",
            Self::NoPidNamespace => "no-pid-namespace",
            Self::NoTmpfsMount => "no-tmpfs-mount",
            Self::NoCapSysResource => "no-cap-sys-resource",
        }
    }
}

/// Records that the calling test skips (part of) its checks because of
/// `limit`; `what` says what goes unchecked and what the machine said.
/// The caller then returns (or goes on without the part skipped).
#[track_caller]
pub fn skip(limit: Limit, what: &str) {
    let at = std::panic::Location::caller();
    let test = std::thread::current()
        .name()
        .unwrap_or("?")
        .replace(char::is_whitespace, "_");
    let line = format!(
        "SKIPPED [{}] {test} ({}:{}): {}",
        limit.name(),
        at.file(),
        at.line(),
        what.replace('\n', " ")
    );
    let _ = writeln!(std::io::stderr(), "{line}");
    let log = std::env::var_os("SELFDUMP_SKIP_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let dir = option_env!("CARGO_TARGET_TMPDIR").unwrap_or("/tmp");
            std::path::Path::new(dir).join("skips.log")
        });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", log.display());
    }
}
