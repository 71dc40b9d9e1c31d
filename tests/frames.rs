//! The wire protocol of `selfdump::proto`, tested on its own: header and body
//! encoding, the decoder's answers to hostile or broken input, and frames
//! with their file descriptors over a real unix socket pair.

use async_io::Async;
use proptest::prelude::*;
use rustix::fs::fstat;
use rustix::io::{FdFlags, fcntl_getfd};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use selfdump::proto::{
    DumpFailure, DumpOptions, DumpReport, FrameError, HEADER_LEN, Header, JobId, MAGIC, MAX_BODY,
    PROTOCOL_VERSION, Refusal, RefusalKind, Request, Response, decode_body, encode_frame,
    encode_mismatch_frame, read_frame, write_frame,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

// ---------------------------------------------------------------------------
// Largest single allocation made by the current thread, so a test can show
// that a hostile length claim is refused before anything is allocated.

struct TrackingAlloc;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only a const-initialised thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// Runs `f` and returns its result with the largest allocation it made on
/// this thread.
fn largest_alloc_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST_ALLOC.with(|l| l.set(0));
    let r = f();
    (r, LARGEST_ALLOC.with(Cell::get))
}

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

fn frame_of(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Header {
        version,
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(body);
    out
}

fn split(frame: &[u8]) -> (Header, &[u8]) {
    let header = Header::parse(frame[..HEADER_LEN].try_into().unwrap()).expect("valid header");
    (header, &frame[HEADER_LEN..])
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

/// The numbers written in a text, as whole numbers.
fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn checkpoint_request() -> Request {
    Request::Checkpoint(DumpOptions::default())
}

// ---------------------------------------------------------------------------
// Strategies for every message.

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..2000).prop_map(String::from_iter),
    ]
}

fn job_id() -> impl Strategy<Value = JobId> {
    (any::<u64>(), any::<u64>()).prop_map(|(service, seq)| JobId { service, seq })
}

