//! Shared by the integration tests: a real service on a private socket, the
//! `counter` example as the program that checkpoints itself, and helpers to
//! kill, reap and restore it. Everything runs against the real CRIU.
#![allow(dead_code)]

pub mod guarded;
pub mod looping;
#[path = "../support/skip.rs"]
pub mod skip;
#[allow(unused_imports)]
pub use guarded::Guarded;
#[allow(unused_imports)]
pub use skip::{Limit, skip};

use selfdump::server::{Builder, Criu, Server, check::find_criu};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The CRIU the tests use; fails loudly when it is missing, because the
/// README's test command installs it first.
pub fn criu() -> Criu {
    let path = find_criu();
    let out = Command::new(&path)
        .arg("--version")
        .output_guarded()
        .unwrap_or_else(|e| {
            panic!(
                "criu not found ({e}): run scripts/install-criu.sh (the README's test command does)"
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Version: 4") || text.contains("Version: 5"),
        "need CRIU >= 4, found {text}"
    );
    Criu { path, log_level: 4 }
}

/// Makes this test process the reaper of orphaned descendants, so that
/// killed trees can be reaped and their pids freed for restore.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    });
}

/// A service running in this process on a private socket.
pub struct Service {
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<async_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    pub fn start() -> Self {
        Self::start_with(|b| b)
    }

    pub fn start_with(configure: impl FnOnce(Builder) -> Builder) -> Self {
        become_subreaper();
        let dir = tempfile::Builder::new()
            .prefix("selfdump-sock")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("selfdump.sock");
        let server = configure(Server::builder().criu(criu()).socket_mode(0o666))
            .bind(&socket)
            .expect("bind the test socket");
        let (tx, rx) = async_channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            async_io::block_on(server.run_until(async move {
                let _ = rx.recv().await;
            }))
            .expect("service ran");
        });
        // allow others (the non-root tests) to reach the socket
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        Self {
            socket,
            _dir: dir,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Path of an example, built first: `cargo test --test X` does not build
/// examples, and a stale one would test old code. (Not again in a process
/// whose parent built them and says so: `SELFDUMP_EXAMPLES_BUILT`.)
pub fn example(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        if std::env::var_os("SELFDUMP_EXAMPLES_BUILT").is_some() {
            return;
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--examples", "--features", "cli"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status_guarded()
            .expect("run cargo");
        assert!(status.success(), "cargo build --examples failed");
    });
    let mut dir = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: cargo test builds examples",
        path.display()
    );
    path
}

pub fn selfdump_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_selfdump"))
}

/// A directory for images, readable by everyone.
pub fn images_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-images")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// The `counter` example running with its output appended to a file (CRIU
/// restores append-only files whatever their size; see the README).
pub struct Program {
    pub child: Option<Child>,
    pub pid: i32,
    pub log: PathBuf,
}

impl Program {
    pub fn start(service: &Service, images: &Path, args: &[&str]) -> Self {
        Self::start_as(service, images, args, None)
    }

    pub fn start_as(service: &Service, images: &Path, args: &[&str], uid: Option<u32>) -> Self {
        Self::start_on(&service.socket, images, args, uid)
    }

    pub fn output(&self) -> String {
        read(&self.log)
    }

    /// Waits until the output has a line for which `pred` holds.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for_line(&self.log, what, pred)
    }

    /// Waits for the program's `checkpoint ...` line; if none comes, fails
    /// saying what state the program is in (frozen, gone, waiting where)
    /// and which criu processes exist, not only that the line never came.
    pub fn outcome_or_state(&self) -> String {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "))
        }));
        waited.unwrap_or_else(|_| {
            let proc_file = |f: &str| std::fs::read_to_string(format!("/proc/{}/{f}", self.pid));
            let tracer = proc_file("status").ok().and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("TracerPid"))
                    .map(str::to_owned)
            });
            let criu = Command::new("pgrep").args(["-a", "criu"]).output_guarded();
            panic!(
                "no outcome within 60 s; the program's state: {:?}, waiting in {:?}, {tracer:?}; \
                 criu processes: {:?}; output:\n{}",
                process_state(self.pid),
                proc_file("wchan").ok(),
                criu.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
                self.output()
            )
        })
    }

    /// Kills the original process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the original process to end by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still ours");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "program did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill();
        // (its output is read only while it is held)
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

