//! The only code that touches a client's socket. A [`Connection`] reads the
//! one request a connection carries and writes every frame the service
//! sends back; each of those reads and writes has its time limit here,
//! and nowhere else. The request handlers (`requests/`) never see the
//! socket: they return what to answer ([`Reply`]), and the one frame sent
//! in the middle of their work, the "you are frozen" notice at CRIU's
//! freeze, is [`Connection::tell_frozen`].

pub(crate) mod peer;
pub(crate) mod reply;
mod request;

pub(crate) use peer::Peer;
pub(crate) use reply::{Outcome, Refused, Reply, Unclaimed};
pub(crate) use request::Received;

use crate::proto::{self, FrozenNotice, Response, read_frame, write_frame};
use crate::server::engine::without_forks;
use async_io::{Async, Timer};
use futures_lite::FutureExt;
use std::future::Future;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long sending one answer to a client may take, and how long a
/// connection refused while the server drains has to send its request
/// (so that it finds the refusal rather than a closed socket).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the caller's last frame ("you are frozen") may take to queue
/// while CRIU holds its tree frozen; past it the dump is vetoed.
const FROZEN_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// One client connection, from its accept to its close.
#[derive(Debug)]
pub(crate) struct Connection {
    /// `None` once closed at the freeze ([`Connection::tell_frozen`]).
    stream: Option<Async<UnixStream>>,
}

impl Connection {
    pub(crate) fn new(stream: Async<UnixStream>) -> Self {
        Self {
            stream: Some(stream),
        }
    }

    /// The peer's `SO_PEERCRED` alone (no pidfd): enough to count the
    /// connection against its uid's limits, or to tell whether it may be
    /// coming for a result.
    pub(crate) fn credentials(&self) -> std::io::Result<nix::sys::socket::UnixCredentials> {
        peer::credentials(self.stream()?.get_ref())
    }

    /// Who is on the other end, from the kernel; `Err` is the refusal to
    /// send (the failure is logged, at most every 10 s).
    pub(crate) fn identify(&self) -> Result<Peer, Refused> {
        let identified = self.stream().and_then(|s| Peer::of(s.get_ref()));
        identified.map_err(|e| {
            // out of fds, this repeats for every connection: rate-limited
            rate_limited_warning(format_args!("cannot identify a client: {e}"));
            // out of fds or memory: this request's bad luck, not a verdict
            let message = format!("cannot identify you: {e}");
            if e.kind() == std::io::ErrorKind::ResourceBusy {
                Refused::busy(message)
            } else {
                Refused::not_permitted(message)
            }
        })
    }

    /// Sends what a handler decided, then closes.
    pub(crate) async fn deliver(self, reply: Reply) {
        match reply {
            Reply::Answer(response) => self.send(response).await,
            Reply::ThroughJob => {}
        }
    }

    /// Sends a refusal, then closes.
    pub(crate) async fn refuse(self, refused: Refused) {
        self.send(refused.into()).await;
    }

    /// Sends a refusal decided at the accept (the service at its limits,
    /// or draining), then closes; logged at most once every 10 s, as a
    /// flood of connections would repeat it endlessly.
    pub(crate) async fn refuse_at_accept(self, refused: Refused) {
        rate_limited(&AT_ACCEPT, format_args!("a connection {refused}"));
        self.refuse(refused).await;
    }

    /// Refuses a connection that arrives while the server drains. Its
    /// request is read first (for [`ANSWER_TIMEOUT`] at most), so that the
    /// client, which writes it right after connecting, finds the refusal
    /// rather than a closed socket.
    pub(crate) async fn refuse_after_request(self, refused: Refused) {
        if let Some(stream) = &self.stream {
            let _ = within(ANSWER_TIMEOUT, read_frame(stream)).await;
        }
        self.refuse_at_accept(refused).await;
    }

    /// Sends one response, best effort: a client that went away loses only
    /// its own answer.
    pub(crate) async fn send(self, response: Response) {
        self.respond(response).await;
    }

    /// Sends one response, best effort, and keeps the connection.
    async fn respond(&self, response: Response) {
        if let Err(e) = self
            .write(&proto::encode_frame(&response), ANSWER_TIMEOUT)
            .await
        {
            log::debug!("could not answer a client: {e}");
        }
    }

    /// At CRIU's freeze: queues the caller's last frame (`Frozen`), then
    /// closes the connection, so that CRIU records it half-closed with the
    /// frame in it (the original and every restored copy read it, then
    /// EOF). `Err` is why the dump must not go on; the connection then
    /// stays open, for the error.
    pub(crate) async fn tell_frozen(&mut self, notice: FrozenNotice) -> Result<(), String> {
        if self.stream.is_none() {
            return Err("criu announced the freeze twice".into());
        }
        let frame = proto::encode_frame(&Response::Frozen(notice));
        self.write(&frame, FROZEN_NOTICE_TIMEOUT)
            .await
            .map_err(|e| format!("cannot tell the caller it is frozen: {e}"))?;
        // every copy of the fd must be gone before CRIU collects sockets:
        // none may be in a child being forked meanwhile
        let stream = self.stream.take();
        without_forks(|| drop(stream));
        Ok(())
    }

    /// Whether the connection is still open: not closed at the freeze.
    pub(crate) fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Answers a connection accepted while out of fds, at once and without
    /// blocking (a fresh socket's buffer holds a small frame whole).
    pub(crate) fn refuse_at_once(stream: &UnixStream, refused: Refused) {
        let _ = stream.set_nonblocking(true);
        let frame = proto::encode_frame(&Response::from(refused));
        let _ = std::io::Write::write(&mut &*stream, &frame);
    }

    fn stream(&self) -> std::io::Result<&Async<UnixStream>> {
        self.stream
            .as_ref()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }

    /// Writes one frame within `limit`.
    async fn write(&self, frame: &[u8], limit: Duration) -> Result<(), String> {
        let stream = self.stream().map_err(|e| e.to_string())?;
        match within(limit, write_frame(stream, frame, &[])).await {
            Some(written) => written.map_err(|e| e.to_string()),
            None => Err("timed out".into()),
        }
    }
}

/// `work`, unless `limit` passes first (`None` then).
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    async { Some(work.await) }
        .or(async {
            Timer::after(limit).await;
            None
        })
        .await
}

/// When a rate-limited warning was last logged, and how many were left
/// out since.
type Limiter = Mutex<(Option<Instant>, u64)>;
/// Clients the service could not identify.
static CLIENTS: Limiter = Mutex::new((None, 0));
/// Connections refused at the accept.
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
            last.0 = Some(Instant::now());
            if skipped > 0 {
                log::warn!("{message} (and {skipped} like it in the last 10 s)");
            } else {
                log::warn!("{message}");
            }
        }
    }
}
