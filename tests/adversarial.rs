//! The adversarial suite: each attack runs against a real service (in this
//! process) and real CRIU, and must be refused with the right error or
//! survived. After each one the service still serves a normal checkpoint,
//! holds no more fds than before the attack, and has no zombie children.
//!
//! The attacks run one after another from one test, because the service
//! shares this process: fd counts and children are only meaningful when
//! nothing else runs. The suite ends with the line
//! `adversarial: N attacks, N refused or survived, 0 served`.

mod common;

use async_io::Async;
use common::*;
use selfdump::proto::{
    self, DumpOptions, HEADER_LEN, Header, MAGIC, PROTOCOL_VERSION, RefusalKind, Request, Response,
};
use selfdump::server::{Builder, Policy};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
/// A second unprivileged uid, for directories owned by "someone else".
const OTHER: u32 = 4242;

/// What an attack leaves for the checks that follow it.
struct Ctx {
    socket: Option<PathBuf>,
    /// Keeps the attacked service alive until the checks are done.
    guard: Option<Box<dyn std::any::Any>>,
    /// Open fds once the service was up, before the attack.
    baseline: Vec<(i32, PathBuf)>,
    /// Whatever else must outlive the checks (files the service uses).
    keep: Vec<Box<dyn std::any::Any>>,
}

impl Ctx {
    fn new() -> Self {
        Self {
            socket: None,
            guard: None,
            baseline: Vec::new(),
            keep: Vec::new(),
        }
    }

    /// Starts the service to attack (default limits, `configure`d).
    fn service(&mut self, configure: impl FnOnce(Builder) -> Builder) -> PathBuf {
        self.guard = None;
        let service = Service::start_with(configure);
        let socket = service.socket.clone();
        self.adopt(socket.clone(), Box::new(service));
        socket
    }

    /// Takes over a service started by the attack itself.
    fn adopt(&mut self, socket: PathBuf, guard: Box<dyn std::any::Any>) {
        self.socket = Some(socket);
        self.guard = Some(guard);
        std::thread::sleep(Duration::from_millis(20));
        self.baseline = open_fds();
    }
}

