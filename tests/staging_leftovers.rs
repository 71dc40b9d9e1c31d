//! A service SIGKILLed mid-dump cannot clean up: its root-owned staging
//! directory, with partial images, stays in the caller's directory. The
//! next checkpoint into that directory (through any service) removes it,
//! and the caller of the killed dump runs on, told the outcome is unknown.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn poll(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn staging_left_by_a_killed_service_goes_with_the_next_dump_into_the_directory() {
    become_subreaper(); // the killed service's CRIUs come to us
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let mut serve = serve_process(&socket, &dir.path().join("serve.log"));
    // CRIU is writing memory into the staging directory, and is stopped
    // there while it still holds the caller, so the service is killed
    // mid-dump whatever the machine's speed (once more if the dump won)
    let mut attempts = 0;
    let (images, mut killed_caller, criu) = loop {
        let images = images_dir();
        let mut caller = Program::start_on(
            &socket,
            images.path(),
            &[
                "--alloc-mb",
                "256",
                "--at",
                "1",
                "--until",
                "400",
                "--interval-ms",
                "20",
            ],
            None,
        );
        poll("CRIU to write memory", Duration::from_secs(60), || {
            staging_dirs(images.path()).iter().any(|s| {
                std::fs::read_dir(images.path().join(s))
                    .map(|d| {
                        d.flatten()
                            .any(|f| f.file_name().to_string_lossy().starts_with("pagemap-"))
                    })
                    .unwrap_or(false)
            })
        });
        if let Some(criu) = stop_dumping_criu(caller.pid) {
            break (images, caller, criu);
        }
        attempts += 1;
        assert!(
            attempts < 5,
            "the dump always ended before it could be held"
        );
        caller.kill();
    };
    serve.kill().unwrap();
    serve.wait().unwrap();
    signal(criu, rustix::process::Signal::CONT);
    // its CRIUs notice and end; reap them as their new parent
    poll("the orphaned CRIUs to end", Duration::from_secs(30), || {
        let criu: Vec<_> = own_children()
            .into_iter()
            .filter(|(_, _, comm)| comm == "criu")
            .collect();
        for (pid, state, _) in &criu {
            if *state == 'Z' {
                kill_and_reap(*pid);
            }
        }
        criu.iter().all(|(_, state, _)| *state == 'Z')
    });
    let left = staging_dirs(images.path());
    assert_eq!(
        left.len(),
        1,
        "the killed service's staging stays: {left:?}"
    );

    let line = killed_caller.wait_for("the killed dump's outcome", |l| {
        l.starts_with("checkpoint ")
    });
    assert!(line.contains("unknown"), "{line}");
    killed_caller.kill(); // (the next program writes to the same log)

    next_checkpoint_clears_staging(images.path());
    assert!(
        images.path().join("latest/pstree.img").exists(),
        "the new dump's images"
    );
}
