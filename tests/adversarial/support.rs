//! What the attacks share: raw exchanges with the service, the counter
//! program's outcome, and the checks that a caller runs on and that nothing
//! (images, staging directories, CRIU children) is left behind.

use crate::common::*;
use crate::fds;
use async_io::Async;
use selfdump::proto::{
    self, DumpOptions, HEADER_LEN, Header, PROTOCOL_VERSION, RefusalKind, Request, Response,
};
use selfdump::server::{Builder, Policy};
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const NOBODY: u32 = 65534;
/// A second unprivileged uid, for directories owned by "someone else".
pub const OTHER: u32 = 4242;

/// The counter's arguments, written as one line.
pub fn args(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Sends raw bytes (and fds) on a new connection and reads one answer frame.
pub fn exchange(socket: &Path, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> proto::Frame {
    async_io::block_on(async {
        let stream = Async::<UnixStream>::connect(socket).await.unwrap();
        proto::write_frame(&stream, bytes, fds).await.unwrap();
        proto::read_frame(&stream)
            .await
            .unwrap()
            .expect("an answer")
    })
}

pub fn refusal(frame: proto::Frame) -> (RefusalKind, String) {
    refused(proto::decode_body::<Response>(frame.header, &frame.body).unwrap())
}

fn refused(response: Response) -> (RefusalKind, String) {
    match response {
        Response::Refused(r) => (r.kind, r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Reads one answer frame from a blocking stream, waiting up to `timeout`.
pub fn read_response(stream: &mut UnixStream, timeout: Duration) -> Response {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let header = Header::parse(&header).unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).unwrap();
    proto::decode_body::<Response>(header, &body).unwrap()
}

pub fn read_refusal(stream: &mut UnixStream) -> (RefusalKind, String) {
    refused(read_response(stream, Duration::from_secs(30)))
}

pub fn checkpoint_frame() -> Vec<u8> {
    proto::encode_frame(&Request::Checkpoint(DumpOptions::default()))
}

pub fn frame_with_body(body: &[u8]) -> Vec<u8> {
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
pub fn dir_of(uid: u32) -> tempfile::TempDir {
    let dir = images_dir();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    dir
}

pub fn allow(uids: &[u32]) -> impl FnOnce(Builder) -> Builder {
    let uids = uids.to_vec();
    move |b: Builder| {
        b.policy(Policy {
            allow_uids: uids.into_iter().collect(),
            ..Policy::default()
        })
    }
}

/// Runs the counter and returns its `checkpoint ...` line.
pub fn outcome(program: &Program) -> String {
    program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "))
}

pub fn short(line: &str) -> String {
    line.chars().take(160).collect()
}

/// How long a race runs: `short` by default, `long` with
/// `SELFDUMP_LONG_RACES=1` (the long form, for CI or before a release).
pub fn race_for(short: Duration, long: Duration) -> Duration {
    match std::env::var("SELFDUMP_LONG_RACES").as_deref() {
        Ok("1") => long,
        _ => short,
    }
}

/// Calls `check` every `every` until it passes; once `limit` is past, fails
/// with what it said last.
pub fn poll_until(limit: Duration, every: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        let Err(why) = check() else { return };
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(every);
    }
}

/// Waits until CRIU holds `pid` (traces it), i.e. frozen: it shows `t`
/// only around CRIU's parasite, so the state alone can be missed on a
/// fast machine.
pub fn wait_frozen(pid: i32) {
    assert!(
        wait_seized(pid, Duration::from_secs(30)),
        "pid {pid} was never seized by CRIU"
    );
}

/// The program counts on after its checkpoint: it is running, not frozen.
pub fn assert_runs_on(program: &Program) {
    let before = program.output().matches("count ").count();
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let output = program.output();
        // counting on, or already done (a short run may end meanwhile)
        if output.matches("count ").count() > before + 1 || output.ends_with("done\n") {
            return Ok(());
        }
        Err(format!(
            "pid {} does not count on (state {:?}):\n{}",
            program.pid,
            process_state(program.pid),
            program.output()
        ))
    });
    assert_ne!(process_state(program.pid), Some('t'), "left frozen");
}

/// CRIU's log of the last dump into `dir`: in the generation `latest`
/// names after a success, else (a failure's) directly in `dir`.
pub fn dump_log(dir: &Path) -> std::path::PathBuf {
    match dir.join("latest").exists() {
        true => dir.join("latest/dump.log"),
        false => dir.join("dump.log"),
    }
}

/// No checkpoint was committed into `dir`: no `latest`, no generation, no
/// images directly in it.
pub fn assert_no_generation(dir: &Path) {
    let names: Vec<String> = image_files(dir).into_iter().map(|f| f.0).collect();
    assert!(
        !names
            .iter()
            .any(|n| n == "latest" || n.starts_with("gen-") || n == "pstree.img"),
        "a checkpoint was committed: {names:?}"
    );
}

/// No image was left behind, and nothing root's: at most the caller's log.
pub fn assert_no_images(dir: &Path, caller: u32) {
    for (name, uid, _) in image_files(dir) {
        assert!(
            name == "dump.log" || name.ends_with(".log"),
            "{name} left in {}",
            dir.display()
        );
        assert_eq!(uid, caller, "{name} is not the caller's");
    }
}

/// No staging directory is left (the service removes it right after CRIU
/// is reaped: give it a moment).
pub fn assert_no_staging(dir: &Path) {
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let names = entry_names(dir);
        if !names.iter().any(|n| n.starts_with(".selfdump-")) {
            return Ok(());
        }
        Err(format!("staging left: {names:?}"))
    });
}