/// Sends raw bytes (and fds) on a new connection and reads one answer frame.
fn exchange(socket: &Path, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> proto::Frame {
    async_io::block_on(async {
        let stream = Async::<UnixStream>::connect(socket).await.unwrap();
        proto::write_frame(&stream, bytes, fds).await.unwrap();
        proto::read_frame(&stream)
            .await
            .unwrap()
            .expect("an answer")
    })
}

fn refusal(frame: proto::Frame) -> (RefusalKind, String) {
    match proto::decode_body::<Response>(frame.header, &frame.body).unwrap() {
        Response::Refused(r) => (r.kind, r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn checkpoint_frame() -> Vec<u8> {
    proto::encode_frame(&Request::Checkpoint(DumpOptions::default()))
}

fn frame_with_body(body: &[u8]) -> Vec<u8> {
    let mut frame = Header {
        version: PROTOCOL_VERSION,
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    frame.extend_from_slice(body);
    frame
}

/// A directory owned by `uid`, mode 0755.
fn dir_of(uid: u32) -> tempfile::TempDir {
    let dir = images_dir();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    dir
}

fn allow(uids: &[u32]) -> impl FnOnce(Builder) -> Builder {
    let uids = uids.to_vec();
    move |b: Builder| {
        b.policy(Policy {
            allow_uids: uids.into_iter().collect(),
            ..Policy::default()
        })
    }
}

/// Runs the counter and returns its `checkpoint ...` line.
fn outcome(program: &Program) -> String {
    program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "))
}

/// Waits until `pid` is stopped by CRIU (ptrace stop), i.e. frozen.
fn wait_frozen(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_state(pid) != Some('t') {
        assert!(Instant::now() < deadline, "pid {pid} never froze");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The program counts on after its checkpoint: it is running, not frozen.
fn assert_runs_on(program: &Program) {
    let before = program.output().matches("count ").count();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = program.output();
        // counting on, or already done (a short run may end meanwhile)
        if output.matches("count ").count() > before + 1 || output.ends_with("done\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pid {} does not count on (state {:?}):\n{}",
            program.pid,
            process_state(program.pid),
            program.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(process_state(program.pid), Some('t'), "left frozen");
}

/// No image was left behind, and nothing root's: at most the caller's log.
fn assert_no_images(dir: &Path, caller: u32) {
    for (name, uid, _) in image_files(dir) {
        assert!(
            name == "dump.log" || name.ends_with(".log"),
            "{name} left in {}",
            dir.display()
        );
        assert_eq!(uid, caller, "{name} is not the caller's");
    }
}

/// The `criu swrk` children of this process (the in-process service's).
fn criu_children() -> Vec<i32> {
    own_children()
        .into_iter()
        .filter(|(_, _, comm)| comm == "criu")
        .map(|(pid, ..)| pid)
        .collect()
}

fn kill(pid: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
}

// ---------------------------------------------------------------------------
// The attacks. Each returns what the service did, in a few words.

/// The request has no pid field. A body that smuggles one in is refused
/// before anything looks at the fd (sent here with a regular file as the
/// "directory": had the body been accepted, the refusal would name the fd).
fn spoofed_pid_in_request(ctx: &mut Ctx) -> String {
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
    format!("refused as malformed/trailing ({})", said.join(" | "))
}

/// The caller connects, then exits, and its pid is given to another
/// process (a victim) before the service acts on the request (which the
/// caller's connection, kept alive elsewhere, then sends). The service
/// knows the caller by its pidfd, sees that it exited, and refuses: the
/// victim, now holding the pid, is never dumped.
fn recycled_pid(ctx: &mut Ctx) -> String {
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
    let mut caller = cmd.spawn().unwrap();
    let pid = caller.id() as i32;
    let pidfd = pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
    let conn = UnixStream::from(pidfd_getfd(&pidfd, 0, PidfdGetfdFlags::empty()).unwrap());
    std::thread::sleep(Duration::from_millis(200)); // the service has accepted it
    let _ = caller.kill();
    let _ = caller.wait();
    drop(pidfd);
    // give the pid to a victim
    let mut victim = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut v = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
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
    let (kind, message) = refusal(answer);
    assert_ne!(process_state(pid), Some('t'), "the victim was frozen");
    assert_eq!(kind, RefusalKind::NotPermitted, "{message}");
    assert!(message.contains("exited"), "{message}");
    assert!(
        image_files(images.path()).is_empty(),
        "something was dumped"
    );
    format!("pid {pid} recycled to a victim; refused: {message}")
}

/// A caller cannot name another process: the dump is of the connecting
/// pid, whatever else runs. A victim next to the caller is not touched.
fn dump_is_always_of_the_connecting_pid(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let victim = Victim::start();
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &["--at", "1", "--until", "3", "--interval-ms", "20"],
        None,
    );
    let line = outcome(&program);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(line.ends_with(", 1 processes"), "{line}");
    assert!(program.wait().success());
    let meta = std::fs::read(images.path().join("selfdump-meta.msgpack")).unwrap();
    let meta: selfdump::server::images::ImageMeta = rmp_serde::from_slice(&meta).unwrap();
    assert_eq!(meta.pid, program.pid, "the images are of the caller");
    let log = std::fs::read_to_string(images.path().join("dump.log")).unwrap();
    assert_log_dumps_only(&log, program.pid, victim.pid());
    format!("dumped the caller (pid {}) only", program.pid)
}

/// An unprivileged caller asks while another user's process runs: the
/// service dumps the caller's own pid (CRIU then fails here without
/// CAP_SYS_RESOURCE) and never the other process.
fn another_users_process(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let victim = Victim::start();
    let images = dir_of(NOBODY);
    let program = Program::start_on(
        &socket,
        images.path(),
        &["--at", "1", "--until", "3", "--interval-ms", "20"],
        Some(NOBODY),
    );
    let line = outcome(&program);
    let victim_pid = victim.pid();
    assert_ne!(process_state(victim_pid), Some('t'));
    let log = std::fs::read_to_string(images.path().join("dump.log")).unwrap();
    assert_log_dumps_only(&log, program.pid, victim_pid);
    assert_runs_on(&program);
    assert_no_images_unless_dumped(images.path(), &line);
    format!("dumped only the caller's own pid; {}", short(&line))
}

/// A bystander process (`sleep`), killed and reaped on drop, even when an
/// assertion fails first.
struct Victim(std::process::Child);

impl Victim {
    fn start() -> Self {
        Self(
            std::process::Command::new("sleep")
                .arg("600")
                .spawn()
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

fn assert_no_images_unless_dumped(dir: &Path, line: &str) {
    if !line.starts_with("checkpoint continued") {
        assert_no_images(dir, NOBODY);
    }
}

fn short(line: &str) -> String {
    line.chars().take(160).collect()
}

/// A caller whose child runs a setuid-root binary: the frozen tree is
/// checked and the dump vetoed, naming the task.
fn setuid_child_in_tree(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let bin = tempfile::Builder::new()
        .prefix("selfdump-suid")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let sleeper = bin.path().join("suid-sleep");
    std::fs::copy("/bin/sleep", &sleeper).unwrap();
    std::fs::set_permissions(&sleeper, PermissionsExt::from_mode(0o4755)).unwrap();
    let images = dir_of(NOBODY);
    let command = format!("{} 600", sleeper.display());
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--children",
            "1",
            "--child-exec",
            &command,
            "--at",
            "3",
            "--until",
            "6",
            "--interval-ms",
            "100",
        ],
        Some(NOBODY),
    );
    let child = program.children()[0];
    let line = outcome(&program);
    assert!(
        line.contains("dump refused after the freeze")
            && line.contains(&format!("task pid {child} (suid-sleep)"))
            && line.contains("setuid"),
        "{line}"
    );
    assert_runs_on(&program);
    assert!(program.wait().success());
    kill_and_reap(child);
    assert_no_images(images.path(), NOBODY);
    format!("vetoed at the freeze: {}", short(&line))
}

/// A root caller whose child dropped to nobody (the kernel marks it
/// non-dumpable): vetoed, because every task must pass the caller checks.
fn privilege_dropped_child_of_root(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--children",
            "1",
            "--child-setuid",
            "65534",
            "--at",
            "3",
            "--until",
            "6",
            "--interval-ms",
            "100",
        ],
        None,
    );
    let child = program.children()[0];
    let line = outcome(&program);
    assert!(
        line.contains(&format!("task pid {child} (counter)")) && line.contains("not dumpable"),
        "{line}"
    );
    assert_runs_on(&program);
    assert!(program.wait().success());
    kill_and_reap(child);
    assert_no_images(images.path(), 0);
    format!("vetoed at the freeze: {}", short(&line))
}

/// A root caller with one thread that switched its own ids to nobody: the
/// walk covers every thread, and this one fails the checks.
fn thread_of_another_uid(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--thread-setuid",
            "65534",
            "--at",
            "2",
            "--until",
            "5",
            "--interval-ms",
            "50",
        ],
        None,
    );
    let said = program.wait_for("the thread", |l| l.starts_with("thread "));
    let tid: i32 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    let line = outcome(&program);
    assert!(
        line.contains(&format!(
            "thread {tid} (counter) of the caller (pid {})",
            program.pid
        )) && line.contains("not dumpable"),
        "{line}"
    );
    assert_runs_on(&program);
    assert!(program.wait().success());
    assert_no_images(images.path(), 0);
    format!("vetoed at the freeze: {}", short(&line))
}

/// An unprivileged caller with a child that made itself non-dumpable.
fn nondumpable_child_in_tree(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = dir_of(NOBODY);
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--children",
            "1",
            "--child-nondumpable",
            "--at",
            "3",
            "--until",
            "6",
            "--interval-ms",
            "100",
        ],
        Some(NOBODY),
    );
    let child = program.children()[0];
    let line = outcome(&program);
    assert!(
        line.contains(&format!("task pid {child} (counter)")) && line.contains("not dumpable"),
        "{line}"
    );
    assert_runs_on(&program);
    assert!(program.wait().success());
    kill_and_reap(child);
    assert_no_images(images.path(), NOBODY);
    format!("vetoed at the freeze: {}", short(&line))
}

/// A caller that made itself non-dumpable is refused before CRIU runs.
fn nondumpable_caller(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = dir_of(NOBODY);
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--nondumpable",
            "--at",
            "1",
            "--until",
            "3",
            "--interval-ms",
            "20",
        ],
        Some(NOBODY),
    );
    let line = outcome(&program);
    assert!(
        line.contains("refused (NotPermitted)") && line.contains("not dumpable"),
        "{line}"
    );
    assert!(program.wait().success());
    assert!(image_files(images.path()).is_empty(), "nothing written");
    format!("refused before CRIU: {}", short(&line))
}

