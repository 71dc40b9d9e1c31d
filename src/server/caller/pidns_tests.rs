//! Finding the namespace's init against a directory laid out like `/proc`:
//! no root, no namespace. A pid namespace is the inode of `<pid>/ns/pid`,
//! so tasks of one namespace share a hard-linked file. The init is this
//! test process (pinning it must work, and it stays alive); the caller is
//! a made-up pid, pinned by this process's pidfd too.

use super::*;
use crate::server::caller::status::{Caps, Ids};
use std::path::Path;

const CALLER: i32 = 4100;

fn me() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// The init's pid: this process's.
fn init_pid() -> i32 {
    std::process::id() as i32
}

fn caller_status() -> TaskStatus {
    let (uid, gid) = me();
    TaskStatus {
        uids: Ids::all(uid),
        gids: Ids::all(gid),
        groups: vec![],
        caps: Caps::default(),
        zombie: false,
    }
}

fn caller() -> Process {
    let mut me = Process::open(init_pid()).unwrap();
    me.pid = CALLER;
    me
}

/// A fake `/proc` with the service (`self`, pid 1) in one namespace.
struct FakeProc(tempfile::TempDir);

impl FakeProc {
    fn new() -> Self {
        let fake = Self(tempfile::tempdir().unwrap());
        std::fs::create_dir_all(fake.0.path().join("self/ns")).unwrap();
        std::fs::write(fake.0.path().join("self/ns/pid"), "service's").unwrap();
        fake.process(1, 0, "1", "init", None, 0);
        fake.join(1, "self");
        fake
    }

    fn root(&self) -> &Path {
        self.0.path()
    }

    /// Writes process `pid`, child of `ppid`, with `nspid` and ids of `uid`.
    fn process(&self, pid: i32, ppid: i32, nspid: &str, comm: &str, sid: Option<i32>, uid: u32) {
        let (_, gid) = me();
        let dir = self.root().join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        let status = format!(
            "Name:\t{comm}\nState:\tS (sleeping)\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n\
             Gid:\t{gid}\t{gid}\t{gid}\t{gid}\nGroups:\t\nNSpid:\t{nspid}\n\
             CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n"
        );
        std::fs::write(dir.join("status"), status).unwrap();
        let sid = sid.unwrap_or(pid);
        std::fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) S {ppid} {pid} {sid}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
    }

    /// Puts `pid` in the namespace of `of` (`self`, or a pid).
    fn join(&self, pid: i32, of: &str) {
        let ns = self.root().join(pid.to_string()).join("ns/pid");
        let _ = std::fs::remove_file(&ns);
        std::fs::hard_link(self.root().join(of).join("ns/pid"), ns).unwrap();
    }

    /// A new namespace, with `pid` in it.
    fn new_namespace(&self, pid: i32) {
        let ns = self.root().join(pid.to_string()).join("ns/pid");
        std::fs::write(ns, format!("namespace of {pid}")).unwrap();
    }

    fn dump_root(&self) -> Result<Option<NsInit>, String> {
        let proc = ProcFs::at(self.root().to_str().unwrap());
        dump_root(proc, &caller(), &caller_status())
    }
}

/// The caller in a namespace whose init is `init_pid()`, below the service.
fn in_namespace(init_nspid: &str, init_sid: Option<i32>) -> FakeProc {
    let (uid, _) = me();
    let fake = FakeProc::new();
    fake.process(init_pid(), 1, init_nspid, "init", init_sid, uid);
    fake.new_namespace(init_pid());
    fake.process(CALLER, init_pid(), &format!("{CALLER} 5"), "app", None, uid);
    fake.join(CALLER, &init_pid().to_string());
    fake
}

#[test]
fn a_caller_in_the_services_namespace_is_its_own_root() {
    let (uid, _) = me();
    let fake = FakeProc::new();
    fake.process(CALLER, 1, &CALLER.to_string(), "app", None, uid);
    fake.join(CALLER, "self");
    assert!(fake.dump_root().unwrap().is_none());
}

#[test]
fn a_caller_in_a_namespace_of_its_own_is_dumped_from_its_init() {
    let fake = in_namespace(&format!("{} 1", init_pid()), None);
    let init = fake.dump_root().unwrap().expect("a whole namespace");
    assert_eq!(init.process.pid, init_pid());
    let proc = ProcFs::at(fake.root().to_str().unwrap());
    assert_eq!(init.check_session(proc), Ok(()));
}

#[test]
fn an_init_that_does_not_lead_its_session_is_refused() {
    let fake = in_namespace(&format!("{} 1", init_pid()), Some(1));
    let init = fake.dump_root().unwrap().expect("a whole namespace");
    let proc = ProcFs::at(fake.root().to_str().unwrap());
    let why = init.check_session(proc).unwrap_err();
    assert!(why.contains("does not lead a session of its own"), "{why}");
}

#[test]
fn a_nested_namespace_is_refused() {
    let fake = in_namespace(&format!("{} 1", init_pid()), None);
    let (uid, _) = me();
    fake.process(
        CALLER,
        init_pid(),
        &format!("{CALLER} 9 5"),
        "app",
        None,
        uid,
    );
    let why = fake.dump_root().unwrap_err();
    assert!(why.contains("nested pid namespace"), "{why}");
}

#[test]
fn a_top_that_is_not_the_namespaces_init_is_refused() {
    // the top of the caller's tree in its namespace is pid 2 there: it
    // entered the namespace from outside (setns)
    let fake = in_namespace(&format!("{} 2", init_pid()), None);
    let why = fake.dump_root().unwrap_err();
    assert!(why.contains("is not the namespace's init"), "{why}");
}

#[test]
fn an_init_the_caller_could_not_inspect_is_refused() {
    let (uid, _) = me();
    let fake = in_namespace(&format!("{} 1", init_pid()), None);
    let other = uid.wrapping_add(4242);
    fake.process(
        init_pid(),
        1,
        &format!("{} 1", init_pid()),
        "init",
        None,
        other,
    );
    let why = fake.dump_root().unwrap_err();
    assert!(why.contains("the init of your pid namespace"), "{why}");
}
