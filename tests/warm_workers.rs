//! The server keeps `criu swrk` workers started ahead of time
//! (`Builder::warm_workers`, default 1): a dump uses the waiting one and
//! another is started after it; a worker that died while waiting is
//! skipped and reaped; stopping the server stops its workers.
//!
//! Each test counts the criu children of this process, so they run one at
//! a time, each with its own service.

mod common;

use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// criu children of this process: (pid, state).
fn criu_children() -> Vec<(i32, char)> {
    own_children()
        .into_iter()
        .filter(|(_, _, comm)| comm == "criu")
        .map(|(pid, state, _)| (pid, state))
        .collect()
}

/// Waits until exactly `n` live criu children wait (no dump runs while
/// this is called) and returns them.
fn wait_for_workers(n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = criu_children();
        if children.len() == n && children.iter().all(|(_, s)| *s != 'Z') {
            return children.into_iter().map(|(pid, _)| pid).collect();
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} waiting criu worker(s), have {children:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn checkpoint_succeeds(service: &Service) {
    let images = images_dir();
    let mut program = Program::start(
        service,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
    );
    let line = program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "));
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(program.wait().success());
}

#[test]
fn a_dump_uses_the_waiting_worker_and_another_is_started_after() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let service = Service::start();
    let before = wait_for_workers(1);
    checkpoint_succeeds(&service);
    let after = wait_for_workers(1);
    assert_ne!(
        before, after,
        "the worker that waited served the dump and was reaped; a new one waits"
    );
}

#[test]
fn a_worker_that_died_while_waiting_is_skipped_and_reaped() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let service = Service::start();
    let waiting = wait_for_workers(1)[0];
    kill_and_reap_not_ours(waiting);
    checkpoint_succeeds(&service);
    let now = wait_for_workers(1);
    assert!(
        !now.contains(&waiting),
        "the dead worker is reaped, not left a zombie: {:?}",
        criu_children()
    );
}

#[test]
fn stopping_the_server_stops_and_reaps_its_workers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let service = Service::start_with(|b| b.warm_workers(2));
    wait_for_workers(2);
    drop(service); // stops the server and waits for `run_until` to return
    assert_eq!(criu_children(), vec![], "no worker left, not even a zombie");
}

#[test]
fn with_no_warm_workers_none_waits_and_dumps_still_work() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let recording = RecordingCriu::new();
    let swrk = || recording.commands().iter().filter(|c| *c == "swrk").count();
    let service = Service::start_with(|b| b.criu(recording.criu.clone()).warm_workers(0));
    // (binding asked CRIU its version, through a `criu swrk` of its own)
    let at_start = swrk();
    checkpoint_succeeds(&service);
    // stopped: it has waited for every worker it was starting, so the
    // record of what it started is complete
    drop(service);
    assert_eq!(
        swrk(),
        at_start + 1,
        "one criu swrk since the start, the dump's own: none waited before it, none was \
         started after; commands run: {:?}",
        recording.commands()
    );
    assert_eq!(criu_children(), vec![], "no criu left");
}

/// SIGKILLs a child of this process without reaping it: the server, which
/// owns it, must notice.
fn kill_and_reap_not_ours(pid: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(pid).is_some_and(|s| s != 'Z') {
        assert!(Instant::now() < deadline, "worker {pid} did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
}
