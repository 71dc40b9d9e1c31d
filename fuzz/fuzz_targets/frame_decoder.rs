//! Feeds arbitrary bytes to the frame decoder: the first `HEADER_LEN` bytes
//! to `Header::parse`, the rest as a body to `decode_body` for both message
//! types. Nothing here may panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selfdump::proto::{HEADER_LEN, Header, PROTOCOL_VERSION, Request, Response, decode_body};

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };

    // The header exactly as a peer sent it (magic, version and length checks).
    if let Ok(header) = Header::parse(head) {
        let _ = decode_body::<Request>(header, body);
        let _ = decode_body::<Response>(header, body);
    }

    // The body under a header that passes, with the length the body really
    // has, so the MessagePack decoder sees every input (not only those whose
    // header happens to have the right magic and length).
    if let Ok(body_len) = u32::try_from(body.len()) {
        for version in [PROTOCOL_VERSION, u16::from_be_bytes([head[4], head[5]])] {
            let header = Header { version, body_len };
            let _ = decode_body::<Request>(header, body);
            let _ = decode_body::<Response>(header, body);
        }
    }
});
