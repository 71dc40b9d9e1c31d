//! Talking to the service: connect, send one request with its fds, read
//! its one answer.

use super::Error;
use crate::proto::{FrameError, Response, read_frame, write_frame};
use async_io::Async;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

pub(super) async fn connect(socket: &Path) -> Result<Async<UnixStream>, Error> {
    Async::<UnixStream>::connect(socket)
        .await
        .map_err(|source| super::connect::failed(socket, source))
}

/// Sends a request and reads the answer. A service that refuses a client
/// before reading its request (it cannot identify it, it is busy) answers
/// and closes: the write then fails, but the answer is there to read.
pub(super) async fn ask(
    stream: &Async<UnixStream>,
    request: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<Response, Error> {
    if let Err(e) = write_frame(stream, request, fds).await {
        return read_response(stream)
            .await
            .map_err(|_| Error::Protocol(FrameError::Io(e)));
    }
    read_response(stream).await
}

async fn read_response(stream: &Async<UnixStream>) -> Result<Response, Error> {
    let frame = read_frame(stream).await?.ok_or_else(|| {
        Error::Protocol(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the service closed the connection without answering",
        )))
    })?;
    if !frame.fds.is_empty() {
        return Err(Error::Protocol(FrameError::UnexpectedFds(frame.fds.len())));
    }
    Ok(crate::proto::decode_body(frame.header, &frame.body)?)
}

/// Turns an answer that is not the expected one into the error it means.
pub(super) fn unexpected(response: Response, images_dir: &Path) -> Error {
    match response {
        Response::Refused(r) => Error::Refused {
            kind: r.kind,
            message: r.message,
        },
        Response::DumpFailed(f) => Error::Dump {
            message: f.message,
            log: f.log_file.map(|name| images_dir.join(name)),
        },
        other => Error::Protocol(FrameError::Malformed(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DumpOptions, Refusal, RefusalKind, Request, encode_frame};
    use std::io::Write;

    #[test]
    fn an_answer_sent_before_the_service_closed_is_read_even_if_the_request_could_not_be_sent() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let refusal = Response::Refused(Refusal {
            kind: RefusalKind::NotPermitted,
            message: "cannot identify you".into(),
        });
        theirs.write_all(&encode_frame(&refusal)).unwrap();
        drop(theirs); // closed without reading: our write fails (EPIPE)
        let ours = Async::new(ours).unwrap();
        let request = encode_frame(&Request::Checkpoint(DumpOptions::default()));
        let answer = async_io::block_on(ask(&ours, &request, &[]));
        assert_eq!(answer.unwrap(), refusal);
    }
}
