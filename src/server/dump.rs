//! One checkpoint request, from the checks to the published images.

use super::Shared;
use super::connection::{refusal, send};
use super::engine::{DumpSpec, EngineError, FrozenVerdict, without_forks};
use super::images::{ImageMeta, Staging};
use super::peer::Peer;
use super::policy::{Caller, check_dumpable, may_write_dir};
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
    let proc_dir = rustix::fs::stat(format!("/proc/{}", peer.pid))
        .map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    check_dumpable(&caller, &proc_dir, "the caller").map_err(not_permitted)?;
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

    let mut connection = Some(stream);
    let dumped = shared
        .config
        .criu
        .dump(&spec, shared.config.dump_timeout, async || {
            let stream = connection.take().expect("the freeze hook runs once");
            at_freeze(&peer, stream, job.id).await
        })
        .await;

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
            match blocking::unblock(move || staging.publish(&meta)).await {
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
/// caller is still the process that asked, queues the last frame, and
/// closes the connection so CRIU records it half-closed.
async fn at_freeze(peer: &Peer, stream: Async<UnixStream>, job: JobId) -> FrozenVerdict {
    if !peer.is_alive() {
        return FrozenVerdict::Veto("the caller exited before its tree was frozen".into());
    }
    let frame = encode_frame(&Response::Frozen(job));
    let write = async {
        write_frame(&stream, &frame, &[])
            .await
            .map_err(|e| e.to_string())
    };
    let limit = async {
        Timer::after(Duration::from_secs(2)).await;
        Err("timed out".into())
    };
    if let Err(e) = write.or(limit).await {
        return FrozenVerdict::Veto(format!("cannot tell the caller it is frozen: {e}"));
    }
    without_forks(|| drop(stream));
    FrozenVerdict::Proceed
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
