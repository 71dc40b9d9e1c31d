//! The embedding API: an embedder's admission callback, graceful shutdown
//! with a handle, and the `supervisor` example that uses both. Against the
//! real CRIU, as root.

mod common;
use common::Guarded;

use async_io::Async;
use common::*;
use selfdump::proto::{self, RefusalKind, Response};
use selfdump::server::{Policy, Server, ShutdownHandle};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

/// The counter's `checkpoint ...` line.
fn outcome(program: &Program) -> String {
    program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "))
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo`.
fn pidfd_pid(fd: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

/// (pid, uid, gid, pid behind the pidfd) of each call of the callback.
type Seen = Arc<Mutex<Vec<(i32, u32, u32, Option<i32>)>>>;

#[test]
fn admit_callback_refuses_with_its_message_and_lets_others_through() {
    let seen: Seen = Default::default();
    let record = seen.clone();
    let service = Service::start_with(move |b| {
        b.policy(Policy {
            allow_uids: [NOBODY].into(),
            ..Policy::default()
        })
        .admit(move |caller| {
            record.lock().unwrap().push((
                caller.pid,
                caller.uid,
                caller.gid,
                pidfd_pid(caller.pidfd.as_raw_fd()),
            ));
            if caller.uid == NOBODY {
                Err(format!(
                    "uid {} is not on this supervisor's list (pid {})",
                    caller.uid, caller.pid
                ))
            } else {
                Ok(())
            }
        })
    });
    let args = ["--at", "1", "--until", "3", "--interval-ms", "50"];

    // nobody passes the built-in policy, and the embedder refuses it
    let nobody_dir = images_dir();
    std::os::unix::fs::chown(nobody_dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut nobody = Program::start_as(&service, nobody_dir.path(), &args, Some(NOBODY));
    let line = outcome(&nobody);
    assert_eq!(
        line,
        format!(
            "checkpoint error: checkpoint refused (NotPermitted): uid {NOBODY} is not on this \
             supervisor's list (pid {})",
            nobody.pid
        )
    );
    assert!(nobody.wait().success(), "{}", nobody.output());
    assert!(
        std::fs::read_dir(nobody_dir.path())
            .unwrap()
            .next()
            .is_none(),
        "a refused caller left something in its directory"
    );

    // root passes both and is checkpointed
    let root_dir = images_dir();
    let mut root = Program::start(&service, root_dir.path(), &args);
    let line = outcome(&root);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(root.wait().success(), "{}", root.output());

    // one call per checkpoint request: the root caller's result query did
    // not reach the callback; each call saw the kernel's view of the caller
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (nobody.pid, NOBODY, NOBODY, Some(nobody.pid)),
            (root.pid, 0, 0, Some(root.pid)),
        ]
    );
}

/// A server run on a thread of its own, with its handle.
struct Running {
    socket: PathBuf,
    stop: ShutdownHandle,
    done: std::sync::mpsc::Receiver<(Result<(), String>, Instant)>,
    _dir: tempfile::TempDir,
}

fn run_server(criu: selfdump::server::Criu) -> Running {
    become_subreaper();
    let dir = tempfile::Builder::new()
        .prefix("selfdump-embed")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("selfdump.sock");
    // no worker started ahead: a slow CRIU's wait must fall in the dump
    let server = Server::builder()
        .criu(criu)
        .warm_workers(0)
        .socket_mode(0o666)
        .bind(&socket)
        .unwrap();
    let stop = server.shutdown_handle();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = async_io::block_on(server.run()).map_err(|e| e.to_string());
        let _ = tx.send((result, Instant::now()));
    });
    Running {
        socket,
        stop,
        done,
        _dir: dir,
    }
}

/// The service answers bytes that are no frame (with a refusal): it runs.
fn answers_garbage(socket: &Path) {
    use std::io::{Read, Write};
    let mut stream = UnixStream::connect(socket).unwrap();
    // (a header's length: the service reads all of it before it answers)
    stream.write_all(&[b'x'; proto::HEADER_LEN]).unwrap();
    let mut answer = [0u8; proto::HEADER_LEN];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer[..4],
        &proto::MAGIC[..],
        "the service does not answer"
    );
}

/// Connects and reads what the service says without sending anything.
fn greeting(socket: &Path) -> Response {
    async_io::block_on(async {
        let stream = Async::<UnixStream>::connect(socket).await.unwrap();
        let read = async { proto::read_frame(&stream).await };
        let limit = async {
            async_io::Timer::after(Duration::from_secs(5)).await;
            panic!("no answer within 5 s: the client would hang");
        };
        let frame = futures_lite::FutureExt::or(read, limit)
            .await
            .unwrap()
            .expect("an answer");
        proto::decode_body(frame.header, &frame.body).unwrap()
    })
}

const SHUTTING_DOWN: &str = "the selfdump service is shutting down; retry against its successor";

#[test]
fn shutdown_mid_dump_finishes_the_dump_and_refuses_newcomers() {
    let (_wrap, slow) = slow_criu(3);
    let server = run_server(slow);
    let first_dir = images_dir();
    let mut first = Program::start_on(
        &server.socket,
        first_dir.path(),
        &["--at", "1", "--until", "60", "--interval-ms", "50"],
        None,
    );
    first.wait_for("count 1", |l| l == "count 1");
    wait_admitted(first_dir.path()); // its dump is under way
    let asked = Instant::now();
    server.stop.shutdown();
    assert!(server.stop.is_shutdown());

    // a newcomer is refused at once, even one that sends nothing
    let answer = greeting(&server.socket);
    assert!(
        matches!(&answer, Response::Refused(r)
            if r.kind == RefusalKind::ShuttingDown && r.message == SHUTTING_DOWN),
        "{answer:?}"
    );
    // and so is a program asking for a checkpoint
    let second_dir = images_dir();
    let second = Program::start_on(
        &server.socket,
        second_dir.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
        None,
    );
    let line = outcome(&second);
    assert_eq!(
        line,
        format!("checkpoint error: checkpoint refused (ShuttingDown): {SHUTTING_DOWN}")
    );
    assert!(
        server.done.try_recv().is_err(),
        "the server stopped with a dump in flight"
    );

    // the dump in flight finishes, and its caller gets its result
    let line = outcome(&first);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    first.wait_for("counting on", |l| l == "count 3");
    let (result, stopped) = server
        .done
        .recv_timeout(Duration::from_secs(30))
        .expect("the server returns once drained");
    assert_eq!(result, Ok(()));
    assert!(
        stopped.duration_since(asked) >= Duration::from_secs(2),
        "returned before the dump ended ({:?})",
        stopped.duration_since(asked)
    );
    assert!(!server.socket.exists(), "the socket file is left behind");
    assert!(
        std::fs::read_dir(first_dir.path()).unwrap().count() > 0,
        "no images"
    );
    first.kill();
}

#[test]
fn shutdown_of_an_idle_server_returns_at_once() {
    let server = run_server(criu());
    // running (it answers), and idle
    answers_garbage(&server.socket);
    let asked = Instant::now();
    let stop = server.stop.clone();
    std::thread::spawn(move || stop.shutdown()); // from another thread
    let (result, stopped) = server
        .done
        .recv_timeout(Duration::from_secs(10))
        .expect("the server returns");
    assert_eq!(result, Ok(()));
    assert!(stopped.duration_since(asked) < Duration::from_secs(2));
    assert!(!server.socket.exists());
}

#[test]
fn supervisor_example_runs_and_exits_zero() {
    let out = Command::new(example("supervisor"))
        .stdin(Stdio::null())
        .output_guarded()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "a stranger asking is refused: checkpoint refused (NotPermitted): pid",
        "was not started by this supervisor",
        ": checkpointed, frozen",
        "exited (exit status: 0)",
        "supervisor: shutting the server down",
        "supervisor: server stopped, exiting",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}

#[test]
fn supervisor_example_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let socket = dir.path().join("sup.sock");
    let mut child = Command::new(example("supervisor"))
        .arg("--hold")
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn_guarded()
        .unwrap();
    wait_for_line(&log, "the supervisor to hold", |l| {
        l == "supervisor: holding until SIGTERM"
    });
    assert!(socket.exists());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("supervisor ignored SIGTERM:\n{}", read(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{}", read(&log));
    assert!(read(&log).contains("supervisor: server stopped, exiting"));
    assert!(!socket.exists(), "the socket file is left behind");
}
