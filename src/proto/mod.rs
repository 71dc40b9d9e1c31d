//! The wire protocol shared by client and service.
//!
//! Every message is one frame: a fixed 10-byte header (magic, protocol
//! version, body length) followed by a MessagePack body. The header layout
//! never changes between versions, so a peer that speaks another version can
//! still read it and answer with a plain UTF-8 explanation (see
//! [`FrameError::VersionMismatch`]). File descriptors travel as `SCM_RIGHTS`
//! with the frame's first bytes.

mod frame;
mod io;
mod messages;

/// Where the service listens unless told otherwise, and where the client
/// connects unless told otherwise (`SELFDUMP_SOCKET`, the options): one
/// path, for both sides.
pub const DEFAULT_SOCKET: &str = "/run/selfdump.sock";

pub use frame::{
    FrameError, HEADER_LEN, MAGIC, MAX_BODY, MAX_FDS, PROTOCOL_VERSION, decode_body, encode_frame,
    encode_mismatch_frame,
};
// The frame reader and writer and the parsed header are the client's and
// the service's internals; they stay reachable, hidden, for this crate's
// tests, benches and fuzzer.
#[doc(hidden)]
pub use frame::Header;
#[doc(hidden)]
pub use io::{Frame, read_frame, write_frame};
pub use messages::{
    DEFAULT_KEEP, DumpFailure, DumpOptions, DumpReport, FrozenNotice, JobId, MAX_TEXT, Refusal,
    RefusalKind, Request, Response, RestoreReport, RestoreRequest, clip,
};
