//! # selfdump
//!
//! Let a Linux process checkpoint itself with [CRIU](https://criu.org):
//!
//! ```no_run
//! # async fn run() -> Result<(), selfdump::Error> {
//! use selfdump::{checkpoint, Options, Outcome};
//!
//! match checkpoint(Options::new("/var/lib/myapp/images")).await? {
//!     Outcome::Continued(report) => println!("dumped, frozen for {} us", report.frozen.as_micros()),
//!     Outcome::Restored(info) => println!("I am a copy restored from {}", info.images_dir.display()),
//! }
//! # Ok(()) }
//! ```
//!
//! The call connects to a service running as root (`selfdump serve`, or a
//! [`server::Server`] embedded in an init system). The service learns who is
//! calling from the kernel (`SO_PEERPIDFD`, `SO_PEERCRED`), checks the
//! caller, and has CRIU dump the caller and its children into the directory
//! the caller opened and passed as a file descriptor. It closes the
//! connection while the tree is frozen, so the images hold a half-closed
//! connection: both the original process and a copy restored from the
//! images wake up reading it. The client then tells which of the two it is
//! by its kernel identity (start time, pidfd inode, boot id).
//!
//! ## Features
//!
//! - `client` (default): [`checkpoint`], [`Options`], [`Outcome`];
//!   [`blocking::checkpoint`] for programs without an executor;
//!   [`Hooks`] and [`Resource`] around a checkpoint; [`preflight()`] and
//!   [`preflight::Preflight`].
//! - `server` (default): [`server::Server`], the CRIU engine and restore helpers.
//! - `cli` (default, needs both): the `selfdump` binary (`serve`, `restore`,
//!   `check`).
//!
//! ## Why each dependency is here
//!
//! - `async-io`, `futures-lite`: the reactor under async-std and smol; the
//!   client and server use it directly, so they run under any executor
//!   (tokio included) without one of their own.
//! - `rustix`: `sendmsg`/`recvmsg` with `SCM_RIGHTS` and `MSG_CMSG_CLOEXEC`
//!   (the `sendfd` crate receives without `MSG_CMSG_CLOEXEC`, which would leak
//!   client fds into CRIU), plus the `*at` file calls and `/proc`-free process calls.
//! - `rmp-serde`, `serde`: the MessagePack bodies of the wire format.
//! - `log`: diagnostics, routed by whatever logger the application installs.
//! - `async-lock` (client, server): serialises one process's checkpoints; the
//!   server's limits and job results.
//! - `nix` (server): `SO_PEERPIDFD`, which rustix lacks.
//! - `async-process`, `blocking`, `async-executor` (server): the `criu swrk`
//!   child, file work off the reactor, and the server's connection tasks
//!   driven inside its own future (no runtime, no threads of its own).
//! - `prost` (server): CRIU's RPC messages (`images/rpc.proto`), declared by hand.
//! - `async-signal`, `env_logger`, `lexopt` (cli): SIGTERM/SIGINT, `RUST_LOG`
//!   and argument parsing for the binary.
//!
//! async-std is not used (discontinued, RUSTSEC-2025-0052); async-io is the
//! reactor it ran on.
#![deny(missing_docs)]

pub mod proto;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub use client::{
    Error, Finding, HookError, Hooks, Options, Outcome, Report, Resource, RestoredInfo, blocking,
    checkpoint, hooks, preflight,
};

#[cfg(feature = "server")]
pub mod server;
