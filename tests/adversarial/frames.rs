//! Attacks on the wire format: length claims, truncated, trailing and
//! garbage bytes, the wrong magic or version, a frame cut off by a close,
//! and the most fds one message can carry.

use crate::Ctx;
use crate::common::*;
use crate::support::*;
use async_io::Async;
use selfdump::proto::{
    self, DumpOptions, HEADER_LEN, Header, MAGIC, PROTOCOL_VERSION, RefusalKind, Request,
};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends `bytes` on a new connection: refused as a bad request, saying `says`.
fn bad_request(socket: &Path, bytes: &[u8], says: &str) -> String {
    let (kind, message) = refusal(exchange(socket, bytes, &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains(says), "{message}");
    message
}

/// A header announcing a 4 GiB body: refused from the header alone.
pub fn oversize_length_claim(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    let message = bad_request(&socket, &header, "exceeds the limit");
    ctx.reached("refused at the header, before reading the body");
    format!("refused before allocating: {message}")
}

/// A frame that ends early; the client then waits for the answer.
pub fn truncated_frame(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let frame = checkpoint_frame();
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.write_all(&frame[..frame.len() - 2]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (kind, message) = read_refusal(&mut stream);
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("middle of a frame"), "{message}");
    ctx.reached("the frame cut by the client's shutdown, refused");
    format!("refused: {message}")
}

pub fn trailing_bytes(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut body = rmp_serde::to_vec(&Request::Checkpoint(DumpOptions::default())).unwrap();
    body.extend_from_slice(&[0xc0, 0xc0, 0xc0]);
    let message = bad_request(
        &socket,
        &frame_with_body(&body),
        "3 unexpected trailing bytes",
    );
    ctx.reached("the body decoded, the trailing bytes refused");
    format!("refused: {message}")
}

pub fn garbage_bytes(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    bad_request(&socket, &garbage, "not a selfdump peer");
    // garbage after a valid header: a body that is not MessagePack of a request
    let (kind, message) = refusal(exchange(&socket, &frame_with_body(&garbage[..64]), &[]));
    assert_eq!(kind, RefusalKind::BadRequest, "{message}");
    ctx.reached("refused at the header (garbage), and at the body's decoding");
    format!("refused both: {}", short(&message))
}

pub fn wrong_magic(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut frame = checkpoint_frame();
    frame[..4].copy_from_slice(b"CRIU");
    let message = bad_request(&socket, &frame, "not a selfdump peer");
    ctx.reached("refused at the header's magic");
    format!("refused: {message}")
}

pub fn wrong_version(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let file = tempfile::tempfile().unwrap();
    let body = b"\x91\x00";
    let mut frame = Header {
        version: PROTOCOL_VERSION.wrapping_add(7),
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    frame.extend_from_slice(body);
    let answer = exchange(&socket, &frame, &[file.as_fd()]);
    assert_eq!(answer.header.version, PROTOCOL_VERSION);
    let text = String::from_utf8(answer.body).unwrap();
    assert!(text.contains("version mismatch"), "{text}");
    ctx.reached("refused at the header's version, answered in a frame every version reads");
    format!("answered in its own version: {text}")
}

/// 253 fds (SCM_MAX_FD) in one message: refused, and every one of them is
/// closed in the service (counted by what this process still has open on
/// the file, after closing its own copies).
pub fn fds_253_in_one_message(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let target = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let path = target.canonicalize().unwrap();
    let files: Vec<std::fs::File> = (0..253)
        .map(|_| std::fs::File::open(&path).unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    let answer = async_io::block_on(async {
        let stream = Async::<UnixStream>::connect(&socket).await.unwrap();
        let frame = checkpoint_frame();
        // send the fds with the first byte, by hand: write_frame allows MAX_FDS only
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        let sent = rustix::net::sendmsg(
            stream.get_ref(),
            &[std::io::IoSlice::new(&frame[..1])],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, 1);
        // the service may refuse on that first byte and close before the
        // rest arrives (EPIPE here); its answer is still there to read
        let _ = proto::write_frame(&stream, &frame[1..], &[]).await;
        proto::read_frame(&stream)
            .await
            .unwrap()
            .expect("an answer")
    });
    drop(files);
    let (kind, message) = refusal(answer);
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(
        message.contains("too many file descriptors") || message.contains("file descriptors"),
        "{message}"
    );
    poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || match open_fds().iter().filter(|(_, p)| *p == path).count() {
            0 => Ok(()),
            held => Err(format!("{held} of the sent fds still open")),
        },
    );
    ctx.reached("253 fds received with the first byte, refused, each closed");
    format!("refused ({message}); 0 of the 253 fds left open")
}

/// A client that closes its connection in the middle of a frame (header
/// and half a body, or half a header).
pub fn close_mid_frame(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let frame = checkpoint_frame();
    for cut in [3, HEADER_LEN + 1] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(&frame[..cut]).unwrap();
        drop(stream);
    }
    ctx.reached("two connections closed mid-frame (mid-header, mid-body)");
    "survived: nothing to answer, connections closed".into()
}
