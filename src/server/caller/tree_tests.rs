//! The frozen-tree check against a directory laid out like `/proc`: no
//! root, no real tree. The tree's root is pinned by this test process's
//! own pidfd (alive throughout), under a made-up pid.

use super::*;
use crate::server::caller::status::{Caps, Ids};
use std::path::Path;

/// The caller's uid and gid: this process's, so that the files written
/// here are owned as a real task's `/proc` files would be.
fn me() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// A caller without capabilities, held to the ptrace rule.
fn caller() -> TaskStatus {
    let (uid, gid) = me();
    TaskStatus {
        uids: Ids::all(uid),
        gids: Ids::all(gid),
        groups: vec![],
        caps: Caps::default(),
        zombie: false,
    }
}

/// The root of the tree: `pid` in the fake `/proc`, alive as this process.
fn root(pid: i32) -> Process {
    let mut me = Process::open(std::process::id() as i32).unwrap();
    me.pid = pid;
    me
}

/// Writes task `tid` of `pid`: its name, ids and children.
fn task(proc: &Path, pid: i32, tid: i32, comm: &str, uids: [u32; 4], children: &[i32]) {
    let (_, gid) = me();
    let dir = proc.join(format!("{pid}/task/{tid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
    let [r, e, s, f] = uids;
    let status = format!(
        "Name:\t{comm}\nState:\tS (sleeping)\nUid:\t{r}\t{e}\t{s}\t{f}\n\
         Gid:\t{gid}\t{gid}\t{gid}\t{gid}\nGroups:\t\nCapPrm:\t0000000000000000\n\
         CapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n"
    );
    std::fs::write(dir.join("status"), status).unwrap();
    std::fs::write(
        dir.join("stat"),
        format!("{tid} ({comm}) S 1 {pid} {pid}\n"),
    )
    .unwrap();
    let children: Vec<String> = children.iter().map(i32::to_string).collect();
    std::fs::write(dir.join("children"), children.join(" ")).unwrap();
}

fn check(proc: &Path, root_pid: i32) -> Result<(), String> {
    let proc = ProcFs::at(proc.to_str().unwrap());
    check_frozen_tree(proc, &root(root_pid), &caller())
}

#[test]
fn a_tree_of_the_callers_own_tasks_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    task(dir.path(), 100, 100, "app", [uid; 4], &[101]);
    task(dir.path(), 100, 102, "app-worker", [uid; 4], &[]);
    task(dir.path(), 101, 101, "child", [uid; 4], &[]);
    assert_eq!(check(dir.path(), 100), Ok(()));
}

#[test]
fn a_child_of_another_uid_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    let other = uid.wrapping_add(4242);
    task(dir.path(), 100, 100, "app", [uid; 4], &[101]);
    task(dir.path(), 101, 101, "intruder", [other; 4], &[]);
    let why = check(dir.path(), 100).unwrap_err();
    assert!(
        why.contains("task pid 101 (intruder) in the caller's tree"),
        "{why}"
    );
}

#[test]
fn a_setuid_thread_of_the_caller_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    let other = uid.wrapping_add(4242);
    task(dir.path(), 100, 100, "app", [uid; 4], &[]);
    task(dir.path(), 100, 103, "app", [uid, other, other, other], &[]);
    let why = check(dir.path(), 100).unwrap_err();
    assert!(
        why.contains("thread 103 (app) of the caller (pid 100)") && why.contains("changed ids"),
        "{why}"
    );
}

#[test]
fn a_grandchild_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    task(dir.path(), 100, 100, "app", [uid; 4], &[101]);
    task(dir.path(), 101, 101, "child", [uid; 4], &[102]);
    let other = uid.wrapping_add(4242);
    task(
        dir.path(),
        102,
        102,
        "grandchild",
        [uid, uid, other, uid],
        &[],
    );
    let why = check(dir.path(), 100).unwrap_err();
    assert!(why.contains("task pid 102 (grandchild)"), "{why}");
}

#[test]
fn a_thread_gone_since_the_listing_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    task(dir.path(), 100, 100, "app", [uid; 4], &[]);
    // listed among the threads, gone before its files are read
    std::fs::create_dir_all(dir.path().join("100/task/105")).unwrap();
    assert_eq!(check(dir.path(), 100), Ok(()));
}

#[test]
fn a_child_whose_threads_cannot_be_listed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    // a frozen parent cannot reap: a listed child must be there
    task(dir.path(), 100, 100, "app", [uid; 4], &[101]);
    let why = check(dir.path(), 100).unwrap_err();
    assert!(why.contains("cannot list the threads of pid 101"), "{why}");
}

#[test]
fn children_listed_twice_are_walked_once() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, _) = me();
    // two threads name the same child, and the child names the root back
    task(dir.path(), 100, 100, "app", [uid; 4], &[101]);
    task(dir.path(), 100, 104, "app", [uid; 4], &[101]);
    task(dir.path(), 101, 101, "child", [uid; 4], &[100]);
    assert_eq!(check(dir.path(), 100), Ok(()));
}

#[test]
fn a_root_that_cannot_be_listed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let why = check(dir.path(), 100).unwrap_err();
    assert!(why.contains("cannot list the threads of pid 100"), "{why}");
}
