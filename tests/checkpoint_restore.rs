//! A program checkpoints itself through a real service and real CRIU, is
//! killed, and comes back from its images.

mod common;

use common::*;
use std::path::Path;

fn count_after(output: &str, marker: &str) -> Vec<u64> {
    let rest = &output[output
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{output}"))..];
    rest.lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

#[test]
fn continued_process_gets_a_report_and_caller_owned_0600_images() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "2", "--until", "4", "--interval-ms", "50"],
    );
    let line = program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "));
    assert!(line.starts_with("checkpoint continued: frozen "), "{line}");
    assert!(line.ends_with(", 1 processes"), "{line}");
    let frozen_us: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(frozen_us > 0, "CRIU's frozen time is reported: {line}");
    assert!(program.wait().success());
    assert!(
        program.output().contains("count 3\ncount 4\ndone"),
        "{}",
        program.output()
    );

    let top: Vec<String> = image_files(images.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(top.len(), 2, "one generation and latest: {top:?}");
    assert!(top[0].starts_with("gen-") && top[1] == "latest", "{top:?}");
    let files = image_files(&images.path().join("latest"));
    let names: Vec<&str> = files.iter().map(|(n, ..)| n.as_str()).collect();
    for expected in [
        "pstree.img",
        "inventory.img",
        "dump.log",
        "selfdump-manifest",
        "stats-dump",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(names.iter().any(|n| n.starts_with("pages-")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with(".selfdump-")),
        "staging dir left: {names:?}"
    );
    let caller_uid = rustix::process::getuid().as_raw();
    for (name, uid, mode) in &files {
        assert_eq!((*uid, *mode), (caller_uid, 0o600), "{name}");
    }
}

#[test]
fn killed_program_is_restored_and_counts_on_from_its_checkpoint() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "3", "--until", "8", "--interval-ms", "100"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    program.wait_for("count 5", |l| l == "count 5");
    program.kill();
    let before_restore = program.output();
    assert!(!before_restore.contains("done"), "killed before the end");

    let pid = restore(images.path()).expect("selfdump restore");
    assert_eq!(pid, program.pid, "CRIU restores the same pid");
    program.wait_for("the restored copy's outcome", |l| {
        l.starts_with("checkpoint restored: job ")
    });
    program.wait_for("the restored copy to finish", |l| l == "done");
    let output = program.output();
    // The copy resumes right after its checkpoint at 3, not where the original died.
    assert_eq!(
        count_after(&output, "checkpoint restored"),
        vec![4, 5, 6, 7, 8],
        "{output}"
    );
    kill_and_reap(pid);
}

#[test]
fn children_are_dumped_and_restored_with_their_parent() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &[
            "--children",
            "2",
            "--at",
            "2",
            "--until",
            "600",
            "--interval-ms",
            "100",
        ],
    );
    let line = program.wait_for("the checkpoint", |l| l.starts_with("checkpoint "));
    assert!(line.ends_with(", 3 processes"), "{line}");
    let started = program.wait_for("the child pids", |l| l.starts_with("started pid"));
    let children: Vec<i32> = started
        .split(['[', ']'])
        .nth(1)
        .unwrap()
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 2);

    program.kill();
    for &child in &children {
        kill_and_reap(child); // they die with their parent (PDEATHSIG); reap them
    }
    let root = restore(images.path()).expect("selfdump restore");
    program.wait_for("the restored copy", |l| {
        l.starts_with("checkpoint restored")
    });
    for &child in &children {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).expect("child restored");
        let ppid: i32 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ppid, root, "child {child} is again a child of {root}");
    }
    kill_and_reap(root);
    for &child in &children {
        kill_and_reap(child);
    }
}

#[test]
fn exit_after_dump_ends_the_original_once_the_images_are_safe() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &[
            "--exit-after",
            "--at",
            "2",
            "--until",
            "600",
            "--interval-ms",
            "50",
        ],
    );
    let status = program.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "CRIU kills the dumped tree: {status:?}"
    );
    let output = program.output();
    assert!(
        !output.contains("checkpoint continued") && !output.contains("checkpoint error"),
        "{output}"
    );
    assert!(images.path().join("latest/pstree.img").exists());

    let pid = restore(images.path()).expect("restore");
    program.wait_for("the restored copy", |l| {
        l.starts_with("checkpoint restored")
    });
    program.wait_for("count 3 after restore", |l| l == "count 3");
    kill_and_reap(pid);
}

#[test]
fn failed_dump_reaches_the_original_which_keeps_running() {
    // A live connection to a socket outside the tree makes CRIU refuse the
    // dump (the preflight would catch it first: skip it to reach CRIU).
    let service = Service::start();
    let images = images_dir();
    let listener_dir = tempfile::tempdir().unwrap();
    let path = listener_dir.path().join("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut program = Program::start(
        &service,
        images.path(),
        &[
            "--skip-preflight",
            "--exit-after",
            "--connect",
            path.to_str().unwrap(),
            "--at",
            "2",
            "--until",
            "4",
            "--interval-ms",
            "50",
        ],
    );
    let (_peer, _) = listener.accept().unwrap();
    let line = program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "));
    assert!(
        line.starts_with("checkpoint error: checkpoint failed: criu dump failed: "),
        "{line}"
    );
    assert!(
        line.contains("dump.log"),
        "the error points at the log: {line}"
    );
    assert!(
        program.wait().success(),
        "the original goes on and ends normally"
    );
    assert!(program.output().contains("count 4\ndone"));
    let names: Vec<String> = image_files(images.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(
        names,
        vec!["dump.log".to_string()],
        "only the log is kept after a failure"
    );
}

#[test]
fn restore_names_the_process_holding_a_needed_pid() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "1", "--until", "600", "--interval-ms", "50"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    let err = restore(images.path()).expect_err("the original still runs");
    assert!(
        err.contains(&format!(
            "pid {} is in use by process {}",
            program.pid, program.pid
        )),
        "{err}"
    );
    assert!(err.contains("counter"), "names the holder: {err}");
    program.kill();
    assert!(Path::new(images.path()).join("latest/pstree.img").exists());
}
