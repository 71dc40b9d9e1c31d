//! The adversarial suite: each attack runs against a real service and
//! real CRIU, and must be refused with the right error or survived. After
//! each one the service still serves a normal checkpoint, holds no fd it
//! did not hold before (by identity), keeps its warm workers and has no
//! zombie child (`ctx.rs`). Every verdict names the steps the attack
//! reached.
//!
//! Each attack runs in a process of its own (this binary, re-run for one
//! attack: `runner.rs`), so that the fds and children the checks look at
//! are its service's alone; independent attacks run side by side
//! (`ADVERSARIAL_JOBS`, default 4). The run ends with the line
//! `adversarial: N attacks, N refused or survived, 0 served, ...`, which
//! lists the skips. `ADVERSARIAL_ONLY=<part of a name>` (or a test-name
//! filter) runs only the attacks so named; `ADVERSARIAL_ALONE=skip` all
//! but those that must run alone (`ALONE`), `ADVERSARIAL_ALONE=only` those
//! (`scripts/run-tests.py` runs the rest beside other test binaries).
//! Races are time-boxed (a few seconds); `SELFDUMP_LONG_RACES=1` runs
//! their long form.
//!
//! This file holds the table of attacks; the attacks live in one module
//! per class (`frames`, `identity`, `tree`, `directory`, `limits`,
//! `faults`, `races`, `resources`), their shared helpers in `support`.

#[path = "../common/mod.rs"]
mod common;
mod ctx;
mod directory;
mod faults;
mod fds;
mod frames;
mod identity;
mod limits;
mod races;
mod resources;
mod runner;
mod serve;
mod support;
mod tree;

pub use ctx::{Ctx, assert_still_serves};

/// One attack: sets up its service in the context, returns what happened.
type Attack = fn(&mut Ctx) -> String;

/// Every attack, in the order they run.
const ATTACKS: &[(&str, Attack)] = &[
    (
        "spoofed pid in the request",
        identity::spoofed_pid_in_request,
    ),
    (
        "dump is of the connecting pid",
        identity::dump_is_always_of_the_connecting_pid,
    ),
    ("recycled caller pid", identity::recycled_pid),
    ("another user's process", identity::another_users_process),
    ("setuid child in the tree", tree::setuid_child_in_tree),
    (
        "privilege-dropped child of a root caller",
        tree::privilege_dropped_child_of_root,
    ),
    (
        "non-dumpable child in the tree",
        tree::nondumpable_child_in_tree,
    ),
    (
        "thread of another uid in the caller",
        tree::thread_of_another_uid,
    ),
    ("non-dumpable caller", tree::nondumpable_caller),
    ("unwritable images dir", directory::unwritable_images_dir),
    (
        "foreign-owned images dir",
        directory::foreign_owned_images_dir,
    ),
    (
        "non-directory images fd",
        directory::non_directory_images_fd,
    ),
    (
        "symlinks planted in the images dir",
        directory::symlinks_planted_in_images_dir,
    ),
    (
        "oversize length claim (4 GiB)",
        frames::oversize_length_claim,
    ),
    ("truncated frame", frames::truncated_frame),
    ("trailing bytes", frames::trailing_bytes),
    ("garbage bytes", frames::garbage_bytes),
    ("wrong magic", frames::wrong_magic),
    ("wrong version", frames::wrong_version),
    ("253 fds in one message", frames::fds_253_in_one_message),
    ("1000 idle connections", limits::idle_connections_1000),
    ("one byte a second", limits::one_byte_a_second),
    ("close mid-frame", frames::close_mid_frame),
    ("client dies mid-dump", faults::client_dies_mid_dump),
    ("criu killed mid-dump", faults::criu_killed_mid_dump),
    (
        "service restarted between freeze and result",
        faults::service_restarted_between_freeze_and_result,
    ),
    ("disk full", directory::disk_full),
    ("dump timeout exceeded", faults::dump_timeout_exceeded),
    ("per-uid dump limit", limits::dumps_per_uid_limit),
    ("global dump limit", limits::global_dump_limit),
    ("staging swap race", races::staging_swap_race),
    (
        "sticky directory with root's files",
        races::sticky_directory_with_roots_files,
    ),
    ("staging moved mid-dump", races::staging_moved_mid_dump),
    (
        "images rewritten while restoring",
        races::images_rewritten_while_restoring,
    ),
    (
        "fd exhaustion under a 1024 fd limit",
        resources::fd_exhaustion,
    ),
    ("unclaimed results", resources::unclaimed_results),
    (
        "permitted capabilities kept across setuid",
        resources::permitted_capabilities,
    ),
    ("zombie child", resources::zombie_child),
    ("job-id probing", resources::job_id_probing),
];

/// Attacks that must run alone: they steer the kernel's next pid
/// (`ns_last_pid`), which processes forking beside them would disturb.
const ALONE: &[&str] = &["recycled caller pid"];

/// Attacks that take longest, started first so that the others fill the
/// time beside them.
const LONGEST_FIRST: &[&str] = &[
    "fd exhaustion under a 1024 fd limit",
    "unclaimed results",
    "images rewritten while restoring",
    "staging swap race",
    "1000 idle connections",
    "criu killed mid-dump",
    "service restarted between freeze and result",
    "dump timeout exceeded",
];

fn main() -> std::process::ExitCode {
    runner::main(ATTACKS, ALONE, LONGEST_FIRST)
}