/// A directory the caller cannot write (root's, 0755).
fn unwritable_images_dir(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
        Some(NOBODY),
    );
    let line = outcome(&program);
    assert!(
        line.contains("refused (BadDirectory)") && line.contains("may not create files"),
        "{line}"
    );
    assert!(program.wait().success());
    assert!(image_files(images.path()).is_empty());
    format!("refused: {}", short(&line))
}

/// A directory owned by another unprivileged user (0755).
fn foreign_owned_images_dir(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = dir_of(OTHER);
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
        Some(NOBODY),
    );
    let line = outcome(&program);
    assert!(
        line.contains("refused (BadDirectory)") && line.contains("may not create files"),
        "{line}"
    );
    assert!(program.wait().success());
    assert!(image_files(images.path()).is_empty());
    format!("refused: {}", short(&line))
}

/// Fds that are not directories: a regular file, a pipe, a socket.
fn non_directory_images_fd(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let file = tempfile::tempfile().unwrap();
    let (pipe, _w) = rustix::pipe::pipe().unwrap();
    let (sock, _other) = UnixStream::pair().unwrap();
    for fd in [file.as_fd(), pipe.as_fd(), sock.as_fd()] {
        let (kind, message) = refusal(exchange(&socket, &checkpoint_frame(), &[fd]));
        assert_eq!(kind, RefusalKind::BadDirectory, "{message}");
        assert!(message.contains("not a directory"), "{message}");
    }
    "refused file, pipe and socket fds as not a directory".into()
}

