//! Attacks on who gets dumped: a pid smuggled into the request, a caller
//! whose pid is recycled to a victim, and other processes (of this or
//! another user) running next to the caller.

use crate::Ctx;
use crate::common::Guarded;
use crate::common::*;
use crate::support::*;
use async_io::Async;
use selfdump::proto::{self, DumpOptions, RefusalKind, Request};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The request has no pid field. A body that smuggles one in is refused
/// before anything looks at the fd (sent here with a regular file as the
/// "directory": had the body been accepted, the refusal would name the fd).
pub fn spoofed_pid_in_request(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let file = tempfile::tempfile().unwrap();
    let victim = 1; // init
    // {"Checkpoint": [leave_running, tcp, locks, ext_unix_sk, pid]}
    let mut extra_field = vec![0x81, 0xaa];
    extra_field.extend_from_slice(b"Checkpoint");
    extra_field.extend_from_slice(&[0x95, 0xc3, 0xc2, 0xc2, 0xc2, victim]);
    // a second top-level value: the request, then the pid
    let mut body = rmp_serde::to_vec(&Request::Checkpoint(DumpOptions::default())).unwrap();
    body.push(victim);
    // {"Checkpoint": [...], "pid": 1}
    let mut two_keys = vec![0x82, 0xaa];
    two_keys.extend_from_slice(b"Checkpoint");
    two_keys.extend_from_slice(&[0x94, 0xc3, 0xc2, 0xc2, 0xc2, 0xa3]);
    two_keys.extend_from_slice(b"pid");
    two_keys.push(victim);
    let mut said = Vec::new();
    for (what, body) in [
        ("extra pid field", extra_field),
        ("trailing pid", body),
        ("pid key", two_keys),
    ] {
        let (kind, message) = refusal(exchange(&socket, &frame_with_body(&body), &[file.as_fd()]));
        assert_eq!(kind, RefusalKind::BadRequest, "{what}: {message}");
        assert!(
            message.contains("malformed") || message.contains("trailing"),
            "{what}: {message}"
        );
        said.push(message);
    }
    ctx.reached("each body refused at its decoding, before the fd was looked at");
    format!("refused as malformed/trailing ({})", said.join(" | "))
}

/// The caller connects, then exits, and its pid is given to another
/// process (a victim) before the service acts on the request (which the
/// caller's connection, kept alive elsewhere, then sends). The service
/// knows the caller by its pidfd, sees that it exited, and refuses: the
/// victim, now holding the pid, is never dumped.
pub fn recycled_pid(ctx: &mut Ctx) -> String {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    let socket = ctx.service(|b| b);
    let addr = rustix::net::SocketAddrUnix::new(socket.as_path()).unwrap();
    // the caller: connects in the child, before exec, and keeps the
    // connection as its stdin
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600").stdin(std::process::Stdio::null());
    // SAFETY: only raw syscalls (socket, connect, dup2) run between fork and exec.
    unsafe {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let s = rustix::net::socket(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                None,
            )?;
            rustix::net::connect(&s, &addr)?;
            let mut stdin = std::os::fd::OwnedFd::from_raw_fd(0);
            let dup = rustix::io::dup2(&s, &mut stdin);
            std::mem::forget(stdin);
            dup?;
            Ok(())
        });
    }
    let mut caller = cmd.spawn_guarded().unwrap();
    let pid = caller.id() as i32;
    let pidfd = pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
    let conn = UnixStream::from(pidfd_getfd(&pidfd, 0, PidfdGetfdFlags::empty()).unwrap());
    wait_accepted(&conn);
    let _ = caller.kill();
    let _ = caller.wait();
    drop(pidfd);
    // give the pid to a victim
    let mut victim = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut v = std::process::Command::new("sleep")
            .arg("600")
            .spawn_guarded()
            .unwrap();
        if v.id() as i32 == pid {
            victim = Some(v);
            break;
        }
        let _ = v.kill();
        let _ = v.wait();
    }
    let _victim = Victim(victim.expect("could not recycle the pid"));
    let images = images_dir();
    let dir = std::fs::File::open(images.path()).unwrap();
    let answer = async_io::block_on(async {
        let stream = Async::new(conn).unwrap();
        proto::write_frame(&stream, &checkpoint_frame(), &[dir.as_fd()])
            .await
            .unwrap();
        proto::read_frame(&stream)
            .await
            .unwrap()
            .expect("an answer")
    });
    ctx.reached(format!(
        "the caller's connection accepted, the caller gone, its pid {pid} given to a victim"
    ));
    let (kind, message) = refusal(answer);
    assert_ne!(process_state(pid), Some('t'), "the victim was frozen");
    assert_eq!(kind, RefusalKind::NotPermitted, "{message}");
    assert!(message.contains("exited"), "{message}");
    assert!(
        image_files(images.path()).is_empty(),
        "something was dumped"
    );
    ctx.reached("refused at the caller check (its pidfd: exited)");
    format!("pid {pid} recycled to a victim; refused: {message}")
}

