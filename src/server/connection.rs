//! One connection: identify the peer, read one request, answer it.

use super::Shared;
use super::config::ANSWER_TIMEOUT;
use super::outcome::Refused;
use super::peer::Peer;
use super::slots::UidSlot;
use crate::proto::{
    self, FrameError, PROTOCOL_VERSION, RefusalKind, Request, Response, read_frame, write_frame,
};
use async_io::{Async, Timer};
use futures_lite::FutureExt;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers and closes a connection the service has no room for.
pub(super) async fn refuse_busy(stream: Async<UnixStream>) {
    let busy = Refused::busy("too many connections to the selfdump service; retry later");
    refuse_at_accept(stream, busy).await;
}

/// Answers and closes a connection refused as it was accepted (busy);
/// logged, at most once every 10 s: a flood would repeat it endlessly.
pub(super) async fn refuse_at_accept(stream: Async<UnixStream>, refused: Refused) {
    rate_limited(
        &AT_ACCEPT,
        format_args!("a connection {refused} (the service is at its limits)"),
    );
    send(&stream, &refused.into()).await;
}

/// Sends `response` to `peer`, and logs it with who asked (`what`: the
/// request).
async fn answer(stream: &Async<UnixStream>, peer: &Peer, what: &str, response: &Response) {
    let (level, said) = super::outcome::logged(response);
    log::log!(level, "pid {} uid {}: {what} {said}", peer.pid, peer.uid);
    send(stream, response).await;
}

/// Refuses a connection that arrives while the server drains. Its request
/// is read first (for a second at most), so that the client, which writes
/// it right after connecting, finds the refusal rather than a closed socket.
pub(super) async fn refuse_shutting_down(stream: Async<UnixStream>) {
    let _ = read_frame(&stream)
        .or(async {
            Timer::after(ANSWER_TIMEOUT).await;
            Ok(None)
        })
        .await;
    rate_limited(
        &AT_ACCEPT,
        format_args!("a connection refused (shutting down): the service drains"),
    );
    send(&stream, &shutting_down()).await;
}

/// What a checkpoint request gets once the server is asked to stop.
pub(super) fn shutting_down() -> Response {
    refusal(
        RefusalKind::ShuttingDown,
        "the selfdump service is shutting down; retry against its successor",
    )
}

/// A refusal as the wire answer ([`Refused`] into [`Response`]).
pub(super) fn refusal(kind: RefusalKind, message: impl Into<String>) -> Response {
    Refused::new(kind, message).into()
}

/// Sends one response, best effort: a client that went away loses only its own answer.
pub(super) async fn send(stream: &Async<UnixStream>, response: &Response) {
    let frame = proto::encode_frame(response);
    let write = async {
        write_frame(stream, &frame, &[])
            .await
            .map_err(|e| e.to_string())
    };
    let limit = async {
        Timer::after(ANSWER_TIMEOUT).await;
        Err("timed out".to_string())
    };
    if let Err(e) = write.or(limit).await {
        log::debug!("could not answer a client: {e}");
    }
}

pub(super) async fn handle(shared: Arc<Shared>, stream: Async<UnixStream>) {
    let peer = match Peer::of(stream.get_ref()) {
        Ok(peer) => peer,
        Err(e) => {
            // out of fds, this repeats for every connection: rate-limited
            rate_limited_warning(format_args!("cannot identify a client: {e}"));
            // out of fds or memory: this request's bad luck, not a verdict
            let kind = if e.kind() == std::io::ErrorKind::ResourceBusy {
                RefusalKind::Busy
            } else {
                RefusalKind::NotPermitted
            };
            send(&stream, &refusal(kind, format!("cannot identify you: {e}"))).await;
            return;
        }
    };
    if let Some((request, fds)) = read_request(&shared, &peer, &stream).await {
        dispatch(&shared, peer, stream, request, fds).await;
    }
}

/// Reads the connection's one request within the request timeout, and
/// answers what is wrong with it itself (`None` then).
async fn read_request(
    shared: &Shared,
    peer: &Peer,
    stream: &Async<UnixStream>,
) -> Option<(Request, Vec<OwnedFd>)> {
    let timeout = shared.config.request_timeout;
    let read = async { read_frame(stream).await };
    let limit = async {
        Timer::after(timeout).await;
        Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no complete request within {timeout:?}"),
        )))
    };
    let frame = match read.or(limit).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        // the kernel also truncates the fds of a message when the
        // receiver has no fd left for them: that is not the client's fault
        Err(FrameError::ControlTruncated) if out_of_fds(stream) => {
            rate_limited_warning(format_args!(
                "pid {}: cannot receive its fds: the service is out of fds",
                peer.pid
            ));
            let m = "the selfdump service is out of file descriptors; retry later";
            send(stream, &refusal(RefusalKind::Busy, m)).await;
            return None;
        }
        Err(e) => {
            log::info!("pid {} uid {}: bad request: {e}", peer.pid, peer.uid);
            send(stream, &refusal(RefusalKind::BadRequest, e.to_string())).await;
            return None;
        }
    };
    if frame.header.version != PROTOCOL_VERSION {
        log::info!(
            "pid {} speaks protocol {}, we speak {PROTOCOL_VERSION}",
            peer.pid,
            frame.header.version
        );
        let answer = proto::encode_mismatch_frame(frame.header.version);
        let _ = write_frame(stream, &answer, &[])
            .or(async {
                Timer::after(ANSWER_TIMEOUT).await;
                Ok(())
            })
            .await;
        return None;
    }
    match proto::decode_body(frame.header, &frame.body) {
        Ok(request) => Some((request, frame.fds)),
        Err(e) => {
            log::info!("pid {}: malformed request: {e}", peer.pid);
            send(stream, &refusal(RefusalKind::BadRequest, e.to_string())).await;
            None
        }
    }
}

