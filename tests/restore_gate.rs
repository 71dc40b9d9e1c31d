//! A root checkpoint's large pages files are hashed while CRIU restores,
//! and the restored tree is held at CRIU's `post-restore` action until
//! they verified (`server/restore/gate.rs`). A tampered pages file is
//! refused all the same, with the file named, and the tree never runs.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// `selfdump restore DIR` with the debug log: success, and stderr.
fn restore_logged(images: &Path) -> (bool, String, String) {
    let out = Command::new(selfdump_bin())
        .arg("restore")
        .arg("--criu")
        .arg(criu().path)
        .arg(images)
        .env("RUST_LOG", "selfdump=debug")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pages_hashed_during_the_restore_hold_the_tree_until_they_verify() {
    let service = Service::start();
    // 48 MiB: pages above the size hashed while CRIU runs
    let (images, program) = checkpoint_and_kill(&service, 48);
    let latest = images.path().join("latest");
    let pages = image_files(&latest)
        .into_iter()
        .find(|f| f.0.starts_with("pages-"))
        .map(|f| latest.join(f.0))
        .expect("a pages file");
    let size = std::fs::metadata(&pages).unwrap().len();

    // tampered: refused, named, and the tree never ran
    flip_byte(&pages, size / 2);
    let before = program.output();
    let (ok, _, stderr) = restore_logged(images.path());
    assert!(!ok, "a tampered pages file was restored:\n{stderr}");
    assert!(
        stderr.contains("1 left to hash during the restore"),
        "the pages were not hashed during the restore:\n{stderr}"
    );
    let name = pages.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&format!("{name} changed since the dump (its hash differs)")),
        "{stderr}"
    );
    // CRIU rebuilt the tree and killed it at the gate: at most a zombie
    // of ours (this test is a subreaper) is left, never a running task
    let state = process_state(program.pid);
    assert!(
        matches!(state, None | Some('Z')),
        "pid {} is in state {state:?} after a refusal",
        program.pid
    );
    if state.is_some() {
        kill_and_reap(program.pid);
    }
    assert_eq!(
        program.output(),
        before,
        "the refused tree ran and wrote to its log"
    );

    // the same bytes put back: restored, through the same gate
    flip_byte(&pages, size / 2);
    let (ok, stdout, stderr) = restore_logged(images.path());
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("1 left to hash during the restore"),
        "{stderr}"
    );
    let pid: i32 = stdout.trim().parse().unwrap();
    assert_eq!(pid, program.pid);
    program.wait_for("the restored program", |l| {
        l.starts_with("checkpoint restored")
    });
    kill_and_reap(pid);
}
