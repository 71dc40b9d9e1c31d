//! One checkpoint request, from the checks to the published images.

use super::Shared;
use super::connection::{UidSlot, refusal, send};
use super::engine::{DumpSpec, EngineError, FrozenVerdict, without_forks};
use super::images::{ImageMeta, Staging};
use super::peer::Peer;
use super::policy::{Caller, check_dumpable, check_tree_task, may_write_dir};
use crate::proto::{
    DumpFailure, DumpOptions, DumpReport, JobId, PROTOCOL_VERSION, RefusalKind, Response,
    encode_frame, write_frame,
};
use async_io::{Async, Timer};
use futures_lite::FutureExt;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Checks a checkpoint request; `Err` is the refusal to send.
fn admit(shared: &Shared, peer: &Peer, dir: &OwnedFd) -> Result<Caller, Response> {
    let not_permitted = |m: String| refusal(RefusalKind::NotPermitted, m);
    let caller =
        Caller::read(peer).map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    shared.config.policy.admit(&caller).map_err(not_permitted)?;
    // Not the `/proc/<pid>` directory: the kernel gives directories the
    // task's euid whatever its dumpability; files turn root's when it is off.
    let proc_file = rustix::fs::stat(format!("/proc/{}/stat", peer.pid))
        .map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    if !peer.is_alive() {
        return Err(not_permitted("you exited".into()));
    }
    check_dumpable(&caller, &proc_file, "the caller").map_err(not_permitted)?;
    let dir_stat = rustix::fs::fstat(dir)
        .map_err(|e| refusal(RefusalKind::BadDirectory, format!("images fd: {e}")))?;
    may_write_dir(&caller, &dir_stat).map_err(|m| refusal(RefusalKind::BadDirectory, m))?;
    Ok(caller)
}

pub(super) async fn checkpoint(
    shared: &Shared,
    peer: Peer,
    stream: Async<UnixStream>,
    options: DumpOptions,
    dir: OwnedFd,
) {
    let received = Instant::now();
    let caller = match admit(shared, &peer, &dir) {
        Ok(caller) => caller,
        Err(answer) => {
            log::info!("pid {} uid {}: refused: {answer:?}", peer.pid, peer.uid);
            return send(&stream, &answer).await;
        }
    };
    let Some(_permit) = shared.dumps.try_acquire_arc() else {
        let m = format!(
            "{} dumps are already running; retry later",
            shared.config.max_dumps
        );
        return send(&stream, &refusal(RefusalKind::Busy, m)).await;
    };
    let per_uid = shared.config.max_dumps_per_uid;
    let Some(_uid_slot) = UidSlot::take(&shared.dumps_per_uid, caller.uid(), per_uid) else {
        let m = format!(
            "uid {} already has {} dumps running (the per-uid limit); retry later",
            caller.uid(),
            shared.config.max_dumps_per_uid
        );
        return send(&stream, &refusal(RefusalKind::Busy, m)).await;
    };
    let job = match shared.jobs.start(&peer) {
        Ok(job) => job,
        Err(e) => {
            return send(
                &stream,
                &failure(None, format!("cannot start a job: {e}"), None),
            )
            .await;
        }
    };
    let owner = (caller.uids[0], caller.gids[0]);
    let staging = match Staging::create(dir, job.id, owner) {
        Ok(staging) => staging,
        Err(e) => {
            shared.jobs.remove(job.id);
            let m = format!("cannot create a directory in the images directory: {e}");
            return send(&stream, &refusal(RefusalKind::BadDirectory, m)).await;
        }
    };
    let shell_job = !peer.is_session_leader().unwrap_or(false);
    let spec = DumpSpec {
        pid: peer.pid,
        images_dir: staging.dir(),
        options,
        shell_job,
    };
    log::info!(
        "job {}: dumping pid {} (uid {}) {options:?} shell_job={shell_job}",
        job.id,
        peer.pid,
        caller.uid()
    );

    log::debug!("job {}: checks done at {:?}", job.id, received.elapsed());
    let mut connection = Some(stream);
    let dumped = shared
        .config
        .criu
        .dump(&spec, shared.config.dump_timeout, async || {
            let stream = connection.take().expect("the freeze hook runs once");
            match at_freeze(&peer, &caller, &stream, job.id).await {
                Ok(()) => {
                    without_forks(|| drop(stream));
                    FrozenVerdict::Proceed
                }
                Err(why) => {
                    // CRIU resumes the tree; the caller gets the error on
                    // this connection once CRIU is done.
                    log::warn!("job {}: vetoed at the freeze: {why}", job.id);
                    connection = Some(stream);
                    FrozenVerdict::Veto(why)
                }
            }
        })
        .await;

    log::debug!("job {}: criu done at {:?}", job.id, received.elapsed());
    let answer = match dumped {
        Ok(()) => {
            let meta = ImageMeta {
                protocol: PROTOCOL_VERSION,
                job: job.id,
                pid: peer.pid,
                uid: owner.0,
                shell_job,
                tcp_established: options.tcp_established,
                file_locks: options.file_locks,
                ext_unix_sk: options.ext_unix_sk,
            };
            let published = blocking::unblock(move || staging.publish(&meta)).await;
            log::debug!(
                "job {}: images published at {:?}",
                job.id,
                received.elapsed()
            );
            match published {
                Ok(published) => {
                    let stats = published.stats.unwrap_or_default();
                    Response::Dumped(DumpReport {
                        job: job.id,
                        frozen_us: stats.frozen_time.into(),
                        freezing_us: stats.freezing_time.into(),
                        memdump_us: stats.memdump_time.into(),
                        total_us: received.elapsed().as_micros() as u64,
                        sync_us: published.sync_us,
                        pages_written: stats.pages_written,
                        bytes_written: published.bytes,
                        processes: published.processes,
                    })
                }
                Err(e) => failure(
                    Some(job.id),
                    format!("dump succeeded but saving the images failed: {e}"),
                    None,
                ),
            }
        }
        Err(e) => {
            let (log_file, logged) = blocking::unblock(move || staging.discard()).await;
            let message = match (&e, logged) {
                (EngineError::Failed(_), Some(logged)) => format!("criu dump failed: {logged}"),
                _ => e.to_string(),
            };
            failure(Some(job.id), message, log_file)
        }
    };
    log::info!("job {}: {}", job.id, summary(&answer));
    match connection {
        // CRIU failed before the freeze: the caller still waits on this connection.
        Some(stream) => {
            shared.jobs.remove(job.id);
            send(&stream, &answer).await;
        }
        None => job.finish(answer),
    }
}

