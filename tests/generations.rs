//! For benchmark harnesses: the same images restored again and again
//! (`selfdump restore --wait` waits for the previous copy to be gone), and
//! a restored process checkpointed again (a second generation), with both
//! generations restorable.

mod common;
use common::Guarded;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `selfdump restore --wait SECS DIR`: the root pid, or the error text.
fn restore_waiting(images: &Path, secs: &str) -> Result<i32, String> {
    let out = Command::new(selfdump_bin())
        .args(["restore", "--wait", secs, "--criu"])
        .arg(criu().path)
        .arg(images)
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("restore prints the pid"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `selfdump restore --wait SECS DIR`, started while a zombie holds the
/// images' pid: `reap` frees it only once the restore says (in its debug
/// log) that it waits for that zombie, so a restore that did not wait
/// fails on the zombie, whatever the machine's speed. The root pid.
fn restore_waiting_for_the_zombie(images: &Path, secs: &str, reap: impl FnOnce()) -> i32 {
    use std::io::BufRead;
    let mut restore = Command::new(selfdump_bin())
        .args(["restore", "--wait", secs, "--criu"])
        .arg(criu().path)
        .arg(images)
        .env("RUST_LOG", "selfdump=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_guarded()
        .unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    let stderr = restore.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let mut heard = Vec::new();
    loop {
        match said.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let waits = line.contains("waiting: ") && line.contains("a zombie");
                heard.push(line);
                if waits {
                    break;
                }
            }
            Err(_) => {
                let _ = restore.kill();
                let _ = restore.wait();
                panic!(
                    "restore --wait ended (or went silent) without waiting for the zombie:\n{}",
                    heard.join("\n")
                );
            }
        }
    }
    reap();
    let out = restore.wait_with_output().unwrap();
    reader.join().unwrap();
    heard.extend(said.try_iter());
    assert!(out.status.success(), "restore --wait: {}", heard.join("\n"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("restore prints the pid")
}

fn occurrences(path: &Path, line: &str) -> usize {
    read(path).lines().filter(|l| l.starts_with(line)).count()
}

fn wait_for_occurrences(path: &Path, line: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while occurrences(path, line) < n {
        assert!(
            Instant::now() < deadline,
            "waiting for {n} x {line:?}:\n{}",
            read(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_same_images_restore_again_and_again() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "2", "--until", "600", "--interval-ms", "50"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    program.kill();

    let mut previous = None;
    for round in 1..=3 {
        let pid = match previous {
            None => restore_waiting(images.path(), "10").expect("restore --wait"),
            Some(previous) => {
                // A killed copy is a zombie until its parent reaps it: its
                // pid is not free yet, and a plain restore says so. (each
                // step in turn, whatever the machine's speed: killed, a
                // zombie, refused, a restore --wait waiting for it, and
                // only then reaped)
                use rustix::process::{Pid, Signal, kill_process};
                kill_process(Pid::from_raw(previous).unwrap(), Signal::KILL).unwrap();
                assert!(
                    poll_for(Duration::from_secs(10), || process_state(previous)
                        == Some('Z')),
                    "the killed copy {previous} never became a zombie"
                );
                let err = restore(images.path()).expect_err("the zombie still holds the pid");
                assert!(err.contains("a zombie"), "{err}");
                restore_waiting_for_the_zombie(images.path(), "10", || kill_and_reap(previous))
            }
        };
        assert_eq!(pid, program.pid, "round {round}");
        wait_for_occurrences(&program.log, "checkpoint restored: ", round);
        previous = Some(pid);
    }
    kill_and_reap(previous.unwrap());
}

#[test]
fn restore_wait_gives_up_after_its_timeout_and_names_the_holder() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "1", "--until", "600", "--interval-ms", "50"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    let started = Instant::now();
    let err = restore_waiting(images.path(), "1").expect_err("the original still runs");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        err.contains("after waiting 1s: pid ") && err.contains(" is in use by process "),
        "{err}"
    );
    program.kill();
}

#[test]
fn a_restored_copy_checkpoints_again_and_both_generations_restore() {
    let service = Service::start();
    let first = images_dir();
    let second = images_dir();
    let mut program = Program::start(
        &service,
        first.path(),
        &[
            "--at",
            "2",
            "--at2",
            "8",
            "--images2",
            second.path().to_str().unwrap(),
            "--until",
            "600",
            "--interval-ms",
            "100",
        ],
    );
    program.wait_for("generation 1", |l| l.starts_with("checkpoint continued"));
    program.kill();
    assert!(
        !program.output().contains("checkpoint2"),
        "the original was killed before its second checkpoint"
    );

    // Generation 1 restored: it goes on from 2 and checkpoints at 8.
    let gen1 = restore(first.path()).expect("restore generation 1");
    let line = program.wait_for("generation 2", |l| l.starts_with("checkpoint2 "));
    assert!(line.starts_with("checkpoint2 continued: job "), "{line}");
    kill_and_reap(gen1);

    // Generation 2 restored: it says so and goes on from 8.
    let gen2 = restore(second.path()).expect("restore generation 2");
    assert_eq!(gen2, program.pid);
    let line = program.wait_for("generation 2 restored", |l| {
        l.starts_with("checkpoint2 restored: ")
    });
    assert!(
        line.ends_with(&second.path().display().to_string()),
        "{line}"
    );
    wait_for_occurrences(&program.log, "count 9", 2);
    kill_and_reap(gen2);

    // Generation 1 is still restorable.
    let again = restore(first.path()).expect("restore generation 1 again");
    wait_for_occurrences(&program.log, "checkpoint restored: ", 2);
    kill_and_reap(again);
    let output = program.output();
    // original 1..2, gen 1 from 3, gen 2 from 9, gen 1 again from 3
    let restored_at: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("checkpoint") && !l.contains("continued"))
        .collect();
    assert_eq!(restored_at.len(), 3, "{output}");
}
