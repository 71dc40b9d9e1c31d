//! Diagnoses that send the user the right way: a client the socket's mode
//! keeps out hears that the service runs and what the operator can do; a
//! service too busy to answer the result query is asked again, and a
//! service that stays busy is a refusal to retry, never an outcome
//! unknown; a restore that fails on a file written without `O_APPEND`
//! says so; `check --pid` says each fix once; and the `Report` carries
//! CRIU's own statistics.

mod common;
use common::Guarded;

use common::looping::Holds;
use common::*;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

#[test]
fn a_client_the_sockets_mode_keeps_out_hears_the_service_runs_and_what_to_do() {
    let service = Service::start_with(|b| b.socket_mode(0o600));
    let images = images_dir();
    let program = Program::start_as(
        &service,
        images.path(),
        &["--at", "1", "--until", "1", "--interval-ms", "10"],
        Some(NOBODY),
    );
    let line = program.outcome_or_state();
    assert!(
        line.contains(&format!(
            "the selfdump service at {} runs, but uid {NOBODY} may not connect",
            service.socket.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("--socket-mode") && line.contains(&format!("--allow-uid {NOBODY}")),
        "{line}"
    );
    assert!(!line.contains("no selfdump service"), "{line}");

    // `selfdump restore` through the service, the same
    let out = Command::new(selfdump_bin())
        .args(["restore", "--socket"])
        .arg(&service.socket)
        .arg(images.path())
        .env("RUST_LOG", "warn")
        .uid(NOBODY)
        .gid(NOBODY)
        .output_guarded()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("runs, but uid 65534 may not connect"),
        "{said}"
    );
}

/// A `selfdump serve` of this test, killed when the test ends (passed or
/// not): it must not outlive the test holding its output.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `selfdump serve` on `socket` with the holds of `holds`, root held to
/// two connections, idle ones kept for two minutes.
fn serve_two_connections(socket: &Path, log: &Path, holds: &Holds) -> Serving {
    let (name, value) = holds.env();
    let serve = Command::new(selfdump_bin())
        .args(["serve", "--max-connections-per-uid", "2"])
        .args(["--request-timeout", "120", "--socket"])
        .arg(socket)
        .arg("--criu")
        .arg(criu().path)
        .env(name, value)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn_guarded()
        .unwrap();
    let serve = Serving(serve);
    wait_serving(log);
    serve
}

#[test]
fn a_service_that_stays_busy_for_the_result_is_a_refusal_to_retry() {
    become_subreaper();
    let dir = images_dir();
    let socket = dir.path().join("s.sock");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let holds = Holds::new();
    let _serve = serve_two_connections(&socket, &dir.path().join("serve.log"), &holds);
    // root's first connection, idle; the checkpoint's is the second
    let _idle = UnixStream::connect(&socket).unwrap();
    holds.hold("dumped");
    let mut program = Program::start_on(
        &socket,
        &images,
        &["--at", "1", "--until", "1", "--interval-ms", "10"],
        None,
    );
    // CRIU is done and the caller runs on, while its dump holds the second
    // connection: every query for the result finds the service busy
    holds.wait_held("dumped");
    let line = program.outcome_or_state();
    holds.release("dumped");
    assert!(
        line.starts_with("checkpoint error: checkpoint refused (Busy): "),
        "{line}"
    );
    assert!(
        line.contains("connections open") && line.contains("checkpoint again later"),
        "{line}"
    );
    assert!(!line.contains("unknown"), "{line}");
    program.wait();
}

#[test]
fn a_service_busy_for_a_while_answers_the_result_once_it_has_room() {
    become_subreaper();
    let dir = images_dir();
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("serve.log");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let holds = Holds::new();
    let _serve = serve_two_connections(&socket, &log, &holds);
    let idle = UnixStream::connect(&socket).unwrap();
    holds.hold("dumped");
    let mut program = Program::start_on(
        &socket,
        &images,
        &["--at", "1", "--until", "1", "--interval-ms", "10"],
        None,
    );
    holds.wait_held("dumped");
    // the caller asked for its result, and was refused as busy
    wait_for_line(&log, "a busy refusal", |l| {
        l.contains("a connection refused (busy)")
    });
    drop(idle);
    holds.release("dumped");
    let line = program.outcome_or_state();
    assert!(line.starts_with("checkpoint continued"), "{line}");
    program.wait();
}

#[test]
fn a_restore_that_fails_on_a_log_written_without_append_says_why() {
    let service = Service::start();
    let images = images_dir();
    // the program's output truncated at open, not appended to
    let log = images.path().with_extension("log");
    let out = File::create(&log).unwrap();
    let mut child = Command::new(example("counter"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .args(["--at", "1", "--until", "100000", "--interval-ms", "20"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn_guarded()
        .unwrap();
    let line = wait_for_line(&log, "the checkpoint", |l| l.starts_with("checkpoint "));
    // the log grows past the size it was dumped with
    wait_for_line(&log, "a count after it", |l| l == "count 3");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("checkpoint continued"), "{line}");

    // the Report carries CRIU's statistics
    let pages = |name: &str| -> u64 {
        let at = line.find(name).unwrap_or_else(|| panic!("{line}"));
        line[at + name.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (written, scanned) = (pages("pages "), pages(" of "));
    assert!(written > 0 && scanned >= written, "{line}");
    assert!(
        line.contains(" memdump ") && line.contains(" memwrite "),
        "{line}"
    );

    let refused = restore(images.path()).expect_err("CRIU refuses the grown file");
    assert!(refused.contains("has bad size"), "{refused}");
    assert!(
        refused.contains("O_APPEND") && refused.contains("`>>`"),
        "the hint: {refused}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn check_pid_says_each_fix_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .current_dir(dir.path())
        .args(["-c", "exec 3>one 4>two 5>three; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_guarded()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe")).map_or(true, |exe| !exe.ends_with("sleep"))
    {
        assert!(Instant::now() < deadline, "sleep did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(selfdump_bin())
        .args(["check", "--pid", &pid.to_string()])
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "risky, not refused: {said}");
    for fd in 3..=5 {
        assert!(
            said.contains(&format!("[risky] pid {pid} fd {fd}: regular file")),
            "{said}"
        );
    }
    assert_eq!(said.matches("open logs with O_APPEND").count(), 1, "{said}");
}