/// Runs with the tree frozen, before CRIU collects sockets: checks the
/// caller is still the process that asked and every task of its tree may be
/// dumped for it, then queues the last frame. `Ok` means the caller's
/// connection may now be closed so CRIU records it half-closed; `Err` is
/// why the dump must not go on.
async fn at_freeze(
    peer: &Peer,
    caller: &Caller,
    stream: &Async<UnixStream>,
    job: JobId,
) -> Result<(), String> {
    check_frozen_tree(peer, caller)?;
    let frame = encode_frame(&Response::Frozen(job));
    let write = async {
        write_frame(stream, &frame, &[])
            .await
            .map_err(|e| e.to_string())
    };
    let limit = async {
        Timer::after(Duration::from_secs(2)).await;
        Err("timed out".into())
    };
    write
        .or(limit)
        .await
        .map_err(|e| format!("cannot tell the caller it is frozen: {e}"))
}

/// Most tasks a frozen tree may have (a bound on the walk, far above any
/// real tree).
const MAX_TREE_TASKS: usize = 1 << 16;

/// Applies the caller checks to every task (every thread) of the frozen
/// tree rooted at the caller, from the caller's point of view. The tree is
/// frozen, so nothing in it can fork, exec or change ids meanwhile; the
/// caller's pidfd is checked before and after, so the pid named it all along.
fn check_frozen_tree(peer: &Peer, caller: &Caller) -> Result<(), String> {
    if !peer.is_alive() {
        return Err("the caller exited before its tree was frozen".into());
    }
    let mut stack = vec![peer.pid];
    let mut seen = std::collections::HashSet::from([peer.pid]);
    let mut checked = 0;
    while let Some(pid) = stack.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("cannot list the threads of pid {pid}: {e}"))?;
        for entry in tasks {
            let entry = entry.map_err(|e| format!("cannot list the threads of pid {pid}: {e}"))?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            checked += 1;
            if checked > MAX_TREE_TASKS {
                return Err(format!("the tree has more than {MAX_TREE_TASKS} tasks"));
            }
            let dir = format!("/proc/{pid}/task/{tid}");
            match check_task(caller, &dir, pid, tid, pid == peer.pid) {
                Ok(()) => {}
                // gone (reaped) since the listing: it will not be dumped
                Err(TaskError::Gone) => continue,
                Err(TaskError::Refused(why)) => return Err(why),
            }
            let children = match std::fs::read_to_string(format!("{dir}/children")) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot list the children of task {tid}: {e}")),
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if seen.insert(child) {
                    stack.push(child);
                }
            }
        }
    }
    if !peer.is_alive() {
        return Err("the caller exited while its tree was checked".into());
    }
    Ok(())
}

enum TaskError {
    Gone,
    Refused(String),
}

fn check_task(caller: &Caller, dir: &str, pid: i32, tid: i32, root: bool) -> Result<(), TaskError> {
    let gone_or = |e: std::io::Error, what: &str| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TaskError::Gone
        } else {
            TaskError::Refused(format!("cannot inspect {what} of task {tid}: {e}"))
        }
    };
    let comm = std::fs::read_to_string(format!("{dir}/comm")).map_err(|e| gone_or(e, "comm"))?;
    let comm = comm.trim_end();
    let what = match (root, pid == tid) {
        (true, true) => format!("the caller (pid {pid}, {comm})"),
        (true, false) => format!("thread {tid} ({comm}) of the caller (pid {pid})"),
        (false, true) => format!("task pid {pid} ({comm}) in the caller's tree"),
        (false, false) => format!("thread {tid} ({comm}) of pid {pid} in the caller's tree"),
    };
    let status =
        std::fs::read_to_string(format!("{dir}/status")).map_err(|e| gone_or(e, "status"))?;
    let task = Caller::parse(&status)
        .ok_or_else(|| TaskError::Refused(format!("unreadable /proc status of {what}")))?;
    // a file, not the directory: see `admit`
    let proc_file =
        rustix::fs::stat(format!("{dir}/stat")).map_err(|e| gone_or(e.into(), "owner"))?;
    check_tree_task(caller, &task, &proc_file, &what).map_err(TaskError::Refused)
}

fn failure(job: Option<JobId>, message: String, log_file: Option<String>) -> Response {
    Response::DumpFailed(DumpFailure {
        job,
        message,
        log_file,
    })
}

fn summary(answer: &Response) -> String {
    match answer {
        Response::Dumped(r) => format!(
            "dumped {} process(es), {} bytes, frozen {} us, total {} us",
            r.processes, r.bytes_written, r.frozen_us, r.total_us
        ),
        Response::DumpFailed(f) => format!("failed: {}", f.message),
        other => format!("{other:?}"),
    }
}
