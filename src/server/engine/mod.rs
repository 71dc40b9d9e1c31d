//! Driving CRIU: one `criu swrk` child per dump (started ahead of time by
//! a [`WorkerPool`] for root callers), spoken to over CRIU's RPC protocol
//! on a `SOCK_SEQPACKET` socketpair.
//!
//! # Least privilege: who the dumping CRIU runs as
//!
//! A root caller's tree is dumped by a CRIU running as root, as before. A
//! non-root caller's is dumped by a CRIU running as the caller: its uid,
//! gid and groups, `CAP_CHECKPOINT_RESTORE` as its only capability
//! (ambient, so that it survives the exec), a bounding set cut down to
//! that one, `no_new_privs`, an empty environment, in CRIU's unprivileged
//! mode ([`Worker::start_as`]). It is still a `criu swrk` child of the
//! service, so the freeze notification still lets the service close the
//! caller's connection at the freeze. Where the kernel or the service
//! cannot start such a CRIU, the operator chooses between the root engine
//! and a refusal ([`Builder::non_root_fallback`](crate::server::Builder::non_root_fallback)).
//!
//! What the CRIU that runs as the caller can do, beyond what the caller
//! itself can: read the memory maps of the caller's processes
//! (`/proc/<pid>/map_files`) and set pids when restoring, which is what
//! `CAP_CHECKPOINT_RESTORE` grants, and only over processes that ptrace
//! rules already let the caller reach. What it can no longer do, that the
//! root CRIU could: open any file, seize another user's process, write
//! where the caller may not, ignore the caller's quota (its images are
//! the caller's from their first byte), hold the service's identity in any
//! way. A flaw in CRIU that a hostile process exploits while it is dumped
//! (its memory maps, fds and parasite answers are CRIU's input) yields
//! that uid and that one capability, not root.
//!
//! What the caller can do to it: signal it, stop it or change its
//! resource limits (same uid: kill, `prlimit`), which fails its own dump
//! only, with an answer that says so (the service reaps it and reports
//! the signal or the time limit). What the caller cannot: ptrace it, read
//! its memory, environment or fds through `/proc`, or take an fd from it
//! (`pidfd_getfd`): the kernel refuses all of them to a process whose
//! permitted capabilities are not a superset of the target's, so the
//! service's end of CRIU's channel and the directory CRIU writes into stay
//! out of the caller's reach (`tests/unprivileged.rs` checks each).
//!
//! What stays root's, in the service: who the caller is (`SO_PEERPIDFD`,
//! `SO_PEERCRED`), the policy and the embedder's check, the checks of the
//! caller and of every task of its frozen tree, the pidfd that pins it,
//! the staging directory and the publishing of the images, and the
//! signature. Which of the service's checks the unprivileged CRIU makes
//! redundant, and which stay:
//!
//! - the tree check at the freeze stays: CRIU running as the caller can
//!   dump only processes the caller could ptrace, so a setuid child or a
//!   task of another uid now fails in CRIU as well, but the service's own
//!   check fails such a dump with a clear reason, covers what ptrace allows
//!   and the caller's checks do not (a task that holds capabilities the
//!   caller lacks), and is what guards the root engine;
//! - the dumpability and capability checks of the caller stay, for the same
//!   reasons;
//! - the write-permission check of the images directory stays: the images
//!   end up there by the service's hand, and the refusal is clearer before
//!   the freeze than after it;
//! - the explanation of a failure by a capability the service lacks
//!   (`caller/caps.rs`) applies only to the root engine: the unprivileged CRIU
//!   needs no capability of the caller's uid beyond its one.
//!
//! Where it writes: into a directory of the caller's (mode 0700) inside
//! the root-only staging directory (`Staging`), which it inherits as an
//! fd and names `/proc/self/fd/N` (CRIU resolves `images_dir_fd` in its RPC
//! peer's `/proc/<pid>/fd`, which is closed to it). No process of the
//! caller can reach that directory: not by path (the staging directory is
//! root's, mode 0700), not through CRIU's `/proc` entries (see above). So
//! the bytes the service hashes and signs once CRIU has exited (or, with
//! "exit after dump", while it waits for the service at `post-dump`) are
//! the ones CRIU wrote, as with root's CRIU. What the caller's processes
//! can still steer is what CRIU reads from the caller's own tree (its
//! memory, what its parasite sends back, through a pipe that another
//! process of the caller's could reach through the frozen task's `/proc`):
//! the caller's own state, which it controls anyway, as with root's CRIU.
//! The service still treats that
//! directory as the caller's (a CRIU the caller subverted could have put
//! anything there): it accepts only regular files of the caller's with a
//! single link, opened without following symlinks or blocking, and hashes
//! them by reading, never through a mapping (a file whose writer truncates
//! it would kill a mapping's reader with `SIGBUS`). Such a CRIU could have
//! signed what it liked; what that buys is bounded by the restore: a
//! non-root checkpoint is only ever restored by a CRIU running as its
//! owner (`restore/as_owner.rs`), into tasks with the owner's credentials,
//! and copies are made of root's checkpoints only.

mod ask;
mod criu;
mod dump;
mod error;
mod flags;
mod forks;
pub mod host;
pub mod kdat;
mod non_root;
mod pool;
mod restore;
pub(crate) mod rpc;
pub(crate) mod run_as;
mod versions;
mod worker;

pub use criu::Criu;
pub use dump::{DumpHooks, DumpSpec, Dumped, FrozenVerdict};
pub use error::EngineError;
pub(crate) use flags::CriuFlags;
pub use forks::{SpawnGuard, spawn_guard};
pub(crate) use forks::{output, spawn, without_forks};
pub(crate) use non_root::NonRootEngine;
pub use non_root::NonRootFallback;
pub(crate) use pool::WorkerPool;
pub(crate) use restore::{POST_RESTORE, RestoreSpec, RestoreWorker, Starting};
pub use worker::Worker;
pub(crate) use worker::kill_group;