/// A caller cannot name another process: the dump is of the connecting
/// pid, whatever else runs. A victim next to the caller is not touched.
pub fn dump_is_always_of_the_connecting_pid(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let victim = Victim::start();
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 3 --interval-ms 20"),
        None,
    );
    let line = outcome(&program);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(line.ends_with(", 1 processes"), "{line}");
    assert!(program.wait().success());
    let manifest = std::fs::read(images.path().join("latest/selfdump-manifest")).unwrap();
    let (manifest, ..) = selfdump::server::manifest::Manifest::parse_unverified(&manifest).unwrap();
    assert_eq!(
        manifest.meta.pid, program.pid,
        "the images are of the caller"
    );
    assert_eq!(
        manifest.meta.pids,
        vec![program.pid],
        "and only of the caller"
    );
    let log = std::fs::read_to_string(images.path().join("latest/dump.log")).unwrap();
    assert_log_dumps_only(&log, program.pid, victim.pid());
    ctx.reached("the dump published; its manifest and CRIU's log name the caller alone");
    format!("dumped the caller (pid {}) only", program.pid)
}

/// An unprivileged caller asks while another user's process runs: the
/// service dumps the caller's own pid (by a CRIU running as the caller)
/// and never the other process.
pub fn another_users_process(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let victim = Victim::start();
    let images = dir_of(NOBODY);
    let program = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 3 --interval-ms 20"),
        Some(NOBODY),
    );
    let line = outcome(&program);
    let victim_pid = victim.pid();
    assert_ne!(process_state(victim_pid), Some('t'));
    let log = std::fs::read_to_string(dump_log(images.path())).unwrap();
    assert_log_dumps_only(&log, program.pid, victim_pid);
    ctx.reached("CRIU dumped the caller's pid, never the other user's process");
    assert_runs_on(&program);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    // the images are the caller's, and of the caller alone
    let generation = images.path().join("latest");
    let manifest = std::fs::read(generation.join("selfdump-manifest")).unwrap();
    let (manifest, ..) = selfdump::server::manifest::Manifest::parse_unverified(&manifest).unwrap();
    assert_eq!(manifest.meta.pids, vec![program.pid], "{line}");
    assert_eq!(manifest.meta.uid, NOBODY, "{line}");
    for (name, uid, _) in image_files(&generation) {
        assert_eq!(uid, NOBODY, "{name} is not the caller's");
    }
    ctx.reached("a generation committed, of the caller alone, the caller's");
    format!("dumped only the caller's own pid; {}", short(&line))
}

/// Waits until the in-process service has accepted `conn`'s connection:
/// this process holds the peer of `conn`'s socket (the kernel's
/// sock_diag, through `ss`, names the peer).
fn wait_accepted(conn: &UnixStream) {
    use std::os::fd::AsRawFd;
    let ours = std::fs::read_link(format!("/proc/self/fd/{}", conn.as_raw_fd())).unwrap();
    let inode = ours
        .to_string_lossy()
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_owned();
    poll_until(Duration::from_secs(30), Duration::from_millis(2), || {
        let out = std::process::Command::new("ss")
            .args(["-xanH"])
            .output_guarded()
            .unwrap();
        let peer = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 4 && w[w.len() - 3] == inode).then(|| w[w.len() - 1].to_owned())
        });
        let accepted = peer.is_some_and(|peer| {
            let want = std::path::PathBuf::from(format!("socket:[{peer}]"));
            open_fds().iter().any(|(_, target)| *target == want)
        });
        match accepted {
            true => Ok(()),
            false => Err("the service never accepted the caller's connection".into()),
        }
    });
}

/// A bystander process (`sleep`), killed and reaped on drop, even when an
/// assertion fails first.
struct Victim(std::process::Child);

impl Victim {
    fn start() -> Self {
        Self(
            std::process::Command::new("sleep")
                .arg("600")
                .spawn_guarded()
                .unwrap(),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CRIU's log shows a dump of `caller`'s tree, and `victim` never seized.
fn assert_log_dumps_only(log: &str, caller: i32, victim: i32) {
    assert!(
        log.contains(&format!("Dumping processes (pid: {caller} ")),
        "the dump is not of the caller {caller}"
    );
    for line in [
        format!("Dumping processes (pid: {victim} "),
        format!("Seized task {victim},"),
        format!("Dumping task (pid: {victim} "),
    ] {
        assert!(
            !log.contains(&line),
            "the victim {victim} in the log: {line}"
        );
    }
}
