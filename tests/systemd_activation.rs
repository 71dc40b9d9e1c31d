//! `selfdump serve` under a service manager: it serves on the listening
//! socket passed as fd 3 (socket activation, `LISTEN_PID`/`LISTEN_FDS`),
//! tells `$NOTIFY_SOCKET` `READY=1` once it serves, and a checkpoint goes
//! through that socket.

mod common;

use common::*;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `selfdump serve` started like systemd does: `listener` as fd 3, and
/// `LISTEN_PID` set (by a shell, to its own pid, which `exec` keeps) to
/// `listen_pid` or, when `None`, to the server's own pid.
fn serve(
    listener: &UnixListener,
    listen_pid: Option<u32>,
    notify: &Path,
    socket: &Path,
    log: &Path,
) -> Child {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let pid = listen_pid.map_or("$$".to_owned(), |p| p.to_string());
    let raw = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            r#"export LISTEN_PID={pid} LISTEN_FDS=1; exec "$0" "$@""#
        ))
        .arg(selfdump_bin())
        .arg("serve")
        .arg("--criu")
        .arg(criu().path)
        .arg("--socket")
        .arg(socket)
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
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
    cmd.spawn().expect("start selfdump serve")
}

fn receive(notify: &UnixDatagram, log: &Path) -> String {
    let mut buf = [0u8; 512];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification ({e}); serve said:\n{}", read(log)));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    use rustix::process::{Pid, Signal, kill_process};
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_takes_the_activated_socket_says_ready_and_checkpoints_through_it() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = dir.path().join("serve.log");
    let unused = dir.path().join("not-bound.sock");
    let server = serve(&listener, None, &notify_path, &unused, &log);
    drop(listener); // the server holds it now, as under systemd

    assert_eq!(receive(&notify, &log), "READY=1");
    assert!(
        !unused.exists(),
        "with an activated socket, --socket is not bound"
    );
    assert!(
        read(&log).contains("serving on the socket passed by the service manager"),
        "{}",
        read(&log)
    );

    // A checkpoint through the activated socket.
    let images = images_dir();
    let program_log = dir.path().join("counter.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&program_log)
        .unwrap();
    let status = Command::new(example("counter"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&socket)
        .args(["--at", "1", "--until", "2", "--interval-ms", "10"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    assert!(status.success());
    let output = read(&program_log);
    assert!(
        output.contains("checkpoint continued: frozen "),
        "{output}\nserve:\n{}",
        read(&log)
    );
    assert!(images.path().join("latest/pstree.img").exists());

    let status = terminate(server);
    assert!(status.success(), "{status:?}\n{}", read(&log));
    assert_eq!(receive(&notify, &log), "STOPPING=1");
    assert!(
        socket.exists(),
        "the socket belongs to the service manager: left in place"
    );
}

#[test]
fn listen_fds_meant_for_another_process_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("someone-elses.sock")).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = dir.path().join("serve.log");
    let own = dir.path().join("own.sock");
    // LISTEN_PID names init: the fds are not ours; bind --socket instead.
    let server = serve(&listener, Some(1), &notify_path, &own, &log);
    assert_eq!(receive(&notify, &log), "READY=1");
    assert!(own.exists(), "binds its own socket:\n{}", read(&log));
    assert!(terminate(server).success());
    assert!(!own.exists(), "and removes it on exit");
}
