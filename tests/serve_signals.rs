//! `selfdump serve` and its stop signals: the first SIGTERM drains (the dump
//! in flight goes on), a second one exits at once, abandoning the dump: the
//! frozen caller runs on and is told the outcome is unknown, the exit code
//! says the stop was forced, and no staging directory outlives the next
//! checkpoint into the directory. A second service on a live socket is
//! refused while the first serves on.

mod common;

use common::Guarded;
use common::*;
use std::time::{Duration, Instant};

fn sigterm(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

#[test]
fn a_second_sigterm_exits_at_once_and_the_frozen_caller_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("serve.log");
    let mut serve = serve_process(&socket, &log);
    // 1 GiB to write: the dump keeps the caller frozen for a while
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--alloc-mb",
            "1024",
            "--at",
            "1",
            "--until",
            "100",
            "--interval-ms",
            "20",
        ],
        None,
    );
    // CRIU holds the caller; it is kept stopped until the service is gone,
    // so that the dump is surely in flight at both signals, however fast
    // the machine writes 1 GiB
    assert!(
        wait_seized(program.pid, Duration::from_secs(60)),
        "CRIU never seized the caller: {}",
        program.output()
    );
    let criu = stop_dumping_criu(program.pid).unwrap_or_else(|| {
        panic!(
            "the 1 GiB dump ended before it could be interrupted: {}",
            program.output()
        )
    });

    sigterm(serve.id());
    wait_for_line(&log, "the drain to start", |l| {
        l.contains("refusing new checkpoints")
    });
    assert!(
        serve.try_wait().unwrap().is_none(),
        "the first signal drains"
    );
    sigterm(serve.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a second SIGTERM must end it: {}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let served = read(&log);
    assert_eq!(status.code(), Some(1), "{served}");
    assert!(served.contains("again: exiting now"), "{served}");

    // the abandoned CRIU goes on to its next step, finds the service gone
    // and lets the tree run on
    signal(criu, rustix::process::Signal::CONT);
    let line = program.outcome_or_state();
    // "unknown" once it was told it is frozen; "closed the connection"
    // when the service went before CRIU's freeze notification reached it
    assert!(
        line.starts_with("checkpoint error")
            && (line.contains("unknown") || line.contains("closed the connection")),
        "the caller is told it has no checkpoint to trust: {line}"
    );
    let counted = program
        .output()
        .lines()
        .filter(|l| l.starts_with("count "))
        .count();
    program.wait_for("counting on after the abandoned dump", |l| {
        l == format!("count {}", counted + 2)
    });
    program.kill();

    // The abandoned CRIU may write on until its next step, after the
    // service is gone; whatever staging that leaves goes with the next
    // checkpoint into the directory (tests/staging_leftovers.rs).
    if !staging_dirs(images.path()).is_empty() {
        // (once the abandoned CRIU has ended: it may still be writing there)
        assert!(
            poll_for(Duration::from_secs(20), || !matches!(
                process_state(criu),
                Some(s) if s != 'Z'
            )),
            "the abandoned criu (pid {criu}) never ended"
        );
        next_checkpoint_clears_staging(images.path());
    }
}

#[test]
fn a_second_service_on_a_live_socket_is_refused_and_the_first_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let mut first = serve_process(&socket, &dir.path().join("first.log"));
    let said_file = dir.path().join("second.log");
    let mut second = std::process::Command::new(selfdump_bin())
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--criu")
        .arg(criu().path)
        .stderr(std::fs::File::create(&said_file).unwrap())
        .spawn_guarded()
        .unwrap();
    // (a second service that took the socket would serve on: not awaited)
    let ended = poll_for(Duration::from_secs(60), || {
        second.try_wait().unwrap().is_some()
    });
    let said = read(&said_file);
    if !ended {
        for service in [&mut second, &mut first] {
            sigterm(service.id());
            let _ = service.wait();
        }
        panic!("a second service started on a live socket: {said}");
    }
    let second = second.wait().unwrap();
    assert_eq!(second.code(), Some(1), "{said}");
    assert!(
        said.contains("Address already in use") && said.contains("another selfdump service"),
        "{said}"
    );
    // only the socket: the second left nothing beside it
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    assert_eq!(names, ["s.sock"]);
    let images = images_dir();
    let mut program =
        Program::start_on(&socket, images.path(), &["--at", "1", "--until", "1"], None);
    let line = program.outcome_or_state();
    assert!(line.starts_with("checkpoint continued"), "{line}");
    program.wait();
    sigterm(first.id());
    assert!(first.wait().unwrap().success());
    assert!(!socket.exists(), "the socket is removed at the stop");
}
