// The README is the crate's front page; its examples are doctests, and
// some need both sides (`cargo test --all-features`, as scripts/test.sh
// runs them; docs.rs builds with `cli`).
#![cfg_attr(all(feature = "client", feature = "server"), doc = include_str!("../README.md"))]
#![cfg_attr(
    not(all(feature = "client", feature = "server")),
    doc = "Let a Linux process checkpoint itself with CRIU through a root service \
           (`selfdump::checkpoint(opts).await`). The README, with its examples, is this \
           page when the `client` and `server` features are both on."
)]
//!
//! ## Features
//!
#![cfg_attr(
    feature = "client",
    doc = "- `client` (default): [`checkpoint`], [`Options`], [`Outcome`];\n\
  [`blocking::checkpoint`] for programs without an executor;\n\
  [`Hooks`] and [`Resource`] around a checkpoint; [`preflight()`] and\n\
  [`preflight::Preflight`]; [`isolate::Isolated`] to start a program in a\n\
  pid namespace of its own (`selfdump run`), whose images restore as\n\
  many copies at once. All an application needs: `cargo add selfdump`."
)]
#![cfg_attr(
    not(feature = "client"),
    doc = "- `client` (default): `checkpoint`, `Options`, `Outcome`;\n\
  `blocking::checkpoint` for programs without an executor;\n\
  `Hooks` and `Resource` around a checkpoint; `preflight()` and\n\
  `preflight::Preflight`; `isolate::Isolated` to start a program in a\n\
  pid namespace of its own (`selfdump run`), whose images restore as\n\
  many copies at once. All an application needs: `cargo add selfdump`."
)]
#![cfg_attr(
    feature = "server",
    doc = "- `server`: [`server::Server`], the CRIU engine, restore helpers\n\
  ([`server::restore`], [`server::copies`] for many copies at once) and\n\
  systemd integration ([`server::systemd`]), for an init system or\n\
  supervisor that embeds the service."
)]
#![cfg_attr(
    not(feature = "server"),
    doc = "- `server`: `server::Server`, the CRIU engine, restore helpers\n\
  (`server::restore`, `server::copies` for many copies at once) and\n\
  systemd integration (`server::systemd`), for an init system or\n\
  supervisor that embeds the service."
)]
//! - `cli` (needs both): the `selfdump` binary (`serve`, `restore`, `run`,
//!   `inspect`, `check`, `key`): `cargo install selfdump --features cli`.
//! - `remote`: checkpoints in an object store (S3 and what speaks it, GCS,
//!   Azure, `file://`): `server::store`, `selfdump push`, `pull`,
//!   `restore URL`, `inspect URL`. Includes `archive`.
//! - `archive`: a checkpoint as one compressed file: `server::archive`,
//!   `selfdump export` and `import`.
//!
//! Only `client` is on by default, so that an application that adds
//! `selfdump` builds neither the root service nor the binary (30 crates
//! rather than 77, `cargo tree -e normal`).
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
//! - `nix` (server): `SO_PEERPIDFD`, which rustix lacks, and the per-thread
//!   `setfsuid`/`setfsgid` with which the service acts in a caller's
//!   directory with the caller's rights.
//! - `blake3` (server): hashes the image files, on all cores for large
//!   page files (`rayon`, `mmap`); derives the Ed25519 key from the
//!   service's secret; checks manifests signed before Ed25519 (keyed mode).
//! - `ed25519-dalek` (server, 3.x: 1.x has RUSTSEC-2022-0093): signs the
//!   manifests, so that hosts that verify cannot sign.
//! - `base64` (server): public key files in minisign's format.
//! - `object_store`, `tokio` (remote): one client for S3, GCS, Azure and
//!   local roots (Apache Arrow's; `opendal` needs a newer Rust, the AWS SDK
//!   is far heavier), and the runtime its cloud clients need, started by
//!   the store for itself. Version 0.13, with `ring`: 0.14 builds
//!   `aws-lc-rs` instead, some 50 s more of CPU on every fresh build.
//!   `remote` costs a fresh release build of the binary about 3 more
//!   minutes of CPU and 10 MB (measured on two cores: 337 s of user time
//!   and 192 s of wall time against 142 s and 131 s; 14.6 MiB against
//!   5.0 MiB), which is why it is a feature of its own.
//! - `zstd`, `tar` (archive): chunks and archives compressed; archives in a
//!   format every system unpacks.
//! - `event-listener` (server): wakes a running server when a
//!   `server::ShutdownHandle` asks it to stop, and its drain when the
//!   last connection ends (already under `async-lock`; no waker code of
//!   our own).
//! - `async-process`, `blocking`, `async-executor` (server): the `criu swrk`
//!   child, file work off the reactor, and the server's connection tasks
//!   driven inside its own future (no runtime, no threads of its own).
//! - `prost` (server): CRIU's RPC messages (`images/rpc.proto`), declared by hand.
//! - `async-signal`, `env_logger`, `lexopt` (cli): SIGTERM/SIGINT, `RUST_LOG`
//!   and argument parsing for the binary; `serde_json` (cli): `selfdump
//!   inspect --json`.
//!
//! - Dev-dependencies `async-std`, `smol`, `tokio`: only the `runtimes`
//!   example and its test, which show the client working under each.
//!   `blake3`, `zstd`, `serde_json`: the store tests check that cached
//!   chunks hash to their names, rewrite a chunk as a store could, and
//!   read `selfdump inspect --json`.
//!   async-std is discontinued (RUSTSEC-2025-0052) and appears only there;
//!   async-io is the reactor it ran on.
//!
//! The preflight's unix socket peers come from the kernel's `sock_diag`
//! netlink interface, spoken with `rustix` (a dozen lines of framing), and
//! `sd_notify` is one datagram: neither needs a crate of its own.
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

#[cfg(any(feature = "client", feature = "server"))]
mod copy_record;
#[cfg(any(feature = "client", feature = "server"))]
mod procfs;
pub mod proto;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod isolate;
#[cfg(feature = "client")]
pub use client::{
    Error, Finding, HookError, Hooks, Options, Outcome, Report, Resource, RestoreOptions, Restored,
    RestoredInfo, blocking, checkpoint, hooks, preflight, restore,
};

#[cfg(feature = "server")]
pub mod server;

#[cfg(test)]
#[path = "../tests/support/skip.rs"]
mod test_skip;
