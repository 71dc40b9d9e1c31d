//! What the attacks share: raw exchanges with the service, the counter
//! program's outcome, and the checks that a caller runs on and that nothing
//! (images, staging directories, CRIU children) is left behind.

use crate::common::*;
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
        let names: Vec<String> = image_files(dir).into_iter().map(|f| f.0).collect();
        if !names.iter().any(|n| n.starts_with(".selfdump-")) {
            return Ok(());
        }
        Err(format!("staging left: {names:?}"))
    });
}

/// The `criu swrk` children of this process (the in-process service's)
/// working on a dump: not the warm workers waiting for one.
pub fn criu_children() -> Vec<i32> {
    all_criu_children()
        .into_iter()
        .filter(|&pid| !is_waiting_worker(pid))
        .collect()
}

/// The warm `criu swrk` workers of this process's service, waiting.
pub fn waiting_workers() -> Vec<i32> {
    all_criu_children()
        .into_iter()
        .filter(|&pid| is_waiting_worker(pid))
        .collect()
}

fn all_criu_children() -> Vec<i32> {
    own_children()
        .into_iter()
        .filter(|(_, _, comm)| comm == "criu")
        .map(|(pid, ..)| pid)
        .collect()
}

/// A live criu that holds only what it was started with (/dev/null, its
/// socket, fds it inherited from this process). CRIU opens its log in the
/// images directory as soon as it takes a request, so a dumping one fails this.
fn is_waiting_worker(pid: i32) -> bool {
    if process_state(pid).is_none_or(|s| s == 'Z') {
        return false;
    }
    let ours: Vec<PathBuf> = open_fds().into_iter().map(|(_, path)| path).collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().all(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let text = target.to_string_lossy();
            text == "/dev/null" || text.starts_with("socket:[") || ours.contains(&target)
        })
    })
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

pub fn wait_no_criu() {
    poll_until(Duration::from_secs(30), Duration::from_millis(20), || {
        reap_orphaned_criu_helpers();
        if criu_children().is_empty() {
            return Ok(());
        }
        let busy: Vec<_> = criu_children()
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

/// Root-owned entries changed since `since` inside directories that a
/// caller owns, under the temporary directories every user can write
/// (`/tmp`, `/dev/shm`): what the service must never leave there.
pub fn roots_entries_in_callers_dirs(since: std::time::SystemTime) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut found = Vec::new();
    let mut stack: Vec<(std::path::PathBuf, u32)> = [std::env::temp_dir(), "/dev/shm".into()]
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
