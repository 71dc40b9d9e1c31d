//! Frame header and body encoding, free of I/O so it can be fuzzed.

use serde::{Serialize, de::DeserializeOwned};
use std::fmt;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SDMP";
/// The protocol version this build speaks; peers must speak exactly this one.
pub const PROTOCOL_VERSION: u16 = 4;
/// Length of the fixed header: magic, version (u16), body length (u32), big-endian.
pub const HEADER_LEN: usize = 10;
/// Largest body a peer may announce; checked before anything is allocated.
pub const MAX_BODY: u32 = 64 * 1024;
/// Most file descriptors one message may carry (a checkpoint request carries one).
pub const MAX_FDS: usize = 1;
/// MessagePack nesting that a body may use; our messages need far less.
const MAX_DEPTH: usize = 16;

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of the sender.
    pub version: u16,
    /// Length of the body that follows, at most [`MAX_BODY`].
    pub body_len: u32,
}

/// Why bytes or fds from a peer were not a valid frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes were not [`MAGIC`]: the peer is not a selfdump peer.
    BadMagic([u8; 4]),
    /// The header announced a body larger than [`MAX_BODY`].
    TooLarge(u32),
    /// The peer speaks another protocol version; `message` is its own explanation, if any.
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
        /// The peer's plain-text explanation (may be empty).
        message: String,
    },
    /// The connection ended inside a frame.
    Truncated,
    /// The body was not a valid message of the expected type.
    Malformed(String),
    /// The body decoded but left bytes unread.
    TrailingBytes(usize),
    /// The message carried more file descriptors than it may (they were closed).
    UnexpectedFds(usize),
    /// The message carried fewer file descriptors than it must.
    MissingFd,
    /// The kernel truncated the control data (too many fds); whatever arrived was closed.
    ControlTruncated,
    /// Reading or writing the socket failed.
    Io(std::io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(
                f,
                "not a selfdump peer: frame starts with {m:02x?}, expected {MAGIC:02x?}"
            ),
            Self::TooLarge(n) => {
                write!(f, "frame body of {n} bytes exceeds the limit of {MAX_BODY}")
            }
            Self::VersionMismatch {
                ours,
                theirs,
                message,
            } => {
                write!(
                    f,
                    "protocol version mismatch: we speak {ours}, the peer speaks {theirs}"
                )?;
                if !message.is_empty() {
                    write!(f, " (peer says: {message})")?;
                }
                Ok(())
            }
            Self::Truncated => write!(f, "connection closed in the middle of a frame"),
            Self::Malformed(e) => write!(f, "malformed message body: {e}"),
            Self::TrailingBytes(n) => write!(f, "message body has {n} unexpected trailing bytes"),
            Self::UnexpectedFds(n) => {
                write!(f, "message carried {n} file descriptors it should not")
            }
            Self::MissingFd => write!(f, "message is missing its file descriptor"),
            Self::ControlTruncated => {
                write!(
                    f,
                    "too many file descriptors in one message (control data truncated)"
                )
            }
            Self::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl Header {
    /// Parses and checks a header: magic and length cap. The version is
    /// returned as is; [`decode_body`] enforces equality.
    ///
    /// ```
    /// use selfdump::proto::{Header, HEADER_LEN, PROTOCOL_VERSION};
    /// let h = Header { version: PROTOCOL_VERSION, body_len: 3 };
    /// assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
    /// assert!(Header::parse(&[0u8; HEADER_LEN]).is_err());
    /// ```
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let body_len = u32::from_be_bytes(bytes[6..10].try_into().expect("4 bytes"));
        if body_len > MAX_BODY {
            return Err(FrameError::TooLarge(body_len));
        }
        Ok(Self { version, body_len })
    }

    /// The header's wire form.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_be_bytes());
        out[6..10].copy_from_slice(&self.body_len.to_be_bytes());
        out
    }
}

/// Encodes a message as a whole frame (header and MessagePack body).
///
/// ```
/// use selfdump::proto::{encode_frame, Request, JobId};
/// let bytes = encode_frame(&Request::Result(JobId { service: 1, seq: 2 }));
/// assert_eq!(&bytes[..4], b"SDMP");
/// ```
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = rmp_serde::to_vec(msg).expect("protocol messages always serialize");
    assert!(
        body.len() <= MAX_BODY as usize,
        "outgoing message exceeds MAX_BODY"
    );
    frame_with_body(PROTOCOL_VERSION, &body)
}

/// Encodes the answer to a peer of another version: our header, then a plain
/// UTF-8 body every version can print.
pub fn encode_mismatch_frame(their_version: u16) -> Vec<u8> {
    let text = format!(
        "selfdump protocol version mismatch: you speak {their_version}, this side speaks \
         {PROTOCOL_VERSION}; upgrade the older of the two"
    );
    frame_with_body(PROTOCOL_VERSION, text.as_bytes())
}

fn frame_with_body(version: u16, body: &[u8]) -> Vec<u8> {
    let header = Header {
        version,
        body_len: body.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a body received under `header`. A body from another protocol
/// version is not decoded: it is that peer's plain-text explanation and
/// becomes [`FrameError::VersionMismatch`]. The body must be consumed whole.
///
/// ```
/// use selfdump::proto::*;
/// let frame = encode_frame(&Request::Result(JobId { service: 1, seq: 2 }));
/// let header = Header::parse(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
/// let msg: Request = decode_body(header, &frame[HEADER_LEN..]).unwrap();
/// assert_eq!(msg, Request::Result(JobId { service: 1, seq: 2 }));
/// ```
pub fn decode_body<T: DeserializeOwned>(header: Header, body: &[u8]) -> Result<T, FrameError> {
    if header.version != PROTOCOL_VERSION {
        let message = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(FrameError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: header.version,
            message,
        });
    }
    if body.len() != header.body_len as usize {
        return Err(FrameError::Truncated);
    }
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    de.set_max_depth(MAX_DEPTH);
    let msg = T::deserialize(&mut de).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let consumed = de.position() as usize;
    if consumed != body.len() {
        return Err(FrameError::TrailingBytes(body.len() - consumed));
    }
    Ok(msg)
}
