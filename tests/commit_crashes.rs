//! A commit cut short at each of its steps (`server/fs/generations/commit.rs` lists them):
//! the service SIGKILLed there, or CRIU killed there while the service
//! commits at its `post-dump` notification ("exit after dump"). After each,
//! `latest` names a whole generation that restores (the previous one, or
//! the new one once the switch is done), the next checkpoint into the
//! directory works, and nothing of the service's is left there. The steps
//! are held by the test hooks of a real `selfdump serve` (feature
//! `test-hooks`), so each kill lands exactly at its step, whatever the
//! machine's speed.

mod common;

use common::looping::*;
use common::*;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

/// The steps of a commit, in order (the holds of `server/fs/generations/commit.rs`).
const STEPS: [&str; 8] = [
    "dumped",
    "filled",
    "synced",
    "renamed",
    "named",
    "linked",
    "switched",
    "committed",
];

/// Whether a commit stopped after `step` has switched `latest`.
fn switched(step: &str) -> bool {
    matches!(step, "switched" | "committed")
}

/// A service with holds, and a program that made its first generation.
struct Scene {
    dir: tempfile::TempDir,
    socket: PathBuf,
    images: PathBuf,
    holds: Holds,
    serve: Option<Child>,
    looping: Looping,
    first: String,
}

impl Scene {
    fn new(args: &[&str]) -> Self {
        become_subreaper();
        let dir = images_dir(); // (0755: the program's log is beside the images)
        let socket = dir.path().join("s.sock");
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let holds = Holds::new();
        let serve = serve_with(&socket, &dir.path().join("serve.log"), &[holds.env()]);
        let mut all = vec!["--count", "3"];
        all.extend(args);
        let looping = Looping::start(&socket, &images, true, &all);
        looping.go(1);
        let first = looping.committed(1);
        Self {
            dir,
            socket,
            images,
            holds,
            serve: Some(serve),
            looping,
            first,
        }
    }

    /// Checkpoint 2 starts and its commit stops at `step`.
    fn hold_second_at(&self, step: &str) {
        self.holds.hold(step);
        self.looping.go(2);
        self.holds.wait_held(step);
    }

    fn kill_service(&mut self) {
        let mut serve = self.serve.take().unwrap();
        serve.kill().unwrap();
        serve.wait().unwrap();
        reap_orphaned_criu(Duration::from_secs(30));
    }

    /// A new service (no holds) takes the socket.
    fn restart_service(&mut self) {
        if let Some(mut old) = self.serve.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = self.dir.path().join("serve2.log");
        self.serve = Some(serve_with(&self.socket, &log, &[]));
    }

    /// `latest` names a whole generation, which restores as checkpoint
    /// `i`'s copy.
    fn latest_restores_as(&self, i: u32) -> String {
        assert_generations_whole(&self.images);
        let now = latest(&self.images).unwrap();
        let heard = restore_and_hear(&self.images, &self.looping);
        assert!(
            heard.starts_with(&format!("gen {i} restored {now} children 0")),
            "latest is {now}: {heard}"
        );
        now
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.looping.stop();
        if let Some(mut serve) = self.serve.take() {
            let _ = serve.kill();
            let _ = serve.wait();
        }
        reap_orphaned_criu(Duration::from_secs(10));
    }
}

#[test]
fn the_service_killed_at_each_step_of_a_commit() {
    let mut said = Vec::new();
    for step in STEPS {
        let mut scene = Scene::new(&[]);
        scene.hold_second_at(step);
        scene.kill_service();
        let line = scene.looping.outcome(2);
        assert!(line.starts_with("gen 2 error "), "{step}: {line}");
        let now = latest(&scene.images).unwrap();
        if switched(step) {
            assert_ne!(now, scene.first, "{step}: the switch was done");
        } else {
            assert_eq!(now, scene.first, "{step}: latest moved before the switch");
        }
        scene.latest_restores_as(if switched(step) { 2 } else { 1 });

        scene.restart_service();
        scene.looping.go(3);
        let third = scene.looping.committed(3);
        assert_eq!(latest(&scene.images).as_deref(), Some(third.as_str()));
        assert_no_leftovers(&scene.images);
        scene.latest_restores_as(3);
        said.push(format!(
            "{step}: latest {}",
            if switched(step) { "new" } else { "kept" }
        ));
    }
    eprintln!("killed at each step: {}", said.join(", "));
}

#[test]
fn criu_killed_at_each_step_of_a_commit_at_its_post_dump() {
    let mut said = Vec::new();
    for step in STEPS {
        let mut scene = Scene::new(&["--exit-after-from", "2"]);
        scene.hold_second_at(step);
        // the CRIU that holds the tree frozen, waiting for the service
        let init = scene.looping.init().expect("the namespace runs");
        let criu = tracer(init).expect("CRIU holds the tree");
        assert_eq!(comm(criu).as_deref(), Some("criu"));
        signal(criu, rustix::process::Signal::KILL);
        assert!(poll_for(Duration::from_secs(10), || tracer(init).is_none()));
        scene.holds.release(step);
        // the images were whole at post-dump: the commit goes on, and the
        // caller, left running by the dead CRIU, is told both
        let line = scene.looping.outcome(2);
        assert!(
            line.starts_with("gen 2 error ") && line.contains("committed as generation"),
            "{step}: {line}"
        );
        let second = scene.latest_restores_as(2);
        assert_ne!(second, scene.first);

        scene.looping.go(3); // exit after dump: the original ends
        assert!(poll_for(Duration::from_secs(60), || !scene
            .looping
            .running()));
        let third = latest(&scene.images).unwrap();
        assert!(third != second && third != scene.first, "{third}");
        assert_no_leftovers(&scene.images);
        scene.latest_restores_as(3);
        said.push(step);
    }
    eprintln!("CRIU killed at each step: {said:?}: the commit completed each time");
}

#[test]
fn the_service_killed_while_committing_at_post_dump_leaves_the_caller_running() {
    for step in ["filled", "switched"] {
        let mut scene = Scene::new(&["--exit-after-from", "2"]);
        scene.hold_second_at(step);
        scene.kill_service();
        // CRIU lost its service before its answer: it lets the tree run
        let line = scene.looping.outcome(2);
        assert!(line.starts_with("gen 2 error "), "{step}: {line}");
        assert!(scene.looping.running(), "{step}: the original ended");
        let now = scene.latest_restores_as(if switched(step) { 2 } else { 1 });
        assert_eq!(now == scene.first, !switched(step), "{step}");

        scene.restart_service();
        scene.looping.go(3);
        assert!(poll_for(Duration::from_secs(60), || !scene
            .looping
            .running()));
        assert_no_leftovers(&scene.images);
        scene.latest_restores_as(3);
    }
}