fn dump_options() -> impl Strategy<Value = DumpOptions> {
    any::<[bool; 4]>().prop_map(|b| DumpOptions {
        leave_running: b[0],
        tcp_established: b[1],
        file_locks: b[2],
        ext_unix_sk: b[3],
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        dump_options().prop_map(Request::Checkpoint),
        job_id().prop_map(Request::Result),
    ]
}

fn refusal_kind() -> impl Strategy<Value = RefusalKind> {
    prop_oneof![
        Just(RefusalKind::BadRequest),
        Just(RefusalKind::NotPermitted),
        Just(RefusalKind::BadDirectory),
        Just(RefusalKind::Busy),
        Just(RefusalKind::ShuttingDown),
        Just(RefusalKind::Invalid),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        job_id().prop_map(Response::Frozen),
        (refusal_kind(), text())
            .prop_map(|(kind, message)| Response::Refused(Refusal { kind, message })),
        (job_id(), any::<[u64; 7]>(), any::<u32>()).prop_map(|(job, n, processes)| {
            Response::Dumped(DumpReport {
                job,
                frozen_us: n[0],
                freezing_us: n[1],
                memdump_us: n[2],
                total_us: n[3],
                pages_written: n[4],
                bytes_written: n[5],
                sync_us: n[6],
                processes,
            })
        }),
        (prop::option::of(job_id()), text(), prop::option::of(text())).prop_map(
            |(job, message, log_file)| Response::DumpFailed(DumpFailure {
                job,
                message,
                log_file
            })
        ),
        job_id().prop_map(Response::UnknownJob),
    ]
}

/// Socket tests are slower; fewer cases still cover every variant many times.
fn socket_cases() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

// ---------------------------------------------------------------------------
// Header.

proptest! {
    #[test]
    fn header_round_trips_for_any_version_and_allowed_length(
        version in any::<u16>(),
        body_len in 0..=MAX_BODY,
    ) {
        let h = Header { version, body_len };
        let bytes = h.to_bytes();
        prop_assert_eq!(&bytes[..4], &MAGIC[..]);
        prop_assert_eq!(&bytes[4..6], &version.to_be_bytes()[..]);
        prop_assert_eq!(&bytes[6..10], &body_len.to_be_bytes()[..]);
        prop_assert_eq!(Header::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn header_with_wrong_magic_is_bad_magic(
        magic in any::<[u8; 4]>().prop_filter("not the magic", |m| *m != MAGIC),
        rest in any::<[u8; 6]>(),
    ) {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(&magic);
        bytes[4..].copy_from_slice(&rest);
        match Header::parse(&bytes) {
            Err(FrameError::BadMagic(m)) => prop_assert_eq!(m, magic),
            other => prop_assert!(false, "expected BadMagic, got {:?}", other),
        }
    }

    #[test]
    fn header_claiming_more_than_max_body_is_too_large(
        version in any::<u16>(),
        body_len in (MAX_BODY + 1)..=u32::MAX,
    ) {
        let bytes = Header { version, body_len }.to_bytes();
        match Header::parse(&bytes) {
            Err(FrameError::TooLarge(n)) => prop_assert_eq!(n, body_len),
            other => prop_assert!(false, "expected TooLarge, got {:?}", other),
        }
    }
}

#[test]
fn header_accepts_exactly_max_body_and_rejects_one_more() {
    let at_limit = Header {
        version: PROTOCOL_VERSION,
        body_len: MAX_BODY,
    };
    assert_eq!(Header::parse(&at_limit.to_bytes()).unwrap(), at_limit);
    let over = Header {
        version: PROTOCOL_VERSION,
        body_len: MAX_BODY + 1,
    };
    assert!(matches!(
        Header::parse(&over.to_bytes()),
        Err(FrameError::TooLarge(n)) if n == MAX_BODY + 1
    ));
}

// ---------------------------------------------------------------------------
// Bodies, without I/O.

proptest! {
    #[test]
    fn request_round_trips_through_encode_and_decode(req in request()) {
        let frame = encode_frame(&req);
        let (header, body) = split(&frame);
        prop_assert_eq!(header.version, PROTOCOL_VERSION);
        prop_assert_eq!(header.body_len as usize, body.len());
        prop_assert_eq!(decode_body::<Request>(header, body).unwrap(), req);
    }

    #[test]
    fn response_round_trips_through_encode_and_decode(resp in response()) {
        let frame = encode_frame(&resp);
        let (header, body) = split(&frame);
        prop_assert_eq!(header.version, PROTOCOL_VERSION);
        prop_assert_eq!(header.body_len as usize, body.len());
        prop_assert_eq!(decode_body::<Response>(header, body).unwrap(), resp);
    }

    #[test]
    fn trailing_bytes_after_a_valid_body_are_rejected_with_their_count(
        resp in response(),
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let frame = encode_frame(&resp);
        let mut body = frame[HEADER_LEN..].to_vec();
        body.extend_from_slice(&extra);
        let header = Header { version: PROTOCOL_VERSION, body_len: body.len() as u32 };
        match decode_body::<Response>(header, &body) {
            Err(FrameError::TrailingBytes(n)) => prop_assert_eq!(n, extra.len()),
            other => prop_assert!(false, "expected TrailingBytes, got {:?}", other),
        }
    }

    #[test]
    fn body_shorter_than_its_header_claims_is_truncated(
        req in request(),
        missing in 1usize..8,
    ) {
        let frame = encode_frame(&req);
        let (header, body) = split(&frame);
        let cut = body.len().saturating_sub(missing);
        prop_assert!(matches!(
            decode_body::<Request>(header, &body[..cut]),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_are_malformed_or_trailing(
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let header = Header { version: PROTOCOL_VERSION, body_len: body.len() as u32 };
        match decode_body::<Request>(header, &body) {
            Err(FrameError::Malformed(_) | FrameError::TrailingBytes(_)) => {}
            // Random bytes can spell a real message; then it must be one
            // that survives its own round trip.
            Ok(req) => {
                let again = encode_frame(&req);
                let (h, b) = split(&again);
                prop_assert_eq!(decode_body::<Request>(h, b).unwrap(), req);
            }
            Err(e) => prop_assert!(false, "unexpected error for a request body: {:?}", e),
        }
        match decode_body::<Response>(header, &body) {
            Err(FrameError::Malformed(_) | FrameError::TrailingBytes(_)) => {}
            Ok(resp) => {
                let again = encode_frame(&resp);
                let (h, b) = split(&again);
                prop_assert_eq!(decode_body::<Response>(h, b).unwrap(), resp);
            }
            Err(e) => prop_assert!(false, "unexpected error for a response body: {:?}", e),
        }
    }

    #[test]
    fn mutated_valid_bodies_never_panic_and_are_malformed_or_trailing(
        resp in response(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        // Random bytes rarely get past the first marker; corrupting a real
        // message reaches deeper into the decoder.
        let frame = encode_frame(&resp);
        let mut body = frame[HEADER_LEN..].to_vec();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let header = Header { version: PROTOCOL_VERSION, body_len: body.len() as u32 };
        let result = decode_body::<Response>(header, &body);
        prop_assert!(
            matches!(result, Ok(_) | Err(FrameError::Malformed(_) | FrameError::TrailingBytes(_))),
            "unexpected result {:?}", result
        );
    }
}

#[test]
fn empty_body_is_malformed() {
    let header = Header {
        version: PROTOCOL_VERSION,
        body_len: 0,
    };
    assert!(matches!(
        decode_body::<Request>(header, &[]),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        decode_body::<Response>(header, &[]),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn request_in_place_of_a_response_is_malformed() {
    let frame = encode_frame(&checkpoint_request());
    let (header, body) = split(&frame);
    assert!(matches!(
        decode_body::<Response>(header, body),
        Err(FrameError::Malformed(_))
    ));
}

/// Bodies that nest `depth` MessagePack containers in various places where
/// our messages can be made to recurse.
fn nested_bodies(depth: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // [[[[ ... nil ... ]]]] at the top.
    let mut arrays = vec![0x91u8; depth];
    arrays.push(0xc0);
    out.push(("nested arrays", arrays));

    // {nil: {nil: { ... nil }}} at the top.
    let mut maps = Vec::with_capacity(depth * 2 + 1);
    for _ in 0..depth {
        maps.extend_from_slice(&[0x81, 0xc0]);
    }
    maps.push(0xc0);
    out.push(("nested maps", maps));

    // {"Checkpoint": [[[[ ... ]]]]}: the nesting inside a known variant.
    let mut in_variant = vec![0x81, 0xaa];
    in_variant.extend_from_slice(b"Checkpoint");
    in_variant.extend(std::iter::repeat_n(0x91, depth));
    in_variant.push(0xc0);
    out.push(("nested arrays inside Checkpoint", in_variant));

    // {"Checkpoint": {"x": [[[[ ... ]]]]}} and the same in "DumpFailed": an
    // unknown struct field, whose value the deserializer skips recursively.
    // This is the shape that overflows a 256 KiB stack without a depth limit.
    for (what, variant) in [
        (
            "nested arrays in an unknown field of a request",
            &b"Checkpoint"[..],
        ),
        (
            "nested arrays in an unknown field of a response",
            &b"DumpFailed"[..],
        ),
    ] {
        let mut unknown_field = vec![0x81, 0xa0 | variant.len() as u8];
        unknown_field.extend_from_slice(variant);
        unknown_field.extend_from_slice(&[0x81, 0xa1, b'x']);
        unknown_field.extend(std::iter::repeat_n(0x91, depth));
        unknown_field.push(0xc0);
        out.push((what, unknown_field));
    }

    // {[[[[ ... ]]]]: nil}: nesting in the variant name's place.
    let mut in_key = vec![0x81];
    in_key.extend(std::iter::repeat_n(0x91, depth));
    in_key.extend_from_slice(&[0xc0, 0xc0]);
    out.push(("nested arrays as the variant name", in_key));

    out
}

#[test]
fn deeply_nested_bodies_are_rejected_without_overflowing_the_stack() {
    // 30_000 levels (60 KB of nested maps) is about as deep as a body under
    // MAX_BODY can go. Run on a thread with a small stack so that unbounded
    // recursion would show.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            for depth in [10_000, 30_000] {
                for (what, body) in nested_bodies(depth) {
                    assert!(body.len() <= MAX_BODY as usize);
                    let header = Header {
                        version: PROTOCOL_VERSION,
                        body_len: body.len() as u32,
                    };
                    let req = decode_body::<Request>(header, &body);
                    assert!(
                        matches!(req, Err(FrameError::Malformed(_))),
                        "{what} ({depth} deep) as a request: {req:?}"
                    );
                    let resp = decode_body::<Response>(header, &body);
                    assert!(
                        matches!(resp, Err(FrameError::Malformed(_))),
                        "{what} ({depth} deep) as a response: {resp:?}"
                    );
                }
            }
        })
        .unwrap()
        .join()
        .expect("decoder overflowed its stack or panicked on nested input");
}

// ---------------------------------------------------------------------------
// Version mismatch.

proptest! {
    #[test]
    fn frame_of_another_version_decodes_to_version_mismatch_naming_both(
        version in any::<u16>().prop_filter("another version", |v| *v != PROTOCOL_VERSION),
        message in "[ -~]{0,200}",
    ) {
        let frame = frame_of(version, message.as_bytes());
        let (header, body) = split(&frame);
        let err = decode_body::<Request>(header, body).unwrap_err();
        match &err {
            FrameError::VersionMismatch { ours, theirs, message: m } => {
                prop_assert_eq!(*ours, PROTOCOL_VERSION);
                prop_assert_eq!(*theirs, version);
                prop_assert_eq!(m, &message);
            }
            other => prop_assert!(false, "expected VersionMismatch, got {:?}", other),
        }
        let shown = err.to_string();
        let numbers = numbers_in(&shown);
        prop_assert!(numbers.contains(&u64::from(PROTOCOL_VERSION)), "{}", shown);
        prop_assert!(numbers.contains(&u64::from(version)), "{}", shown);
        prop_assert!(shown.contains(&message), "{}", shown);
    }
}

#[test]
fn version_mismatch_display_names_both_versions() {
    let frame = frame_of(99, b"");
    let (header, body) = split(&frame);
    let err = decode_body::<Response>(header, body).unwrap_err();
    let shown = err.to_string();
    assert!(matches!(
        err,
        FrameError::VersionMismatch { theirs: 99, .. }
    ));
    assert!(
        shown.contains(&format!("we speak {PROTOCOL_VERSION}")),
        "{shown}"
    );
    assert!(shown.contains("peer speaks 99"), "{shown}");
}

#[test]
fn version_mismatch_keeps_at_most_512_bytes_of_the_peers_text() {
    let long = "x".repeat(4000);
    let frame = frame_of(PROTOCOL_VERSION + 1, long.as_bytes());
    let (header, body) = split(&frame);
    match decode_body::<Request>(header, body) {
        Err(FrameError::VersionMismatch { message, .. }) => assert_eq!(message.len(), 512),
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn mismatch_frame_for_version_99_is_our_header_and_text_naming_both_versions() {
    let frame = encode_mismatch_frame(99);
    let (header, body) = split(&frame);
    assert_eq!(header.version, PROTOCOL_VERSION);
    assert_eq!(header.body_len as usize, body.len());
    let text = std::str::from_utf8(body).expect("mismatch body is UTF-8");
    let numbers = numbers_in(text);
    assert!(numbers.contains(&99), "{text}");
    assert!(numbers.contains(&u64::from(PROTOCOL_VERSION)), "{text}");

    // A peer of another version hands exactly this text to its user.
    let seen_by_peer = frame_of(PROTOCOL_VERSION.wrapping_add(1), body);
    let (h, b) = split(&seen_by_peer);
    match decode_body::<Request>(h, b) {
        Err(FrameError::VersionMismatch { message, .. }) => assert_eq!(message, text),
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
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
    let first = Response::Frozen(JobId { service: 1, seq: 2 });
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
    // Whatever write_frame does with too many fds (refuse them, or send
    // them), read_frame must not hand them out, and none may stay open.
    for count in 2..=8 {
        let file = tempfile::tempfile().unwrap();
        let id = identity(file.as_fd());
        let (a, b) = async_pair();
        let before = fds_referring_to(id);
        let fds = vec![file.as_fd(); count];
        let frame = encode_frame(&checkpoint_request());
        if async_io::block_on(write_frame(&a, &frame, &fds)).is_ok() {
            let got = read_one(&b);
            assert!(
                matches!(
                    got,
                    Err(FrameError::UnexpectedFds(_)) | Err(FrameError::ControlTruncated)
                ),
                "{count} fds: {got:?}"
            );
        }
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
