//! The preflight finds, with the fd and what to do, each kind of thing CRIU
//! refuses or mishandles; `checkpoint()` stops on it before anything is
//! frozen; `selfdump check --pid` prints the same list.

mod common;
use common::Guarded;

use common::*;
use selfdump::preflight::{Finding, Kind, Preflight, Severity};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Child, Command, Stdio};

fn own(fd: &impl AsRawFd) -> Vec<Finding> {
    own_with(Preflight::new(), fd)
}

/// This process's findings about `fd`.
fn own_with(preflight: Preflight, fd: &impl AsRawFd) -> Vec<Finding> {
    let me = std::process::id() as i32;
    preflight
        .run()
        .expect("preflight")
        .into_iter()
        .filter(|f| f.pid == me && f.fd == Some(fd.as_raw_fd()))
        .collect()
}

/// `sleep 600` holding `fd` as its fd 3.
fn child_holding(fd: BorrowedFd<'_>) -> Child {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new("sleep");
    cmd.arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only dup2/fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let from = BorrowedFd::borrow_raw(raw);
            if raw == 3 {
                rustix::io::fcntl_setfd(from, rustix::io::FdFlags::empty())?;
            } else {
                let mut to = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(3));
                rustix::io::dup2(from, &mut to)?;
            }
            Ok(())
        });
    }
    cmd.spawn_guarded().expect("start sleep")
}

fn findings_of(child: &Child, preflight: Preflight) -> Vec<Finding> {
    preflight
        .pid(child.id() as i32)
        .run()
        .expect("preflight of the child")
}

#[test]
fn stream_connection_to_a_process_outside_the_tree_is_refused() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = child_holding(theirs.as_fd());
    drop(theirs);
    let findings = findings_of(&child, Preflight::new().ext_unix_sk(true));
    let _ = child.kill();
    let _ = child.wait();
    let f = findings
        .iter()
        .find(|f| f.fd == Some(3))
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(f.kind, Kind::UnixStreamToOutside);
    assert_eq!(f.severity, Severity::Refused);
    assert_eq!(f.pid, child.id() as i32);
    let me = format!("pid {}", std::process::id());
    assert!(
        f.what.starts_with("stream unix socket connected to socket")
            && f.what.contains("outside the dumped tree")
            && f.what.contains(&me),
        "names the holder: {f}"
    );
    assert!(f.fix.contains("close it before the checkpoint"), "{f}");
    // Both ends in this process: nothing to report.
    assert!(own(&ours).is_empty(), "{:?}", own(&ours));
    let (a, b) = UnixStream::pair().unwrap();
    assert!(own(&a).is_empty() && own(&b).is_empty());
}

#[test]
fn datagram_connection_outside_is_refused_unless_ext_unix_sk() {
    let (_ours, theirs) = UnixDatagram::pair().unwrap();
    let mut child = child_holding(theirs.as_fd());
    drop(theirs);
    let strict = findings_of(&child, Preflight::new());
    let lenient = findings_of(&child, Preflight::new().ext_unix_sk(true));
    let _ = child.kill();
    let _ = child.wait();
    let f = strict
        .iter()
        .find(|f| f.fd == Some(3))
        .unwrap_or_else(|| panic!("{strict:#?}"));
    assert_eq!(
        (f.kind, f.severity),
        (Kind::UnixDgramToOutside, Severity::Refused)
    );
    assert!(f.fix.contains("ext_unix_sk"), "{f}");
    assert!(!lenient.iter().any(|f| f.fd == Some(3)), "{lenient:#?}");
}

#[test]
fn established_tcp_is_refused_unless_tcp_established() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let found = own(&client);
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = &found[0];
    assert_eq!(
        (f.kind, f.severity),
        (Kind::TcpConnection, Severity::Refused)
    );
    assert!(
        f.what.ends_with(&format!("-> {addr} (ESTABLISHED)")),
        "shows the addresses and state: {f}"
    );
    assert!(f.fix.contains("tcp_established(true)"), "{f}");
    assert_eq!(own(&server).len(), 1);
    assert!(own(&listener).is_empty(), "a listening socket is fine");
    assert!(own_with(Preflight::new().tcp_established(true), &client).is_empty());
}