/// Symlinks planted inside the images directory at names CRIU and the
/// service write: never followed. The directory itself, opened through a
/// symlink, is fine.
fn symlinks_planted_in_images_dir(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let victim = Path::new("/etc/selfdump-victim");
    std::fs::write(victim, "precious\n").unwrap();
    let images = images_dir();
    for name in [
        "pstree.img",
        "inventory.img",
        "dump.log",
        "selfdump-meta.msgpack",
        "stats-dump",
    ] {
        std::os::unix::fs::symlink(victim, images.path().join(name)).unwrap();
    }
    let links = tempfile::tempdir().unwrap();
    let via_link = links.path().join("images");
    std::os::unix::fs::symlink(images.path(), &via_link).unwrap();
    let mut program = Program::start_on(
        &socket,
        &via_link,
        &["--at", "1", "--until", "3", "--interval-ms", "20"],
        None,
    );
    let line = outcome(&program);
    assert!(program.wait().success());
    let kept = std::fs::read_to_string(victim).unwrap();
    std::fs::remove_file(victim).unwrap();
    assert_eq!(
        kept, "precious\n",
        "the victim was written through a symlink"
    );
    assert!(line.starts_with("checkpoint continued"), "{line}");
    for (name, _, mode) in image_files(images.path()) {
        let meta = std::fs::symlink_metadata(images.path().join(&name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is still a link");
        assert_eq!(mode, 0o600, "{name}");
    }
    assert!(restore_check(images.path()));
    "dumped; planted links replaced, never followed; victim untouched".into()
}

/// The images restore (they are good): checks that pstree.img parses.
fn restore_check(dir: &Path) -> bool {
    let image = std::fs::read(dir.join("pstree.img")).unwrap();
    selfdump::server::images::entries(&image).count() == 1
}

/// A header announcing a 4 GiB body: refused from the header alone.
fn oversize_length_claim(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    let (kind, message) = refusal(exchange(&socket, &header, &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("exceeds the limit"), "{message}");
    format!("refused before allocating: {message}")
}

/// A frame that ends early; the client then waits for the answer.
fn truncated_frame(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let frame = checkpoint_frame();
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.write_all(&frame[..frame.len() - 2]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (kind, message) = read_refusal(&mut stream);
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("middle of a frame"), "{message}");
    format!("refused: {message}")
}

fn read_refusal(stream: &mut UnixStream) -> (RefusalKind, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let header = Header::parse(&header).unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).unwrap();
    match proto::decode_body::<Response>(header, &body).unwrap() {
        Response::Refused(r) => (r.kind, r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn trailing_bytes(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut body = rmp_serde::to_vec(&Request::Checkpoint(DumpOptions::default())).unwrap();
    body.extend_from_slice(&[0xc0, 0xc0, 0xc0]);
    let (kind, message) = refusal(exchange(&socket, &frame_with_body(&body), &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("3 unexpected trailing bytes"), "{message}");
    format!("refused: {message}")
}

fn garbage_bytes(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let (kind, message) = refusal(exchange(&socket, &garbage, &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("not a selfdump peer"), "{message}");
    // garbage after a valid header: a body that is not MessagePack of a request
    let (kind, message) = refusal(exchange(&socket, &frame_with_body(&garbage[..64]), &[]));
    assert_eq!(kind, RefusalKind::BadRequest, "{message}");
    format!("refused both: {}", short(&message))
}

fn wrong_magic(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut frame = checkpoint_frame();
    frame[..4].copy_from_slice(b"CRIU");
    let (kind, message) = refusal(exchange(&socket, &frame, &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("not a selfdump peer"), "{message}");
    format!("refused: {message}")
}

fn wrong_version(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let file = tempfile::tempfile().unwrap();
    let body = b"\x91\x00";
    let mut frame = Header {
        version: PROTOCOL_VERSION.wrapping_add(7),
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    frame.extend_from_slice(body);
    let answer = exchange(&socket, &frame, &[file.as_fd()]);
    assert_eq!(answer.header.version, PROTOCOL_VERSION);
    let text = String::from_utf8(answer.body).unwrap();
    assert!(text.contains("version mismatch"), "{text}");
    format!("answered in its own version: {text}")
}

/// 253 fds (SCM_MAX_FD) in one message: refused, and every one of them is
/// closed in the service (counted by what this process still has open on
/// the file, after closing its own copies).
fn fds_253_in_one_message(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let target = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let path = target.canonicalize().unwrap();
    let files: Vec<std::fs::File> = (0..253)
        .map(|_| std::fs::File::open(&path).unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    let answer = async_io::block_on(async {
        let stream = Async::<UnixStream>::connect(&socket).await.unwrap();
        let frame = checkpoint_frame();
        // send the fds with the first byte, by hand: write_frame allows MAX_FDS only
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        let sent = rustix::net::sendmsg(
            stream.get_ref(),
            &[std::io::IoSlice::new(&frame[..1])],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, 1);
        proto::write_frame(&stream, &frame[1..], &[]).await.unwrap();
        proto::read_frame(&stream)
            .await
            .unwrap()
            .expect("an answer")
    });
    drop(files);
    let (kind, message) = refusal(answer);
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(
        message.contains("too many file descriptors") || message.contains("file descriptors"),
        "{message}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = open_fds().iter().filter(|(_, p)| *p == path).count();
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} of the sent fds still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    format!("refused ({message}); 0 of the 253 fds left open")
}

/// 1000 idle connections from one uid. With the default limits (256 at
/// once, 64 per uid) the extras are refused at once as busy, another uid is
/// served meanwhile, and the admitted ones are cut off after the request
/// timeout. Without the per-uid limit, the global one refuses the extras.
/// Then a normal checkpoint is served while the 1000 are still open.
fn idle_connections_1000(ctx: &mut Ctx) -> String {
    raise_nofile(8192);
    let timeout = Duration::from_secs(3);
    let socket = ctx.service(move |b| allow(&[NOBODY])(b).request_timeout(timeout));
    let started = Instant::now();
    let mut conns = flood(&socket, 1000);
    // another user is not held back by the flood
    let images = dir_of(NOBODY);
    let mut other = Program::start_on(
        &socket,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
        Some(NOBODY),
    );
    let line = outcome(&other);
    let served_within = started.elapsed();
    assert!(!line.contains("Busy"), "{line}");
    assert!(
        line.starts_with("checkpoint continued") || line.contains("criu dump failed"),
        "{line}"
    );
    assert!(
        served_within < timeout,
        "served only after {served_within:?}"
    );
    assert!(other.wait().success());
    let (busy, cut) = answers(&mut conns);
    assert_eq!((busy, cut), (1000 - 64, 64));
    assert_still_serves(&socket);
    drop(conns);

    let socket = ctx.service(move |b| b.request_timeout(timeout).max_connections_per_uid(1000));
    let mut conns = flood(&socket, 1000);
    let (global_busy, global_cut) = answers(&mut conns);
    assert_eq!((global_busy, global_cut), (1000 - 256, 256));
    assert_still_serves(&socket);
    drop(conns);
    format!(
        "per uid: {busy} refused as busy at once, {cut} cut off after {timeout:?}, another uid \
         served meanwhile within {served_within:.1?}; global: {global_busy} busy, {global_cut} cut off"
    )
}

fn flood(socket: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .map(|_| UnixStream::connect(socket).unwrap())
        .collect()
}

/// Reads the answer on each connection: (refused as busy, cut off by the timeout).
fn answers(conns: &mut [UnixStream]) -> (usize, usize) {
    let (mut busy, mut cut) = (0, 0);
    for c in conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut header = [0u8; HEADER_LEN];
        c.read_exact(&mut header).unwrap();
        let header = Header::parse(&header).unwrap();
        let mut body = vec![0u8; header.body_len as usize];
        c.read_exact(&mut body).unwrap();
        match proto::decode_body::<Response>(header, &body).unwrap() {
            Response::Refused(r) if r.kind == RefusalKind::Busy => busy += 1,
            Response::Refused(r) if r.message.contains("no complete request") => cut += 1,
            other => panic!("{other:?}"),
        }
    }
    (busy, cut)
}

fn raise_nofile(n: u64) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current.is_some_and(|c| c < n) {
        let max = limit.maximum.map_or(n, |m| m.max(n));
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(n.min(max)),
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
}

/// A client that sends its request one byte a second: cut off by the
/// request timeout.
fn one_byte_a_second(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b.request_timeout(Duration::from_secs(2)));
    let frame = checkpoint_frame();
    let mut stream = UnixStream::connect(&socket).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    for byte in &frame {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        // the answer arrives as soon as the service gives up
        let mut probe = [0u8; 1];
        let got = rustix::net::recv(
            &stream,
            &mut probe,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        );
        if matches!(got, Ok((n, _)) if n > 0) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (kind, message) = read_refusal(&mut stream);
    let took = started.elapsed();
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(
        message.contains("no complete request within 2s"),
        "{message}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    format!("cut off after {sent} bytes, {took:.1?}: {message}")
}

/// A client that closes its connection in the middle of a frame (header
/// and half a body, or half a header).
fn close_mid_frame(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let frame = checkpoint_frame();
    for cut in [3, HEADER_LEN + 1] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(&frame[..cut]).unwrap();
        drop(stream);
    }
    "survived: nothing to answer, connections closed".into()
}

/// The caller is killed while frozen, mid-dump.
fn client_dies_mid_dump(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--alloc-mb",
            "256",
            "--at",
            "1",
            "--until",
            "600",
            "--interval-ms",
            "20",
        ],
        None,
    );
    program.wait_for("count 1", |l| l == "count 1");
    wait_frozen(program.pid);
    kill(program.pid);
    program.kill();
    wait_no_criu();
    assert_no_staging(images.path());
    assert!(
        !images.path().join("pstree.img").exists()
            || images.path().join("selfdump-meta.msgpack").exists(),
        "a partial image set was left"
    );
    let names: Vec<String> = image_files(images.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    format!("survived; the images dir holds {names:?}")
}

/// Waits until CRIU writes memory images into the staging directory.
fn wait_for_memdump(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staging = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(".selfdump-"));
        let writing = staging.is_some_and(|s| {
            std::fs::read_dir(s.path())
                .map(|d| {
                    d.flatten()
                        .any(|f| f.file_name().to_string_lossy().starts_with("pagemap-"))
                })
                .unwrap_or(false)
        });
        if writing {
            return;
        }
        assert!(Instant::now() < deadline, "criu never wrote memory");
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// No staging directory is left (the service removes it right after CRIU
/// is reaped: give it a moment).
fn assert_no_staging(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names: Vec<String> = image_files(dir).into_iter().map(|f| f.0).collect();
        if !names.iter().any(|n| n.starts_with(".selfdump-")) {
            return;
        }
        assert!(Instant::now() < deadline, "staging left: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_no_criu() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !criu_children().is_empty() {
        assert!(Instant::now() < deadline, "criu still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CRIU is killed mid-dump, with the caller frozen: the caller must end up
/// running and get an error.
fn criu_killed_mid_dump(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut said = Vec::new();
    // killed as soon as the tree is seized, and while it writes memory
    // (the parasite is in the caller then)
    for during_memdump in [false, true] {
        let images = images_dir();
        let mut program = Program::start_on(
            &socket,
            images.path(),
            &[
                "--alloc-mb",
                "256",
                "--at",
                "1",
                "--until",
                "100",
                "--interval-ms",
                "20",
            ],
            None,
        );
        program.wait_for("count 1", |l| l == "count 1");
        wait_frozen(program.pid);
        if during_memdump {
            wait_for_memdump(images.path());
        }
        let criu = criu_children();
        assert_eq!(criu.len(), 1, "one criu child: {criu:?}");
        kill(criu[0]);
        let line = outcome(&program);
        assert!(line.starts_with("checkpoint error"), "{line}");
        assert_runs_on(&program);
        program.kill();
        wait_no_criu();
        assert_no_staging(images.path());
        assert!(!images.path().join("pstree.img").exists());
        let when = if during_memdump {
            "during memdump"
        } else {
            "at the seize"
        };
        said.push(format!("{when}: {}", short(&line)));
    }
    format!("caller thawed and told: {}", said.join(" | "))
}

/// The service dies between the freeze and the result query: the original
/// must hear "outcome unknown", never success and never "restored". Twice:
/// with a new service already listening on the socket when the original
/// asks (it knows nothing of the job), and with none.
fn service_restarted_between_freeze_and_result(ctx: &mut Ctx) -> String {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-sock")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path().join("selfdump.sock");
    let mut said = Vec::new();
    let mut last = None;
    for restarted_first in [true, false] {
        let first = KillableService::start_at(&socket, |b| b);
        let images = images_dir();
        let mut program = Program::start_on(
            &socket,
            images.path(),
            &[
                "--alloc-mb",
                "256",
                "--at",
                "1",
                "--until",
                "100",
                "--interval-ms",
                "20",
            ],
            None,
        );
        program.wait_for("count 1", |l| l == "count 1");
        wait_frozen(program.pid);
        // CRIU writes memory only after the freeze hook sent `Frozen`
        wait_for_memdump(images.path());
        let second = if restarted_first {
            // the new service takes over the path while the old one dies
            std::fs::remove_file(&socket).unwrap();
            let second = KillableService::start_at(&socket, |b| b);
            first.kill();
            second
        } else {
            first.kill();
            let line = outcome(&program);
            said.push(format!("no service: {}", short(&line)));
            assert_unknown(&line);
            assert_runs_on(&program);
            program.kill();
            wait_no_criu();
            // the killed service left no root-owned staging directory
            assert_no_staging(images.path());
            last = Some(KillableService::start_at(&socket, |b| b));
            continue;
        };
        let line = outcome(&program);
        assert_unknown(&line);
        assert!(line.contains("does not know this job"), "{line}");
        said.push(format!("restarted: {}", short(&line)));
        assert_runs_on(&program);
        program.kill();
        wait_no_criu();
        assert_no_staging(images.path());
        drop(second);
    }
    ctx.adopt(socket, Box::new((last, dir)));
    format!("original told: {}", said.join(" | "))
}

fn assert_unknown(line: &str) {
    assert!(
        line.starts_with("checkpoint error: outcome of checkpoint") && line.contains("unknown"),
        "{line}"
    );
}

/// The images directory is a 64 KiB tmpfs: the dump fails, the caller is
/// told, and no partial image set is left to pass for a good one.
fn disk_full(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(images.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount a tiny tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(images.path().to_path_buf());
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &[
            "--alloc-mb",
            "1",
            "--at",
            "1",
            "--until",
            "4",
            "--interval-ms",
            "50",
        ],
        None,
    );
    let line = outcome(&program);
    assert!(line.starts_with("checkpoint error"), "{line}");
    assert!(program.wait().success(), "the caller runs on");
    assert_no_images(images.path(), 0);
    assert_no_staging(images.path());
    format!("caller told: {}", short(&line))
}

/// The whole dump may take `dump_timeout`; past it CRIU is killed and the
/// tree must end up running, not frozen.
fn dump_timeout_exceeded(ctx: &mut Ctx) -> String {
    let mut said = Vec::new();
    for timeout_ms in [1u64, 250] {
        let socket = ctx.service(|b| b.dump_timeout(Duration::from_millis(timeout_ms)));
        let images = images_dir();
        let mut program = Program::start_on(
            &socket,
            images.path(),
            &[
                "--alloc-mb",
                "512",
                "--at",
                "1",
                "--until",
                "100",
                "--interval-ms",
                "20",
            ],
            None,
        );
        // was the tree frozen when the time ran out?
        let mut frozen = false;
        while !program.output().contains("checkpoint ") {
            frozen |= process_state(program.pid) == Some('t');
            std::thread::sleep(Duration::from_micros(500));
        }
        let line = outcome(&program);
        assert!(
            line.contains("exceeded its time limit") && line.contains("criu was killed"),
            "{line}"
        );
        if timeout_ms > 1 {
            assert!(frozen, "the time limit should have struck while frozen");
        }
        assert_runs_on(&program);
        program.kill();
        wait_no_criu();
        assert_no_staging(images.path());
        assert!(!images.path().join("pstree.img").exists());
        said.push(format!(
            "{timeout_ms} ms (frozen then: {frozen}): {}",
            short(&line)
        ));
    }
    format!("CRIU killed, caller running: {}", said.join(" | "))
}

/// The per-uid limit: with one dump per uid, a second dump of the same
/// uid is refused as busy while the first runs (CRIU is slowed down by a
/// wrapper); another uid is not held back by it.
fn dumps_per_uid_limit(ctx: &mut Ctx) -> String {
    let (wrap, slow) = slow_criu();
    let socket = ctx.service(move |b| allow(&[NOBODY])(b).max_dumps_per_uid(1).criu(slow));
    let (first_dir, second_dir, nobody_dir) = (images_dir(), images_dir(), dir_of(NOBODY));
    let args = ["--at", "1", "--until", "60", "--interval-ms", "50"];
    let mut first = Program::start_on(&socket, first_dir.path(), &args, None);
    first.wait_for("count 1", |l| l == "count 1");
    std::thread::sleep(Duration::from_millis(300)); // its dump is under way (2 s)
    let mut second = Program::start_on(&socket, second_dir.path(), &args, None);
    let mut other = Program::start_on(&socket, nobody_dir.path(), &args, Some(NOBODY));
    let second_line = outcome(&second);
    assert!(
        second_line.contains("refused (Busy)") && second_line.contains("per-uid"),
        "{second_line}"
    );
    let other_line = outcome(&other);
    assert!(!other_line.contains("Busy"), "{other_line}");
    let first_line = outcome(&first);
    assert!(
        first_line.starts_with("checkpoint continued"),
        "{first_line}"
    );
    for p in [&mut first, &mut second, &mut other] {
        p.kill();
    }
    wait_no_criu();
    ctx.keep.push(Box::new(wrap));
    format!("second root dump refused: {}", short(&second_line))
}

/// A CRIU that waits 2 s before it starts (the directory must outlive it).
fn slow_criu() -> (tempfile::TempDir, selfdump::server::Criu) {
    let wrap = tempfile::tempdir().unwrap();
    let wrapper = wrap.path().join("slow-criu");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nsleep 2\nexec {} \"$@\"\n",
            criu().path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, PermissionsExt::from_mode(0o755)).unwrap();
    let criu = selfdump::server::Criu {
        path: wrapper,
        log_level: 4,
    };
    (wrap, criu)
}

/// The global limit: with one dump at a time, any other caller is refused
/// as busy while a dump runs.
fn global_dump_limit(ctx: &mut Ctx) -> String {
    let (wrap, slow) = slow_criu();
    let socket = ctx.service(move |b| allow(&[NOBODY])(b).max_dumps(1).criu(slow));
    let (first_dir, nobody_dir) = (images_dir(), dir_of(NOBODY));
    let args = ["--at", "1", "--until", "60", "--interval-ms", "50"];
    let mut first = Program::start_on(&socket, first_dir.path(), &args, None);
    first.wait_for("count 1", |l| l == "count 1");
    std::thread::sleep(Duration::from_millis(300)); // its dump is under way (2 s)
    let mut other = Program::start_on(&socket, nobody_dir.path(), &args, Some(NOBODY));
    let other_line = outcome(&other);
    assert!(
        other_line.contains("refused (Busy)") && other_line.contains("dumps are already running"),
        "{other_line}"
    );
    let first_line = outcome(&first);
    assert!(
        first_line.starts_with("checkpoint continued"),
        "{first_line}"
    );
    for p in [&mut first, &mut other] {
        p.kill();
    }
    wait_no_criu();
    ctx.keep.push(Box::new(wrap));
    format!(
        "other uid refused while one dump ran: {}",
        short(&other_line)
    )
}

// ---------------------------------------------------------------------------
// The harness.

/// A normal checkpoint through the service still works.
fn assert_still_serves(socket: &Path) {
    let images = images_dir();
    let mut program = Program::start_on(
        socket,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
        None,
    );
    let line = outcome(&program);
    assert!(
        line.starts_with("checkpoint continued"),
        "service stopped serving: {line}"
    );
    assert!(program.wait().success());
}

/// After an attack: still serving, no fd more than before, no zombie.
fn after_attack(ctx: &mut Ctx) {
    let socket = ctx.socket.clone().expect("the attack started a service");
    assert_still_serves(&socket);
    wait_no_criu();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds();
        let extra: Vec<_> = now.iter().filter(|fd| !ctx.baseline.contains(fd)).collect();
        let zombies: Vec<_> = own_children()
            .into_iter()
            .filter(|(_, state, _)| *state == 'Z')
            .collect();
        if now.len() <= ctx.baseline.len() && zombies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the attack: {} fds open, {} before (new: {extra:?}); zombies {zombies:?}",
            now.len(),
            ctx.baseline.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ctx.guard = None;
    ctx.keep.clear();
}

/// One attack: sets up its service in the context, returns what happened.
type Attack = fn(&mut Ctx) -> String;

#[test]
fn adversarial_suite() {
    let attacks: &[(&str, Attack)] = &[
        ("spoofed pid in the request", spoofed_pid_in_request),
        (
            "dump is of the connecting pid",
            dump_is_always_of_the_connecting_pid,
        ),
        ("recycled caller pid", recycled_pid),
        ("another user's process", another_users_process),
        ("setuid child in the tree", setuid_child_in_tree),
        (
            "privilege-dropped child of a root caller",
            privilege_dropped_child_of_root,
        ),
        ("non-dumpable child in the tree", nondumpable_child_in_tree),
        ("thread of another uid in the caller", thread_of_another_uid),
        ("non-dumpable caller", nondumpable_caller),
        ("unwritable images dir", unwritable_images_dir),
        ("foreign-owned images dir", foreign_owned_images_dir),
        ("non-directory images fd", non_directory_images_fd),
        (
            "symlinks planted in the images dir",
            symlinks_planted_in_images_dir,
        ),
        ("oversize length claim (4 GiB)", oversize_length_claim),
        ("truncated frame", truncated_frame),
        ("trailing bytes", trailing_bytes),
        ("garbage bytes", garbage_bytes),
        ("wrong magic", wrong_magic),
        ("wrong version", wrong_version),
        ("253 fds in one message", fds_253_in_one_message),
        ("1000 idle connections", idle_connections_1000),
        ("one byte a second", one_byte_a_second),
        ("close mid-frame", close_mid_frame),
        ("client dies mid-dump", client_dies_mid_dump),
        ("criu killed mid-dump", criu_killed_mid_dump),
        (
            "service restarted between freeze and result",
            service_restarted_between_freeze_and_result,
        ),
        ("disk full", disk_full),
        ("dump timeout exceeded", dump_timeout_exceeded),
        ("per-uid dump limit", dumps_per_uid_limit),
        ("global dump limit", global_dump_limit),
    ];
    let only = std::env::var("ADVERSARIAL_ONLY").ok();
    // warm up: the reactor, the process reaper and the examples exist
    // before the first fd count
    {
        let service = Service::start();
        assert_still_serves(&service.socket);
    }
    let (mut ok, mut served, mut ran) = (0, Vec::new(), 0);
    for (name, attack) in attacks {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut ctx = Ctx::new();
            let said = attack(&mut ctx);
            after_attack(&mut ctx);
            said
        }));
        match result {
            Ok(said) => {
                ok += 1;
                eprintln!("attack {name}: {said} [{:.1?}]", started.elapsed());
            }
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("attack {name}: NOT DEFENDED: {why}");
                served.push(*name);
            }
        }
    }
    // straight to stderr, past the test harness's capture: the summary
    // shows in every `cargo test` run
    let _ = writeln!(
        std::io::stderr(),
        "adversarial: {ran} attacks, {ok} refused or survived, {} served",
        served.len()
    );
    assert!(served.is_empty(), "attacks not defended: {served:?}");
}
