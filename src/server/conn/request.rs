//! Reading a connection's one request: within the request timeout, in
//! the protocol's version, decoded whole, with exactly the fds its kind
//! carries. What is wrong with it is answered here.

use super::{ANSWER_TIMEOUT, Connection, Peer, Refused, rate_limited_warning, within};
use crate::proto::{
    self, DumpOptions, FrameError, JobId, PROTOCOL_VERSION, Request, RestoreRequest,
};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// A well-formed request, with the fds it carries.
#[derive(Debug)]
pub(crate) enum Received {
    /// Dump the caller into the images directory `dir`.
    Checkpoint { options: DumpOptions, dir: OwnedFd },
    /// The result of a dump whose connection closed at the freeze.
    Result(JobId),
    /// Restore the images in `dir`.
    Restore {
        request: RestoreRequest,
        dir: OwnedFd,
    },
}

impl Connection {
    /// Reads the connection's one request within `timeout`, and answers
    /// what is wrong with it itself (`None` then).
    pub(crate) async fn read_request(&self, peer: &Peer, timeout: Duration) -> Option<Received> {
        let stream = self.stream.as_ref()?;
        let frame = match within(timeout, proto::read_frame(stream)).await {
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => return None,
            Some(Err(e)) => return self.bad_frame(peer, e).await,
            None => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no complete request within {timeout:?}"),
                );
                return self.bad_frame(peer, FrameError::Io(e)).await;
            }
        };
        if frame.header.version != PROTOCOL_VERSION {
            log::info!(
                "pid {} speaks protocol {}, we speak {PROTOCOL_VERSION}",
                peer.pid(),
                frame.header.version
            );
            let answer = proto::encode_mismatch_frame(frame.header.version);
            let _ = self.write(&answer, ANSWER_TIMEOUT).await;
            return None;
        }
        let refused = match proto::decode_body(frame.header, &frame.body) {
            Ok(request) => match with_fds(request, frame.fds) {
                Ok(received) => return Some(received),
                Err(refused) => refused,
            },
            Err(e) => {
                log::info!("pid {}: malformed request: {e}", peer.pid());
                Refused::bad_request(e.to_string())
            }
        };
        self.respond(refused.into()).await;
        None
    }

    /// Answers a frame that could not be read.
    async fn bad_frame(&self, peer: &Peer, e: FrameError) -> Option<Received> {
        let refused = match e {
            // the kernel also truncates the fds of a message when the
            // receiver has no fd left for them: that is not the client's fault
            FrameError::ControlTruncated if self.out_of_fds() => {
                rate_limited_warning(format_args!(
                    "pid {}: cannot receive its fds: the service is out of fds",
                    peer.pid()
                ));
                Refused::busy("the selfdump service is out of file descriptors; retry later")
            }
            e => {
                log::info!("pid {} uid {}: bad request: {e}", peer.pid(), peer.uid);
                Refused::bad_request(e.to_string())
            }
        };
        self.respond(refused.into()).await;
        None
    }

    /// Whether this process cannot open one more fd (`EMFILE`/`ENFILE`).
    fn out_of_fds(&self) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        matches!(
            rustix::io::fcntl_dupfd_cloexec(stream, 0),
            Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
        )
    }
}

/// The request with exactly the fds its kind carries: one directory for a
/// checkpoint or a restore, none for a result.
fn with_fds(request: Request, mut fds: Vec<OwnedFd>) -> Result<Received, Refused> {
    let (what, wanted) = match &request {
        Request::Checkpoint(_) => ("checkpoint", 1),
        Request::Result(_) => ("result", 0),
        Request::Restore(_) => ("restore", 1),
    };
    if fds.len() != wanted {
        let e = match fds.len() {
            0 => FrameError::MissingFd,
            n => FrameError::UnexpectedFds(n),
        };
        return Err(Refused::bad_request(format!("{what} request: {e}")));
    }
    Ok(match request {
        Request::Checkpoint(options) => Received::Checkpoint {
            options,
            dir: fds.pop().expect("one fd"),
        },
        Request::Result(job) => Received::Result(job),
        Request::Restore(request) => Received::Restore {
            request,
            dir: fds.pop().expect("one fd"),
        },
    })
}
