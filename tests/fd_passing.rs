//! Frames over a real unix socket pair: round trips with and without
//! file descriptors (received CLOEXEC), frames cut off by the peer or read
//! one after another, hostile length claims, and frames carrying too many
//! fds (2 to 253), none of which may stay open.

mod frames_support;
#[path = "frames_support/largest_alloc.rs"]
mod largest_alloc;

use async_io::Async;
use frames_support::*;
use largest_alloc::largest_alloc_during;
use proptest::prelude::*;
use rustix::fs::fstat;
use rustix::io::{FdFlags, fcntl_getfd};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use selfdump::proto::{
    DumpFailure, FrameError, HEADER_LEN, Header, JobId, MAX_BODY, PROTOCOL_VERSION, Request,
    Response, decode_body, encode_frame, read_frame, write_frame,
};
use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

// ---------------------------------------------------------------------------
// Helpers.

/// A connected pair: a plain blocking end for the test to write raw bytes
/// with, and the async end that `read_frame` reads.
fn socket_pair() -> (UnixStream, Async<UnixStream>) {
    let (raw, other) = UnixStream::pair().expect("socketpair");
    (raw, Async::new(other).expect("async socket"))
}

/// Both ends async.
fn async_pair() -> (Async<UnixStream>, Async<UnixStream>) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (Async::new(a).unwrap(), Async::new(b).unwrap())
}

fn read_one(stream: &Async<UnixStream>) -> Result<Option<selfdump::proto::Frame>, FrameError> {
    async_io::block_on(read_frame(stream))
}

/// (device, inode) of what an fd refers to.
fn identity(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = fstat(fd).expect("fstat");
    (st.st_dev, st.st_ino)
}

/// How many of this process's fds refer to the file `id`. Counting by file
/// identity (not all fds) keeps this exact while other tests open and close
/// sockets in parallel threads.
fn fds_referring_to(id: (u64, u64)) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(Result::ok)
        .filter(|entry| {
            // Follows the magic link to the open file itself; an fd closed
            // by another thread in the meantime simply fails to stat.
            std::fs::metadata(entry.path())
                .map(|m| (m.dev(), m.ino()) == id)
                .unwrap_or(false)
        })
        .count()
}

/// Sends `bytes` with `fd` repeated `count` times as one `SCM_RIGHTS` message.
fn send_with_fds(sock: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>, count: usize) {
    let fds = vec![fd; count];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(count))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let sent = sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .expect("sendmsg with fds");
    assert_eq!(sent, bytes.len());
}

/// Socket tests are slower; fewer cases still cover every variant many times.
fn socket_cases() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

// ---------------------------------------------------------------------------
// Frames over a socket.

proptest! {
    #![proptest_config(socket_cases())]

    #[test]
    fn request_round_trips_through_a_socket_with_its_fd(req in request()) {
        let dir = tempfile::tempfile().unwrap();
        let (a, b) = async_pair();
        let frame = encode_frame(&req);
        async_io::block_on(write_frame(&a, &frame, &[dir.as_fd()])).unwrap();
        let got = read_one(&b).unwrap().expect("a frame");
        prop_assert_eq!(got.header.version, PROTOCOL_VERSION);
        prop_assert_eq!(got.body.len(), got.header.body_len as usize);
        prop_assert_eq!(decode_body::<Request>(got.header, &got.body).unwrap(), req);
        prop_assert_eq!(got.fds.len(), 1);
        let fd = got.fds[0].as_fd();
        prop_assert!(fcntl_getfd(fd).unwrap().contains(FdFlags::CLOEXEC));
        prop_assert_eq!(identity(fd), identity(dir.as_fd()));
    }

    #[test]
    fn response_round_trips_through_a_socket_without_fds(resp in response()) {
        let (a, b) = async_pair();
        let frame = encode_frame(&resp);
        async_io::block_on(write_frame(&a, &frame, &[])).unwrap();
        let got = read_one(&b).unwrap().expect("a frame");
        prop_assert!(got.fds.is_empty());
        prop_assert_eq!(decode_body::<Response>(got.header, &got.body).unwrap(), resp);
    }

    #[test]
    fn peer_closing_inside_a_frame_is_truncated(
        resp in response(),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = encode_frame(&resp);
        // Anything from one byte to all but the last byte of the frame.
        let cut = 1 + cut.index(frame.len() - 1);
        let (mut raw, b) = socket_pair();
        raw.write_all(&frame[..cut]).unwrap();
        drop(raw);
        let got = read_one(&b);
        prop_assert!(matches!(got, Err(FrameError::Truncated)), "cut at {}: {:?}", cut, got);
    }
}