#[test]
fn tcp_held_by_a_child_is_found_too() {
    // Another process's sockets cannot be looked at directly: this is the
    // path through /proc/PID/net/tcp.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let mut child = child_holding(client.as_fd());
    drop(client);
    let child_pid = child.id() as i32;
    let from_child = findings_of(&child, Preflight::new());
    let from_here = Preflight::new().run().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    for findings in [&from_child, &from_here] {
        let f = findings
            .iter()
            .find(|f| f.pid == child_pid && f.fd == Some(3))
            .unwrap_or_else(|| panic!("{findings:#?}"));
        assert_eq!(f.kind, Kind::TcpConnection);
        assert!(f.what.ends_with(&format!("-> {addr} (ESTABLISHED)")), "{f}");
    }
}

#[test]
fn tcp_states_and_ipv6_are_told_apart() {
    // A socket never connected, and one bound but not listening: fine.
    use rustix::net::{AddressFamily, SocketType, bind, socket};
    let fresh = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    assert!(own(&fresh).is_empty(), "{:#?}", own(&fresh));
    let bound = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(
        &bound,
        &"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
    )
    .unwrap();
    assert!(own(&bound).is_empty(), "{:#?}", own(&bound));

    // The peer closed: CLOSE_WAIT, still refused without tcp_established.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    drop(listener.accept().unwrap());
    assert!(
        wait_until("CLOSE_WAIT", || own(&client)
            .first()
            .is_some_and(|f| f.what.ends_with("(CLOSE_WAIT)"))),
        "{:#?}",
        own(&client)
    );
    assert!(own(&client)[0].fix.contains("closing connection"));

    let listener6 = match std::net::TcpListener::bind("[::1]:0") {
        Ok(listener) => listener,
        Err(e) => return skip(Limit::NoIpv6Loopback, &format!("the IPv6 part: [::1]: {e}")),
    };
    let addr6 = listener6.local_addr().unwrap();
    let client6 = std::net::TcpStream::connect(addr6).unwrap();
    let _accepted = listener6.accept().unwrap();
    let found = own(&client6);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].what.starts_with("TCP connection [::1]:")
            && found[0]
                .what
                .ends_with(&format!("-> {addr6} (ESTABLISHED)")),
        "{}",
        found[0]
    );
    assert!(own(&listener6).is_empty());
}

#[test]
fn deleted_files_are_reported_and_big_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scratch");
    let mut small = std::fs::File::create(&path).unwrap();
    small.write_all(b"0123456789").unwrap();
    std::fs::remove_file(&path).unwrap();
    let found = own(&small);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        (found[0].kind, found[0].severity),
        (Kind::DeletedFile, Severity::Risky)
    );
    assert!(
        found[0]
            .what
            .contains(&format!("{} (10 bytes) is deleted", path.display())),
        "{}",
        found[0]
    );

    let big_path = dir.path().join("big");
    let big = std::fs::File::create(&big_path).unwrap();
    big.set_len(2 << 20).unwrap();
    std::fs::remove_file(&big_path).unwrap();
    let found = own(&big);
    assert_eq!(
        (found[0].kind, found[0].severity),
        (Kind::DeletedFile, Severity::Refused),
        "{found:#?}"
    );
}

#[test]
fn files_written_without_append_are_risky() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let truncating = std::fs::File::create(&path).unwrap();
    let found = own(&truncating);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        (found[0].kind, found[0].severity),
        (Kind::WrittenWithoutAppend, Severity::Risky)
    );
    assert!(found[0].what.contains(&path.display().to_string()));
    assert!(found[0].fix.contains("O_APPEND"), "{}", found[0]);

    let appending = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    assert!(own(&appending).is_empty());
    let reading = std::fs::File::open(&path).unwrap();
    assert!(own(&reading).is_empty());
    let read_write = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert_eq!(own(&read_write)[0].kind, Kind::WrittenWithoutAppend);
}

#[test]
fn descendants_are_looked_at_too() {
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let mut child = child_holding(theirs.as_fd());
    drop(theirs);
    // The child's socket is connected to ours: inside this tree, fine; but
    // from the child's point of view we are outside. Both views hold.
    let me = Preflight::new().run().unwrap();
    let child_pid = child.id() as i32;
    let from_child = findings_of(&child, Preflight::new());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !me.iter().any(|f| f.pid == child_pid && f.fd == Some(3)),
        "{me:#?}"
    );
    assert!(
        from_child.iter().any(|f| f.fd == Some(3)),
        "{from_child:#?}"
    );
}

