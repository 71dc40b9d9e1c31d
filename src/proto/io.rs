//! Reading and writing frames, with their fds, on an async unix stream.

use super::frame::{FrameError, HEADER_LEN, Header, MAX_FDS};
use async_io::Async;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// One frame as read from the socket: header, raw body and the fds that came with it.
#[derive(Debug)]
pub struct Frame {
    /// The checked header.
    pub header: Header,
    /// The body, exactly `header.body_len` bytes, not yet decoded.
    pub body: Vec<u8>,
    /// File descriptors that arrived with the frame (close-on-exec, at most [`MAX_FDS`]).
    pub fds: Vec<OwnedFd>,
}

/// Reads one frame. Returns `Ok(None)` when the peer closed the connection
/// cleanly before the frame's first byte.
///
/// Fds are received with `MSG_CMSG_CLOEXEC`. Truncated control data or more
/// than [`MAX_FDS`] fds is an error, and every fd that did arrive is closed.
pub async fn read_frame(stream: &Async<UnixStream>) -> Result<Option<Frame>, FrameError> {
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    if !fill(stream, &mut header, &mut fds).await? {
        return Ok(None);
    }
    let header = Header::parse(&header)?;
    let mut body = vec![0u8; header.body_len as usize];
    if !body.is_empty() && !fill(stream, &mut body, &mut fds).await? {
        return Err(FrameError::Truncated);
    }
    Ok(Some(Frame { header, body, fds }))
}

/// Fills `buf` completely. Returns `false` on EOF before the first byte.
async fn fill(
    stream: &Async<UnixStream>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = stream
            .read_with(|s| match recv_some(s, &mut buf[filled..], fds) {
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                other => Ok(other),
            })
            .await??;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    Ok(true)
}

fn recv_some(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, FrameError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        s,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        fds.clear();
        return Err(FrameError::ControlTruncated);
    }
    if fds.len() > MAX_FDS {
        let n = fds.len();
        fds.clear();
        return Err(FrameError::UnexpectedFds(n));
    }
    Ok(msg.bytes)
}

/// Writes a whole encoded frame; `fds` travel with its first bytes.
/// Never raises `SIGPIPE`: a vanished peer is an error.
pub async fn write_frame(
    stream: &Async<UnixStream>,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds for one frame; the protocol allows {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    let mut sent = 0;
    while sent < frame.len() {
        let rest = &frame[sent..];
        let with_fds = sent == 0 && !fds.is_empty();
        let n = stream
            .write_with(|s| {
                let flags = SendFlags::NOSIGNAL;
                if with_fds {
                    let mut space =
                        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                        return Err(io::Error::other("too many fds for one frame"));
                    }
                    Ok(rustix::net::sendmsg(
                        s,
                        &[IoSlice::new(rest)],
                        &mut control,
                        flags,
                    )?)
                } else {
                    Ok(rustix::net::send(s, rest, flags)?)
                }
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}