#[test]
fn peer_closing_at_every_point_of_a_frame_is_truncated() {
    let frame = encode_frame(&Request::Result(JobId { service: 7, seq: 9 }));
    for cut in 1..frame.len() {
        let (mut raw, b) = socket_pair();
        raw.write_all(&frame[..cut]).unwrap();
        raw.shutdown(Shutdown::Write).unwrap();
        let got = read_one(&b);
        assert!(
            matches!(got, Err(FrameError::Truncated)),
            "cut at {cut} of {}: {got:?}",
            frame.len()
        );
    }
}

#[test]
fn peer_closing_before_the_first_byte_is_a_clean_end() {
    let (raw, b) = socket_pair();
    drop(raw);
    assert!(matches!(read_one(&b), Ok(None)));
}

#[test]
fn frames_are_read_one_after_another_until_a_clean_end() {
    let (a, b) = async_pair();
    let first = Response::Frozen(selfdump::proto::FrozenNotice {
        job: JobId { service: 1, seq: 2 },
        generation: "gen-20250101-000000.000000-00000001".into(),
    });
    let second = Response::UnknownJob(JobId { service: 3, seq: 4 });
    async_io::block_on(async {
        write_frame(&a, &encode_frame(&first), &[]).await.unwrap();
        write_frame(&a, &encode_frame(&second), &[]).await.unwrap();
    });
    drop(a);
    let f1 = read_one(&b).unwrap().expect("first frame");
    let f2 = read_one(&b).unwrap().expect("second frame");
    assert_eq!(decode_body::<Response>(f1.header, &f1.body).unwrap(), first);
    assert_eq!(
        decode_body::<Response>(f2.header, &f2.body).unwrap(),
        second
    );
    assert!(matches!(read_one(&b), Ok(None)));
}