#[test]
fn checkpoint_stops_before_freezing_and_lists_what_to_fix() {
    let service = Service::start();
    let images = images_dir();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut program = Program::start(
        &service,
        images.path(),
        &[
            "--connect",
            path.to_str().unwrap(),
            "--at",
            "2",
            "--until",
            "4",
            "--interval-ms",
            "50",
        ],
    );
    let (_peer, _) = listener.accept().unwrap();
    let line = program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "));
    assert_eq!(
        line,
        "checkpoint error: checkpoint not attempted: the preflight found 1 problem (nothing was frozen):"
    );
    assert!(program.wait().success(), "the program goes on");
    let output = program.output();
    let finding = output
        .lines()
        .find(|l| l.starts_with("  [refused] pid "))
        .unwrap_or_else(|| panic!("{output}"));
    assert!(
        finding.contains("stream unix socket connected to socket")
            && finding.contains(&format!("by pid {}", std::process::id())),
        "{finding}"
    );
    assert!(
        std::fs::read_dir(images.path()).unwrap().next().is_none(),
        "CRIU never ran: no log, no images"
    );
}

#[test]
fn selfdump_check_pid_prints_the_findings() {
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let mut child = child_holding(theirs.as_fd());
    drop(theirs);
    let pid = child.id();
    let out = Command::new(selfdump_bin())
        .args(["check", "--pid", &pid.to_string()])
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "[refused] pid {pid} fd 3: stream unix socket connected to socket"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("verdict: CRIU would refuse this process (1 finding(s))"),
        "{stdout}"
    );

    let out = Command::new(selfdump_bin())
        .args(["check", "--pid", &std::process::id().to_string()])
        .output_guarded()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: "));
}

/// Waits until `pred` holds for process `pid`, up to 10 s.
fn wait_until(what: &str, pred: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pred() {
        if std::time::Instant::now() > deadline {
            eprintln!("gave up waiting for {what}");
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn a_traced_process_is_refused() {
    let mut sleeper = Command::new("sleep").arg("600").spawn_guarded().unwrap();
    let pid = sleeper.id();
    let Ok(mut strace) = Command::new("strace")
        .args(["-o", "/dev/null", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn_guarded()
    else {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        panic!("strace is not installed: scripts/test.sh installs it");
    };
    let traced = wait_until("strace to attach", || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| !s.contains("TracerPid:\t0\n"))
    });
    let findings = Preflight::new().pid(pid as i32).run().unwrap();
    let _ = strace.kill();
    let _ = strace.wait();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(traced, "strace did not attach");
    let f = findings
        .iter()
        .find(|f| f.kind == Kind::Traced)
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!((f.fd, f.severity), (None, Severity::Refused));
    assert!(f.what.contains("(strace)"), "names the tracer: {f}");
}

#[test]
fn an_io_uring_is_refused() {
    // python3's ctypes makes the io_uring_setup(2) call (425 on x86_64 and
    // aarch64) that std cannot.
    let script = "import ctypes,time\n\
                  libc=ctypes.CDLL(None)\n\
                  params=ctypes.create_string_buffer(120)\n\
                  print(libc.syscall(425,4,params),flush=True)\n\
                  time.sleep(600)\n";
    let Ok(mut python) = Command::new("python3")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn_guarded()
    else {
        panic!("python3 is not installed: scripts/test.sh installs it");
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(python.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let fd: i32 = line.trim().parse().unwrap_or(-1);
    let findings = Preflight::new().pid(python.id() as i32).run().unwrap();
    let _ = python.kill();
    let _ = python.wait();
    if fd < 0 {
        return skip(
            Limit::NoIoUring,
            &format!("io_uring_setup returned {fd}: no io_uring to find"),
        );
    }
    let f = findings
        .iter()
        .find(|f| f.fd == Some(fd))
        .unwrap_or_else(|| panic!("fd {fd}: {findings:#?}"));
    assert_eq!((f.kind, f.severity), (Kind::IoUring, Severity::Refused));
}

#[test]
fn strict_preflight_stops_on_risky_findings_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("written")).unwrap();
    let options = selfdump::Options::new(dir.path())
        .socket("/nonexistent/selfdump.sock")
        .strict_preflight();
    match selfdump::blocking::checkpoint(options) {
        Err(selfdump::Error::Preflight(findings)) => assert!(
            findings
                .iter()
                .any(|f| f.fd == Some(file.as_raw_fd()) && f.kind == Kind::WrittenWithoutAppend),
            "{findings:#?}"
        ),
        other => panic!("expected the preflight to stop it: {other:?}"),
    }
}
