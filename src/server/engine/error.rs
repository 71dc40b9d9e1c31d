//! Why a dump did not succeed.

use std::fmt;
use std::io;
use std::time::Duration;

/// Why a dump did not succeed.
#[derive(Debug)]
pub enum EngineError {
    /// `criu swrk` could not be started or spoken to.
    Io(io::Error),
    /// CRIU broke its protocol.
    Protocol(String),
    /// CRIU reported failure (its first error message, if any).
    Failed(Option<String>),
    /// The freeze hook refused the frozen tree.
    Vetoed(String),
    /// The dump took longer than allowed and CRIU was killed.
    TimedOut(Duration),
    /// CRIU died in the middle of the dump (killed, or it crashed).
    Died,
    /// CRIU was killed by this signal in the middle of the dump.
    Killed(i32),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "could not run criu: {e}"),
            Self::Protocol(e) => write!(f, "criu broke its RPC protocol: {e}"),
            Self::Failed(Some(m)) => write!(f, "criu dump failed: {m}"),
            Self::Failed(None) => write!(f, "criu dump failed"),
            Self::Vetoed(why) => write!(f, "dump refused after the freeze: {why}"),
            Self::TimedOut(d) => {
                write!(
                    f,
                    "dump exceeded its time limit of {d:?}; it was abandoned and the process runs on"
                )
            }
            Self::Died => write!(
                f,
                "criu died in the middle of the dump; the process was left running"
            ),
            Self::Killed(signal) => write!(
                f,
                "criu was killed by signal {signal} ({}) in the middle of the dump; the \
                 process was left running",
                signal_name(*signal)
            ),
        }
    }
}

/// A signal's name, for messages.
fn signal_name(signal: i32) -> String {
    match rustix::process::Signal::from_named_raw(signal) {
        Some(s) => format!("{s:?}")
            .trim_matches('"')
            .replace("Signal::", "SIG"),
        None => format!("signal {signal}"),
    }
}

impl From<io::Error> for EngineError {
    /// An error on CRIU's channel that says its other end is gone is CRIU
    /// gone ([`Self::Died`], then [`Self::Killed`] once its status says
    /// so): an answer sent just as CRIU was killed fails with `EPIPE`.
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Self::Died,
            _ => Self::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_whose_other_end_is_gone_is_criu_gone() {
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::ConnectionReset] {
            assert!(matches!(
                EngineError::from(io::Error::from(kind)),
                EngineError::Died
            ));
        }
        assert!(matches!(
            EngineError::from(io::Error::from(io::ErrorKind::NotFound)),
            EngineError::Io(_)
        ));
    }
}