#[test]
fn frame_with_wrong_magic_from_a_socket_is_bad_magic() {
    let (mut raw, b) = socket_pair();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    match read_one(&b) {
        Err(FrameError::BadMagic(m)) => assert_eq!(&m, b"GET "),
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

#[test]
fn huge_length_claims_from_a_socket_are_too_large_before_any_body_is_read_or_allocated() {
    for claim in [u32::MAX, MAX_BODY + 1] {
        let (mut raw, b) = socket_pair();
        let header = Header {
            version: PROTOCOL_VERSION,
            body_len: claim,
        };
        raw.write_all(&header.to_bytes()).unwrap();
        // A few body bytes, then the end: a reader that went on to read the
        // body would answer Truncated (not hang) and fail below.
        raw.write_all(&[0xc0; 16]).unwrap();
        raw.shutdown(Shutdown::Write).unwrap();
        let (got, largest) = largest_alloc_during(|| read_one(&b));
        match got {
            Err(FrameError::TooLarge(n)) => assert_eq!(n, claim),
            other => panic!("claim {claim}: expected TooLarge, got {other:?}"),
        }
        assert!(
            largest < MAX_BODY as usize,
            "claim {claim}: read_frame allocated {largest} bytes"
        );
        // The body bytes are still unread in the socket.
        let mut rest = [0u8; 32];
        let n = rustix::net::recv(&b, &mut rest, rustix::net::RecvFlags::DONTWAIT).unwrap();
        assert_eq!(n.0, 16, "claim {claim}: body bytes were consumed");
    }
}

#[test]
fn frame_of_another_version_from_a_socket_decodes_to_version_mismatch() {
    let (mut raw, b) = socket_pair();
    raw.write_all(&frame_of(99, b"please upgrade")).unwrap();
    let frame = read_one(&b).unwrap().expect("a frame");
    assert_eq!(frame.header.version, 99);
    match decode_body::<Request>(frame.header, &frame.body) {
        Err(FrameError::VersionMismatch {
            ours,
            theirs,
            message,
        }) => {
            assert_eq!(ours, PROTOCOL_VERSION);
            assert_eq!(theirs, 99);
            assert_eq!(message, "please upgrade");
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn trailing_bytes_from_a_socket_are_rejected() {
    let mut body = encode_frame(&checkpoint_request())[HEADER_LEN..].to_vec();
    body.extend_from_slice(&[1, 2, 3]);
    let (mut raw, b) = socket_pair();
    raw.write_all(&frame_of(PROTOCOL_VERSION, &body)).unwrap();
    let frame = read_one(&b).unwrap().expect("a frame");
    assert_eq!(frame.body, body);
    assert!(matches!(
        decode_body::<Request>(frame.header, &frame.body),
        Err(FrameError::TrailingBytes(3))
    ));
}

#[test]
fn large_frame_written_in_many_pieces_arrives_whole_with_its_one_fd() {
    let file = tempfile::tempfile().unwrap();
    let (a, b) = async_pair();
    // A small send buffer forces write_frame through many partial writes.
    rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&b, 4096).unwrap();
    let resp = Response::DumpFailed(DumpFailure {
        job: None,
        message: "é".repeat(30_000),
        log_file: Some("dump.log".into()),
    });
    let encoded = encode_frame(&resp);
    assert!(encoded.len() > 60_000 && encoded.len() <= HEADER_LEN + MAX_BODY as usize);
    // The writer runs on its own thread and ends when it is done or the
    // reader hangs up, so a reader that fails cannot leave it blocked.
    let writer = std::thread::spawn(move || {
        let written = async_io::block_on(write_frame(&a, &encoded, &[file.as_fd()]));
        (written, file)
    });
    let read = read_one(&b);
    // Closing our end wakes a writer still blocked on a full socket.
    let extra = read.as_ref().ok().map(|_| read_one(&b));
    drop(b);
    let (written, file) = writer.join().unwrap();
    let frame = read.unwrap().expect("a frame");
    written.unwrap();
    assert_eq!(frame.fds.len(), 1, "the fd must travel exactly once");
    assert_eq!(identity(frame.fds[0].as_fd()), identity(file.as_fd()));
    assert_eq!(
        decode_body::<Response>(frame.header, &frame.body).unwrap(),
        resp
    );
    // Nothing follows: the writer ended the connection after one frame.
    assert!(matches!(extra, Some(Ok(None))), "{extra:?}");
}

#[test]
fn writing_to_a_closed_peer_is_an_error() {
    let (a, b) = async_pair();
    drop(b);
    let err = async_io::block_on(write_frame(&a, &encode_frame(&checkpoint_request()), &[]))
        .expect_err("the peer is gone");
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

// ---------------------------------------------------------------------------
// Too many fds.

#[test]
fn frame_with_several_fds_is_rejected_and_every_fd_is_closed() {
    // 2 fits the receive buffer's control space (so UnexpectedFds), 253 is
    // the kernel's SCM_MAX_FD (so the control data is truncated).
    for count in [2, 3, 4, 5, 8, 64, 253] {
        let file = tempfile::tempfile().unwrap();
        let id = identity(file.as_fd());
        let (raw, b) = socket_pair();
        let before = fds_referring_to(id);
        assert_eq!(before, 1, "only our own fd refers to the new file");

        send_with_fds(
            &raw,
            &encode_frame(&checkpoint_request()),
            file.as_fd(),
            count,
        );
        let got = read_one(&b);
        assert!(
            matches!(
                got,
                Err(FrameError::ControlTruncated) | Err(FrameError::UnexpectedFds(_))
            ),
            "{count} fds: {got:?}"
        );
        if let Err(FrameError::UnexpectedFds(n)) = got {
            assert_eq!(n, count, "UnexpectedFds must count what arrived");
        }
        if count >= 8 {
            assert!(
                matches!(got, Err(FrameError::ControlTruncated)),
                "{count} fds cannot fit: {got:?}"
            );
        }
        assert_eq!(
            fds_referring_to(id),
            before,
            "{count} fds: a received fd was left open"
        );
    }
}

#[test]
fn fds_arriving_with_header_and_body_separately_count_together() {
    let file = tempfile::tempfile().unwrap();
    let id = identity(file.as_fd());
    let (raw, b) = socket_pair();
    let before = fds_referring_to(id);
    let frame = encode_frame(&checkpoint_request());
    send_with_fds(&raw, &frame[..HEADER_LEN], file.as_fd(), 1);
    send_with_fds(&raw, &frame[HEADER_LEN..], file.as_fd(), 1);
    match read_one(&b) {
        Err(FrameError::UnexpectedFds(2)) => {}
        other => panic!("expected UnexpectedFds(2), got {other:?}"),
    }
    assert_eq!(fds_referring_to(id), before, "a received fd was left open");
}

#[test]
fn fd_sent_with_a_rejected_frame_is_closed() {
    let file = tempfile::tempfile().unwrap();
    let id = identity(file.as_fd());
    let (raw, b) = socket_pair();
    let before = fds_referring_to(id);
    send_with_fds(&raw, b"NOPE not a frame", file.as_fd(), 1);
    assert!(matches!(read_one(&b), Err(FrameError::BadMagic(_))));
    assert_eq!(fds_referring_to(id), before, "the fd outlived the error");
}

#[test]
fn more_fds_than_max_fds_never_get_through_write_and_read_frame() {
    // For 2 to 8 fds (MAX_FDS is 1): write_frame refuses them and sends
    // nothing (its reader sees the end of the stream, no frame, no fd);
    // the same frame sent by hand with them reaches read_frame, which
    // refuses it; none of the fds stays open on either side.
    assert_eq!(
        selfdump::proto::MAX_FDS,
        1,
        "this test counts from MAX_FDS + 1"
    );
    for count in 2..=8 {
        let file = tempfile::tempfile().unwrap();
        let id = identity(file.as_fd());
        let before = fds_referring_to(id);
        let frame = encode_frame(&checkpoint_request());
        let fds = vec![file.as_fd(); count];

        let (a, b) = async_pair();
        let written = async_io::block_on(write_frame(&a, &frame, &fds));
        assert!(written.is_err(), "write_frame sent {count} fds");
        drop(a);
        let got = read_one(&b);
        assert!(
            matches!(got, Ok(None)),
            "{count} fds: a refused write_frame still sent something: {got:?}"
        );

        let (raw, b) = socket_pair();
        send_with_fds(&raw, &frame, file.as_fd(), count);
        let got = read_one(&b);
        assert!(
            matches!(
                got,
                Err(FrameError::UnexpectedFds(_)) | Err(FrameError::ControlTruncated)
            ),
            "{count} fds reached read_frame: {got:?}"
        );
        assert_eq!(
            fds_referring_to(id),
            before,
            "{count} fds: one was left open"
        );
    }
}

/// The control buffer is padded to hold up to 4 fds, so the writer must
/// count them itself rather than rely on the buffer filling up.
#[test]
fn write_frame_refuses_more_fds_than_max_fds() {
    let file = tempfile::tempfile().unwrap();
    let (a, _b) = async_pair();
    let fds = vec![file.as_fd(); selfdump::proto::MAX_FDS + 1];
    let frame = encode_frame(&checkpoint_request());
    assert!(
        async_io::block_on(write_frame(&a, &frame, &fds)).is_err(),
        "write_frame sent {} fds; MAX_FDS is {}",
        fds.len(),
        selfdump::proto::MAX_FDS
    );
}
