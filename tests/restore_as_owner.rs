//! A checkpoint of a non-root process is restored by CRIU running as its
//! owner (`--unprivileged`, with only `CAP_CHECKPOINT_RESTORE` and
//! `CAP_SETPCAP`), so a path the checkpoint recorded that its owner has
//! since pointed at a file of root's gets it nothing. The checkpoint is a
//! real one: nobody's program checkpoints itself through the service
//! (whose CRIU runs as nobody).

mod common;
use common::Guarded;

use common::*;
use selfdump::server::Policy;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

const NOBODY: u32 = 65534;

#[test]
fn a_non_root_checkpoint_restores_as_its_owner_and_its_paths_cannot_reach_roots_files() {
    let service = Service::start_with(|b| {
        b.policy(Policy {
            allow_uids: [NOBODY].into_iter().collect(),
            ..Policy::default()
        })
    });
    // nobody's directory, holding its images and the file its program
    // writes to (opened for append: the path the checkpoint records)
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(base.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let images = base.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::os::unix::fs::chown(&images, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut original = Program::start_as(
        &service,
        &images,
        &["--at", "1", "--until", "100000", "--interval-ms", "50"],
        Some(NOBODY),
    );
    let line = original.outcome_or_state();
    assert!(line.starts_with("checkpoint continued"), "{line}");
    let (pid, log) = (original.pid, original.log.clone());
    original.kill();
    let restore_as_nobody = || {
        let out = Command::new(selfdump_bin())
            .args(["restore", "--socket"])
            .arg(&service.socket)
            .arg(&images)
            .env("RUST_LOG", "warn")
            .uid(NOBODY)
            .gid(NOBODY)
            .output_guarded()
            .unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<i32>()
                .unwrap()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };

    // restored through the service, by its owner, as its owner
    let restored = restore_as_nobody().expect("nobody restores its own checkpoint");
    assert_eq!(restored, pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        log
    );
    kill_and_reap(pid);

    // the owner points the recorded path at a file of root's
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "root's\n").unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(secret_dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    std::os::unix::fs::lchown(&log, Some(NOBODY), Some(NOBODY)).unwrap();
    let e = restore_as_nobody().expect_err("restored with root's file");
    assert!(e.contains("restore failed"), "{e}");
    // (CRIU killed the task it had begun: at most a zombie, reaped here)
    assert!(
        poll_for(std::time::Duration::from_secs(10), || {
            process_state(pid).is_none_or(|s| s == 'Z')
        }),
        "nothing of it runs"
    );
    kill_and_reap(pid);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root's\n");
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0);
}
