//! What a failed connect to the service means for the user: no service
//! there, a service this uid may not reach, or a service too busy to take
//! one more connection.

use super::Error;
use crate::proto::RefusalKind;
use std::io;
use std::path::Path;

/// The error a failed `connect` to `socket` is.
pub(super) fn failed(socket: &Path, source: io::Error) -> Error {
    use rustix::io::Errno;
    match Errno::from_io_error(&source) {
        // the socket's mode (or a directory on the way) keeps this uid out
        Some(Errno::ACCESS) => Error::SocketDenied {
            socket: socket.to_path_buf(),
            uid: rustix::process::geteuid().as_raw(),
            service_listens: listens(socket),
            source,
        },
        // a full listen queue: the service is there, and behind
        // (async-io waits out EAGAIN, then finds the socket unconnected)
        Some(Errno::AGAIN | Errno::NOTCONN) => Error::Refused {
            kind: RefusalKind::Busy,
            message: format!(
                "the selfdump service at {} has too many connections waiting to be \
                 accepted ({source}); retry later",
                socket.display()
            ),
        },
        _ => Error::NoService {
            socket: socket.to_path_buf(),
            source,
        },
    }
}

/// Whether a socket listens at `path`, as the kernel's table of unix
/// sockets (`/proc/net/unix`, readable by everyone) names it.
fn listens(path: &Path) -> bool {
    // __SO_ACCEPTCON: a listening socket
    const LISTENING: &str = "00010000";
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    let absolute = std::path::absolute(path).ok();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && fields[3] == LISTENING
            && (fields[7] == wanted
                || absolute
                    .as_deref()
                    .is_some_and(|a| Path::new(fields[7]) == a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_in_the_kernels_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(!listens(&path));
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(listens(&path));
    }
}
