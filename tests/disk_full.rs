//! The disk fills up (a small tmpfs, blocks and inodes) at each phase of
//! a second checkpoint: while CRIU writes, and at each step of the commit
//! (held there by the test hooks of `selfdump serve`, feature
//! `test-hooks`). The caller's answer and `latest` always agree: an error
//! leaves `latest` on the first generation, a success moves it; either way
//! it names a whole generation that restores. Once there is room again,
//! the next checkpoint works and leaves nothing of the service's behind.

mod common;

use common::looping::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The steps of a commit where the disk fills (`server/fs/generations/commit.rs`), and
/// `None`: before the dump, while CRIU writes.
const PHASES: [Option<&str>; 8] = [
    None,
    Some("dumped"),
    Some("filled"),
    Some("synced"),
    Some("renamed"),
    Some("named"),
    Some("linked"),
    Some("switched"),
];

/// A tmpfs mounted at a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Option<Self> {
        let dir = images_dir();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=48m,nr_inodes=3000,mode=0755",
                "tmpfs",
            ])
            .arg(dir.path())
            .status();
        status.is_ok_and(|s| s.success()).then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Fills `dir`'s filesystem: a file until no block is left, then empty
/// files until no inode is. Returns what to remove to make room again.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    std::fs::create_dir(&ballast).unwrap();
    let mut big = std::fs::File::create(ballast.join("big")).unwrap();
    let block = vec![7u8; 1 << 16];
    while big.write_all(&block).is_ok() {}
    let _ = big.write_all(&block[..1]);
    for i in 0.. {
        if std::fs::File::create(ballast.join(i.to_string())).is_err() {
            break;
        }
    }
    ballast
}

#[test]
fn a_full_disk_at_each_phase_leaves_latest_whole_and_the_answer_true() {
    become_subreaper();
    let Some(tmpfs) = Tmpfs::mount() else {
        return skip(Limit::NoTmpfsMount, "no small tmpfs, so no full disk");
    };
    let said: Vec<String> = PHASES
        .into_iter()
        .enumerate()
        .map(|(n, phase)| {
            let committed = full_at(tmpfs.0.path(), n, phase);
            format!(
                "{}: {}",
                phase.unwrap_or("while CRIU writes"),
                if committed {
                    "committed"
                } else {
                    "failed, latest kept"
                }
            )
        })
        .collect();
    eprintln!("disk full: {}", said.join("; "));
}

/// The disk fills at `phase` of a second checkpoint into a directory of
/// the tmpfs at `disk`; whether the second checkpoint was committed.
fn full_at(disk: &Path, n: usize, phase: Option<&str>) -> bool {
    let base = disk.join(n.to_string());
    std::fs::create_dir(&base).unwrap();
    let socket = disk.join(format!("{n}.sock"));
    let images = base.join("images");
    std::fs::create_dir(&images).unwrap();
    let holds = Holds::new();
    let logs = tempfile::tempdir().unwrap();
    let mut serve = serve_with(&socket, &logs.path().join("serve.log"), &[holds.env()]);
    // its output off the disk that fills
    let log = logs.path().join("loop.log");
    let looping = Looping::start_logged(&socket, &images, &log, &["--count", "3"]);
    looping.go(1);
    let first = looping.committed(1);
    if let Some(step) = phase {
        holds.hold(step);
        looping.go(2);
        holds.wait_held(step);
    }
    let ballast = fill(disk);
    match phase {
        Some(step) => holds.release(step),
        None => looping.go(2),
    }
    let line = looping.outcome(2);
    let now = latest(&images).unwrap();
    let moved = now != first;
    assert_eq!(
        line.contains(" continued "),
        moved,
        "{phase:?}: the answer ({line}) and latest ({now}) disagree"
    );
    if !moved {
        assert!(
            line.contains("No space left on device"),
            "{phase:?}: {line}"
        );
    }
    std::fs::remove_dir_all(&ballast).unwrap();
    assert_generations_whole(&images);
    let heard = restore_and_hear(&images, &looping);
    let i = if moved { 2 } else { 1 };
    assert!(
        heard.starts_with(&format!("gen {i} restored {now}")),
        "{heard}"
    );

    looping.go(3);
    let third = looping.committed(3);
    assert_eq!(latest(&images).as_deref(), Some(third.as_str()));
    assert_no_leftovers(&images);
    drop(looping);
    let _ = serve.kill();
    let _ = serve.wait();
    reap_orphaned_criu(Duration::from_secs(10));
    std::fs::remove_dir_all(&base).unwrap();
    moved
}