/// The one fd a request must carry, or why it is refused (`what` names
/// the request).
fn one_fd(mut fds: Vec<OwnedFd>, what: &str) -> Result<OwnedFd, Refused> {
    if fds.len() != 1 {
        let e = if fds.is_empty() {
            FrameError::MissingFd
        } else {
            FrameError::UnexpectedFds(fds.len())
        };
        return Err(Refused::new(
            RefusalKind::BadRequest,
            format!("{what} request: {e}"),
        ));
    }
    Ok(fds.pop().expect("one fd"))
}

/// Serves a well-formed request.
async fn dispatch(
    shared: &Shared,
    peer: Peer,
    stream: Async<UnixStream>,
    request: Request,
    fds: Vec<OwnedFd>,
) {
    match request {
        Request::Checkpoint(options) => {
            let dir = match one_fd(fds, "checkpoint") {
                Ok(dir) => dir,
                Err(refused) => {
                    return answer(&stream, &peer, "checkpoint", &refused.into()).await;
                }
            };
            if shared.stop.is_requested() {
                return answer(&stream, &peer, "checkpoint", &shutting_down()).await;
            }
            super::dump::checkpoint(shared, peer, stream, options, dir).await;
        }
        Request::Result(job) => {
            let what = format!("result of job {job}:");
            if !fds.is_empty() {
                let e = FrameError::UnexpectedFds(fds.len());
                let refused = refusal(RefusalKind::BadRequest, format!("result request: {e}"));
                return answer(&stream, &peer, &what, &refused).await;
            }
            let result = match shared.jobs.claim(job, &peer) {
                Ok(job) => job.result().await.into(),
                Err(unclaimed) => Response::from(unclaimed),
            };
            answer(&stream, &peer, &what, &result).await;
        }
        Request::Restore(request) => {
            let dir = match one_fd(fds, "restore") {
                Ok(dir) => dir,
                Err(refused) => return answer(&stream, &peer, "restore", &refused.into()).await,
            };
            if shared.stop.is_requested() {
                return answer(&stream, &peer, "restore", &shutting_down()).await;
            }
            super::restoring::serve(shared, peer, stream, request, dir).await;
        }
    }
}

/// Takes a connection slot for the peer's uid, right at the accept (before
/// the connection takes one of the global slots, so that one uid's flood
/// cannot fill them). `Ok(None)` when the peer's uid is unknown: `handle`
/// then refuses it. `Err` is the refusal to send.
pub(super) fn uid_slot(
    shared: &Shared,
    stream: &Async<UnixStream>,
) -> Result<Option<UidSlot>, Refused> {
    let Ok(cred) = super::peer::credentials(stream.get_ref()) else {
        return Ok(None);
    };
    let uid = cred.uid();
    let per_uid = shared.config.max_connections_per_uid;
    match UidSlot::take(&shared.connections_per_uid, uid, per_uid) {
        Some(slot) => Ok(Some(slot)),
        None => Err(Refused::busy(format!(
            "uid {uid} already has {per_uid} connections open to the selfdump service; \
                 retry later"
        ))),
    }
}

/// When a rate-limited warning was last logged, and how many were left
/// out since.
type Limiter = Mutex<(Option<std::time::Instant>, u64)>;
/// Clients the service could not identify or receive from.
static CLIENTS: Limiter = Mutex::new((None, 0));
/// Connections refused as they were accepted.
static AT_ACCEPT: Limiter = Mutex::new((None, 0));

/// Logs a warning about a client that a flood of clients could repeat
/// endlessly, at most once every 10 s.
fn rate_limited_warning(message: std::fmt::Arguments<'_>) {
    rate_limited(&CLIENTS, message);
}

/// Logs a warning at most once every 10 s per `limiter`, saying how many
/// were left out in between.
fn rate_limited(limiter: &Limiter, message: std::fmt::Arguments<'_>) {
    let mut last = limiter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match last.0 {
        Some(at) if at.elapsed() < Duration::from_secs(10) => last.1 += 1,
        _ => {
            let skipped = std::mem::take(&mut last.1);
            last.0 = Some(std::time::Instant::now());
            if skipped > 0 {
                log::warn!("{message} (and {skipped} like it in the last 10 s)");
            } else {
                log::warn!("{message}");
            }
        }
    }
}

/// Whether this process cannot open one more fd (`EMFILE`/`ENFILE`).
fn out_of_fds(stream: &Async<UnixStream>) -> bool {
    matches!(
        rustix::io::fcntl_dupfd_cloexec(stream, 0),
        Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}