pub fn wait_for_line(path: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = read(path);
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; output so far:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `pid` (not our direct child: restored or orphaned) and reaps it
/// once it has been reparented to this subreaper.
pub fn kill_and_reap(pid: i32) {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let p = Pid::from_raw(pid).unwrap();
    let _ = kill_process(p, Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    // reaped here, or by someone else (gone): a restore waiting for the
    // pid may already have put a new process there
    while !matches!(waitpid(Some(p), WaitOptions::NOHANG), Ok(Some(_)))
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} would not go away: {}",
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| s
                    .lines()
                    .filter(|l| l.starts_with("State") || l.starts_with("PPid"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `selfdump restore DIR`: the restored root pid, or the command's error text.
pub fn restore(images: &Path) -> Result<i32, String> {
    restore_with(images, &[])
}

/// `selfdump restore EXTRA.. DIR`: the restored root pid, or the error text.
pub fn restore_with(images: &Path, extra: &[&str]) -> Result<i32, String> {
    let out = Command::new(selfdump_bin())
        .arg("restore")
        .args(extra)
        .arg("--criu")
        .arg(criu().path)
        .arg(images)
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        Ok(stdout.trim().parse().expect("restore prints the pid"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Whether this process has CAP_SYS_RESOURCE (CRIU needs it to dump a
/// process of another uid).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

/// The images' files, with owner and mode.
pub fn image_files(dir: &Path) -> Vec<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.uid(),
                m.mode() & 0o7777,
            )
        })
        .collect();
    files.sort();
    files
}

// ---- appended for the adversarial suite ----

impl Program {
    /// Starts the counter as `uid` (or as this process's user) against any
    /// socket path (a service that is killed and restarted keeps its path,
    /// not its `Service` value).
    pub fn start_on(socket: &Path, images: &Path, args: &[&str], uid: Option<u32>) -> Self {
        let log = images.parent().unwrap().join(format!(
            "{}.log",
            images.file_name().unwrap().to_string_lossy()
        ));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&log, Some(uid), Some(uid)).unwrap();
        }
        let mut cmd = Command::new(example("counter"));
        cmd.arg("--images")
            .arg(images)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn_guarded().expect("start counter");
        let pid = child.id() as i32;
        Self {
            child: Some(child),
            pid,
            log,
        }
    }

    /// The pids of the children the program printed at start.
    pub fn children(&self) -> Vec<i32> {
        let started = self.wait_for("the child pids", |l| l.starts_with("started pid"));
        started
            .split(['[', ']'])
            .nth(1)
            .unwrap()
            .split(", ")
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap())
            .collect()
    }
}

/// A service that can be killed abruptly: its future is dropped with every
/// connection and dump in flight (CRIU children are killed), as when the
/// service process dies; the socket file stays behind, stale.
pub struct KillableService {
    pub socket: PathBuf,
    kill: Option<async_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableService {
    pub fn start_at(socket: &Path, configure: impl FnOnce(Builder) -> Builder) -> Self {
        become_subreaper();
        let server = configure(Server::builder().criu(criu()).socket_mode(0o666))
            .bind(socket)
            .expect("bind the test socket");
        let (tx, rx) = async_channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            use futures_lite::FutureExt;
            let run = async move {
                let _ = server.run().await;
            };
            let kill = async move {
                let _ = rx.recv().await;
            };
            async_io::block_on(run.or(kill));
        });
        Self {
            socket: socket.to_path_buf(),
            kill: Some(tx),
            thread: Some(thread),
        }
    }

    /// Drops the service at once, whatever it is doing.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.kill.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KillableService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Open fds of this process.
pub fn open_fds() -> Vec<(i32, PathBuf)> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).unwrap_or_default()))
        })
        .collect()
}

/// Children of this process: (pid, state, comm).
pub fn own_children() -> Vec<(i32, char, String)> {
    children_of(std::process::id() as i32)
}