/// Reaps, as an init would, the zombies of helpers a killed CRIU had
/// forked: this test process is a subreaper (for restored trees), so they
/// are reparented to it, not to init. They are told apart from the
/// service's own criu children by their process group: the service starts
/// each CRIU as the leader of a group, which its helpers inherit.
pub fn reap_orphaned_criu_helpers() {
    for (pid, state, comm) in own_children() {
        let pgid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(2)?
                    .parse()
                    .ok()
            });
        if state == 'Z' && comm == "criu" && pgid.is_some_and(|g: i32| g != pid) {
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(pid),
                rustix::process::WaitOptions::NOHANG,
            );
        }
    }
}

fn fd_targets(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|f| std::fs::read_link(f.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until no CRIU of this process's service is at work.
pub fn wait_no_criu() {
    wait_no_criu_of(std::process::id() as i32);
}

/// Waits until no CRIU of `service` (a process) is at work.
pub fn wait_no_criu_of(service: i32) {
    poll_until(Duration::from_secs(30), Duration::from_millis(20), || {
        reap_orphaned_criu_helpers();
        let busy = fds::busy_criu_of(service);
        if busy.is_empty() {
            return Ok(());
        }
        let busy: Vec<_> = busy
            .into_iter()
            .map(|pid| (pid, process_state(pid), fd_targets(pid)))
            .collect();
        Err(format!("criu still running: {busy:?}"))
    });
}

pub fn kill(pid: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
}

/// A directory only root can write, where the attacks point their planted
/// symlinks: anything in it means root wrote through a name a caller
/// controlled. `after_attack` checks that it stays empty.
pub fn victim_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("selfdump-victim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        dir
    })
}

/// This process's directory on a tmpfs every user has (`/dev/shm`), root's
/// and world-writable (sticky) like `/dev/shm` itself: attacks make their
/// tmpfs directories here, so that the check after an attack looks at its
/// own (attacks run side by side in processes of their own).
pub fn shm_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new("/dev/shm").join(format!("selfdump-adv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap();
        dir
    })
}

/// Root-owned entries changed since `since` inside directories that a
/// caller owns, under this process's temporary directories (`$TMPDIR`,
/// which the runner gives each attack, and [`shm_dir`]): what the service
/// must never leave there.
pub fn roots_entries_in_callers_dirs(since: std::time::SystemTime) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut found = Vec::new();
    let mut stack: Vec<(std::path::PathBuf, u32)> = [std::env::temp_dir(), shm_dir().into()]
        .into_iter()
        .map(|d| (d, 0))
        .collect();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let callers = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.uid() != 0);
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if callers && meta.uid() == 0 && meta.ctime() >= since {
                let inside: Vec<String> = std::fs::read_dir(entry.path())
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                found.push(format!(
                    "{} (mode {:o}, in a directory of uid {}, holding {inside:?})",
                    entry.path().display(),
                    meta.mode() & 0o7777,
                    std::fs::symlink_metadata(&dir).map_or(0, |m| m.uid())
                ));
            }
            if meta.is_dir() && depth < 4 {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// The log of this process's service (`log` records of the crate at info
/// and above), kept from [`capture_service_log`] on: what the service said
/// about a dump whose caller cannot hear the answer any more.
struct CapturedLog(std::sync::Mutex<Vec<String>>);

static CAPTURED: CapturedLog = CapturedLog(std::sync::Mutex::new(Vec::new()));

impl log::Log for CapturedLog {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::Level::Info && meta.target().starts_with("selfdump")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

/// Keeps the service's log from now on (see [`service_log`]).
pub fn capture_service_log() {
    if log::set_logger(&CAPTURED).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// What the service of this process logged so far.
pub fn service_log() -> Vec<String> {
    CAPTURED.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The service's conclusion about the dump of `pid` (`dumped ...` or
/// `failed: ...`, from its line `job J: ...`), waited for; `log` reads
/// the service's log (this process's, or a `selfdump serve`'s).
pub fn job_conclusion(pid: i32, log: impl Fn() -> Vec<String>) -> String {
    let mut said = String::new();
    poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
        let lines = log();
        let job = lines.iter().find_map(|l| {
            let (job, rest) = l.split_once(": dumping pid ")?;
            let job = job.rsplit(' ').next()?;
            rest.starts_with(&format!("{pid} ")).then(|| job.to_owned())
        });
        let Some(job) = job else {
            return Err(format!("the service never dumped pid {pid}: {lines:#?}"));
        };
        let prefix = format!("job {job}: ");
        let concluded = lines.iter().find_map(|l| {
            let rest = l.split_once(&prefix)?.1;
            (rest.starts_with("dumped ") || rest.starts_with("failed: ")).then_some(rest)
        });
        match concluded {
            Some(rest) => {
                said = rest.to_owned();
                Ok(())
            }
            None => Err(format!("the service never concluded job {job}: {lines:#?}")),
        }
    });
    said
}
