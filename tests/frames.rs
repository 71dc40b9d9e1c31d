//! The wire protocol of `selfdump::proto`, tested in memory: header and
//! body encoding, round trips, the decoder's answers to hostile or broken
//! input, and version mismatches. Frames over a real socket, with their
//! file descriptors, are in `tests/fd_passing.rs`.

mod frames_support;

use frames_support::*;
use proptest::prelude::*;
use selfdump::proto::{
    FrameError, HEADER_LEN, Header, MAGIC, MAX_BODY, PROTOCOL_VERSION, Request, Response,
    decode_body, encode_frame, encode_mismatch_frame,
};

/// The header and the body of an encoded frame.
fn split(frame: &[u8]) -> (Header, &[u8]) {
    let header = Header::parse(frame[..HEADER_LEN].try_into().unwrap()).expect("valid header");
    (header, &frame[HEADER_LEN..])
}

/// The numbers written in a text, as whole numbers.
fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
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