/// Children of `parent`: (pid, state, comm).
pub fn children_of(parent: i32) -> Vec<(i32, char, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: i32 = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state, comm))
        })
        .collect()
}

/// The scheduler state of a process (`R`, `S`, `t` for traced, `Z`), if it exists.
pub fn process_state(pid: i32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))?
        .trim()
        .chars()
        .next()
}

// ---- appended for the embedding tests ----

/// A CRIU that sleeps `secs` before it starts, so that a dump stays in
/// flight that long when the service starts no worker ahead
/// (`warm_workers(0)`); the directory holds the wrapper: keep it alive.
pub fn slow_criu(secs: u32) -> (tempfile::TempDir, Criu) {
    use std::os::unix::fs::PermissionsExt;
    let wrap = tempfile::tempdir().unwrap();
    let wrapper = wrap.path().join("slow-criu");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nsleep {secs}\nexec {} \"$@\"\n",
            criu().path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, PermissionsExt::from_mode(0o755)).unwrap();
    let criu = Criu {
        path: wrapper,
        log_level: 4,
    };
    (wrap, criu)
}

/// `selfdump serve` as a child process on `socket` (`RUST_LOG=info`, its
/// log in `log`), once it listens.
pub fn serve_process(socket: &Path, log: &Path) -> Child {
    let serve = Command::new(selfdump_bin())
        .args(["serve", "--socket"])
        .arg(socket)
        .arg("--criu")
        .arg(criu().path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn_guarded()
        .unwrap();
    wait_serving(log);
    serve
}

/// Waits until a `selfdump serve` started with `RUST_LOG=info` (its log in
/// `log`) listens: it says so once it does. (Its socket's file appears at
/// the bind, a moment before the listen: a client connecting then is
/// refused.)
pub fn wait_serving(log: &Path) {
    wait_for_line(log, "selfdump serve to listen", |l| {
        l.contains("selfdump::serve] serving on ")
    });
}

/// The `.selfdump-*` staging directories in `images`.
pub fn staging_dirs(images: &Path) -> Vec<String> {
    entry_names(images)
        .into_iter()
        .filter(|n| n.starts_with(".selfdump-"))
        .collect()
}

/// The names in `dir`, sorted; unlike [`image_files`] it stats nothing, so
/// an entry removed between the listing and a look at it (a staging
/// directory the service is removing while this polls) is no error, and a
/// directory removed meanwhile (a generation retention took) has none.
pub fn entry_names(dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        entries => entries.unwrap(),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checkpoints a new program into `images` through a new service, then
/// waits (10 s at most) until no staging directory is left there.
pub fn next_checkpoint_clears_staging(images: &Path) {
    let service = Service::start();
    let mut next = Program::start(
        &service,
        images,
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
    );
    next.wait_for("the next checkpoint", |l| {
        l.starts_with("checkpoint continued")
    });
    next.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !staging_dirs(images).is_empty() {
        assert!(
            Instant::now() < deadline,
            "staging left behind: {:?}",
            staging_dirs(images)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A root counter (`alloc_mb` of ballast) checkpointed once into a fresh
/// directory, then killed: the images and the (dead) program.
pub fn checkpoint_and_kill(service: &Service, alloc_mb: u32) -> (tempfile::TempDir, Program) {
    let images = images_dir();
    let alloc = alloc_mb.to_string();
    let mut program = Program::start(
        service,
        images.path(),
        &[
            "--at",
            "1",
            "--until",
            "100000",
            "--interval-ms",
            "20",
            "--alloc-mb",
            &alloc,
        ],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    program.kill();
    (images, program)
}

/// `<images>.log` beside an images directory, opened for append (CRIU
/// restores append-only files whatever their size): a program's output.
pub fn append_log(images: &Path) -> (PathBuf, File) {
    let log = images.with_extension("log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    (log, out)
}

// ---- the CRIU that holds a tree ----

/// The pid tracing `pid`: the CRIU that seized it, from the seize until it
/// lets the tree go (after its last image is written, before it answers).
pub fn tracer(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|&p| p != 0)
}

/// Sends `sig` to `pid`; whether it was delivered.
pub fn signal(pid: i32, sig: rustix::process::Signal) -> bool {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig).is_ok()
}

/// Polls `done` every 200 µs until it holds or `limit` passes.
pub fn poll_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    done()
}

/// Waits until a CRIU holds `caller` (traces it: from the seize to the
/// end of the dump, whether the caller shows `t` or runs CRIU's parasite);
/// `false` if none did within `limit`.
pub fn wait_seized(caller: i32, limit: Duration) -> bool {
    poll_for(limit, || {
        tracer(caller).is_some_and(|t| comm(t).as_deref() == Some("criu"))
    })
}

/// Stops (`SIGSTOP`) the CRIU dumping `caller`, if it is still at work,
/// and returns its pid. The dumping CRIU is found by what it does, not by
/// elimination: it is the `criu` that traces the caller. Kept only if it
/// still traces the caller once stopped: it has then not let the tree go,
/// so it has not answered yet, whatever the machine's speed (killing it
/// must fail the dump). `None` when no CRIU holds the caller (not yet, or
/// done): the CRIU is let go on.
pub fn stop_dumping_criu(caller: i32) -> Option<i32> {
    use rustix::process::Signal;
    let criu = tracer(caller).filter(|&t| comm(t).as_deref() == Some("criu"))?;
    if !signal(criu, Signal::STOP) {
        return None;
    }
    // the stop takes effect at the task's next step
    let stopped = poll_for(Duration::from_secs(10), || {
        matches!(process_state(criu), Some('T' | 'Z') | None)
    });
    if stopped && process_state(criu) == Some('T') && tracer(caller) == Some(criu) {
        return Some(criu);
    }
    signal(criu, Signal::CONT);
    None
}

/// A process's command name.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// Waits until a dump into `images` holds its slots: the service makes the
/// staging directory then, before it starts CRIU.
pub fn wait_admitted(images: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while staging_dirs(images).is_empty() {
        assert!(Instant::now() < deadline, "the dump was never admitted");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---- a CRIU that records what it is asked ----

/// A CRIU that appends the command it is given (its first argument: `swrk`,
/// `restore`, `lazy-pages`...) to a file, a line each, before it runs it:
/// every CRIU ever started through it is in the file, or still starting.
pub struct RecordingCriu {
    pub criu: Criu,
    commands: PathBuf,
    _dir: tempfile::TempDir,
}

impl RecordingCriu {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, commands) = (dir.path().join("criu"), dir.path().join("commands"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$1\" >>{}\nexec {} \"$@\"\n",
                commands.display(),
                criu().path.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o755)).unwrap();
        Self {
            criu: Criu { path, log_level: 4 },
            commands,
            _dir: dir,
        }
    }

    /// The commands recorded so far.
    pub fn commands(&self) -> Vec<String> {
        read(&self.commands).lines().map(str::to_owned).collect()
    }

    /// The commands started through it after the first `before`: those
    /// recorded, and one still starting (its shell, not yet past the
    /// record) as `"starting"`. Exact once whoever started them returned:
    /// a started process has at least begun its shell by then.
    pub fn started_since(&self, before: usize) -> Vec<String> {
        let script = self.criu.path.to_string_lossy().into_owned();
        let starting = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&script))
            })
            .map(|_| "starting".to_owned());
        let starting: Vec<String> = starting.collect();
        let mut started: Vec<String> = self.commands().into_iter().skip(before).collect();
        started.extend(starting);
        started
    }
}

/// A copy of the generation `latest` names in `images` (owners and modes
/// kept), its files directly in a directory, to damage or tamper with.
pub fn copy_of(images: &Path) -> tempfile::TempDir {
    let copy = images_dir();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/latest/.", images.display()))
        .arg(copy.path())
        .status_guarded()
        .unwrap();
    assert!(status.success());
    // (a generation is 0700, and `cp -a` copied that too)
    std::fs::set_permissions(
        copy.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    copy
}

/// Flips one bit of the byte at `at` in `file`.
pub fn flip_byte(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}
