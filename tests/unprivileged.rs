//! The non-root path end to end, through a running service, as uid 65534:
//! the caller's tree (a child, threads) is dumped by a CRIU running as the
//! caller, the images are the caller's, the owner restores them through
//! the service (as itself), the restored copy checkpoints again, "exit
//! after dump" works, and a change after signing is refused.

mod common;
use common::Guarded;

use common::*;
use selfdump::server::Policy;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key, MANIFEST_FILE, Manifest};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

fn service_allowing_nobody() -> Service {
    Service::start_with(|b| {
        b.policy(Policy {
            allow_uids: [NOBODY].into_iter().collect(),
            ..Policy::default()
        })
    })
}

/// A directory of nobody's, mode 0755.
fn nobodys_dir() -> tempfile::TempDir {
    let dir = images_dir();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// `selfdump restore --socket S DIR` as nobody: the pid, or the error text.
fn restore_as_nobody(service: &Service, images: &Path) -> Result<i32, String> {
    let out = Command::new(selfdump_bin())
        .args(["restore", "--socket"])
        .arg(&service.socket)
        .arg(images)
        .env("RUST_LOG", "warn")
        .uid(NOBODY)
        .gid(NOBODY)
        .output_guarded()
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// A line of `/proc/<pid>/status`, without its label.
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"))
        .trim()
        .to_owned()
}

/// Every file of the generation `latest` names in `dir` is nobody's, mode
/// 0600, and the manifest, signed with the service's key, names nobody and
/// the tree's pids.
fn assert_nobodys_signed_images(dir: &Path, pids: &[i32]) {
    // the service removes its staging directory right after answering
    assert!(
        poll_for(std::time::Duration::from_secs(10), || staging_dirs(dir)
            .is_empty()),
        "staging left: {:?}",
        staging_dirs(dir)
    );
    let generation = dir.join("latest");
    let files = image_files(&generation);
    assert!(files.iter().any(|f| f.0 == "pstree.img"), "{files:?}");
    for (name, uid, mode) in &files {
        assert_eq!((*uid, *mode), (NOBODY, 0o600), "{name}");
    }
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    let manifest = Manifest::verify(
        &std::fs::read(generation.join(MANIFEST_FILE)).unwrap(),
        &key,
    )
    .unwrap();
    assert_eq!((manifest.meta.uid, manifest.meta.gid), (NOBODY, NOBODY));
    let mut recorded = manifest.meta.pids.clone();
    recorded.sort();
    let mut expected = pids.to_vec();
    expected.sort();
    assert_eq!(recorded, expected, "the tree's pids");
}

#[test]
fn a_non_root_tree_with_a_child_and_threads_restores_as_its_owner_and_checkpoints_again() {
    let service = service_allowing_nobody();
    let (first, second) = (nobodys_dir(), nobodys_dir());
    let mut program = Program::start_as(
        &service,
        first.path(),
        &[
            "--children",
            "1",
            "--threads",
            "3",
            "--alloc-mb",
            "8",
            "--at",
            "2",
            "--at2",
            "8",
            "--images2",
            second.path().to_str().unwrap(),
            "--until",
            "600",
            "--interval-ms",
            "100",
        ],
        Some(NOBODY),
    );
    let child = program.children()[0];
    let line = program.outcome_or_state();
    assert!(
        line.starts_with("checkpoint continued") && line.contains(" 2 processes"),
        "{line}"
    );
    let threads = status_field(program.pid, "Threads");
    assert!(threads.parse::<u32>().unwrap() >= 4, "{threads} threads");
    program.kill();
    kill_and_reap(child);
    assert!(
        !program.output().contains("checkpoint2"),
        "the original was killed before its second checkpoint"
    );
    assert_nobodys_signed_images(first.path(), &[program.pid, child]);

    // restored through the service by its owner, as its owner
    let restored = restore_as_nobody(&service, first.path()).expect("nobody restores");
    assert_eq!(restored, program.pid);
    program.wait_for("the copy's memory check", |l| l == "memory intact");
    assert_eq!(status_field(restored, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(restored, "CapEff"), "0000000000000000");
    assert_eq!(status_field(restored, "Threads"), threads, "every thread");
    assert_eq!(status_field(child, "Uid"), "65534\t65534\t65534\t65534");

    // the copy, nobody's, checkpoints again: dumped by a CRIU of its uid
    let line = program.wait_for("the second checkpoint", |l| l.starts_with("checkpoint2 "));
    assert!(
        line.starts_with("checkpoint2 continued: job ") && line.ends_with(", 2 processes"),
        "{line}"
    );
    assert_nobodys_signed_images(second.path(), &[program.pid, child]);
    kill_and_reap(restored);
    kill_and_reap(child);
}

#[test]
fn exit_after_dump_as_nobody_and_a_change_after_signing_is_refused() {
    let service = service_allowing_nobody();
    let images = nobodys_dir();
    let mut program = Program::start_as(
        &service,
        images.path(),
        &[
            "--exit-after",
            "--alloc-mb",
            "4",
            "--at",
            "1",
            "--until",
            "600",
            "--interval-ms",
            "50",
        ],
        Some(NOBODY),
    );
    let status = program.wait();
    assert!(!status.success(), "CRIU ended the original: {status:?}");
    assert!(
        !program.output().contains("count 2"),
        "{}",
        program.output()
    );
    assert_nobodys_signed_images(images.path(), &[program.pid]);

    // the owner changes a page after signing: refused, nothing runs
    let pages = images.path().join("latest/pages-1.img");
    let signed = std::fs::read(&pages).unwrap();
    let mut changed = signed.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&pages, &changed).unwrap();
    let e = restore_as_nobody(&service, images.path()).expect_err("changed images restored");
    assert!(e.contains("pages-1.img changed since the dump"), "{e}");
    assert!(process_state(program.pid).is_none(), "nothing of it runs");

    // as signed: restored, and the copy goes on
    std::fs::write(&pages, &signed).unwrap();
    let restored = restore_as_nobody(&service, images.path()).expect("restored");
    assert_eq!(restored, program.pid);
    program.wait_for("the copy", |l| l == "memory intact");
    program.wait_for("the copy counting", |l| l == "count 2");
    kill_and_reap(restored);
}
