//! The client under each async runtime, and without one: the `runtimes`
//! example checkpoints itself through a real service and CRIU.

mod common;
use common::Guarded;

use common::*;
use std::fs::OpenOptions;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `examples/runtimes.rs --runtime NAME`; returns whether it exited
/// successfully, and its output.
fn run(service: &Service, runtime: &str) -> (bool, String) {
    let images = images_dir();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("out.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut child = Command::new(example("runtimes"))
        .args(["--runtime", runtime, "--images"])
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn_guarded()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{runtime} did not finish:\n{}", read(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = read(&log);
    assert!(
        images.path().join("latest/pstree.img").exists(),
        "{runtime}: no images:\n{output}"
    );
    (status.success(), output)
}

fn assert_continued(runtime: &str) {
    let service = Service::start();
    let (ok, output) = run(&service, runtime);
    assert!(ok, "{runtime}: {output}");
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("{runtime}: ")))
        .unwrap_or_else(|| panic!("no outcome line:\n{output}"));
    assert!(
        line.starts_with(&format!("{runtime}: continued: frozen "))
            && line.ends_with(" 1 processes"),
        "{line}"
    );
}

#[test]
fn checkpoint_under_async_std() {
    assert_continued("async-std");
}

#[test]
fn checkpoint_under_smol() {
    assert_continued("smol");
}

#[test]
fn checkpoint_under_tokio() {
    assert_continued("tokio");
}

#[test]
fn blocking_checkpoint_without_an_executor() {
    assert_continued("blocking");
}
