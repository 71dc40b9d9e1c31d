//! systemd integration without libsystemd: socket activation (`LISTEN_PID`,
//! `LISTEN_FDS`) and readiness (`sd_notify`'s datagram to `$NOTIFY_SOCKET`).
//! Any supervisor that speaks these two conventions works the same way.
//!
//! ```no_run
//! use selfdump::server::{Server, systemd};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // SAFETY: first thing in `main`, before any other thread exists.
//! let server = match unsafe { systemd::listener() }? {
//!     Some(listener) => Server::builder().listener(listener)?,
//!     None => Server::builder().bind("/run/selfdump.sock")?,
//! };
//! systemd::notify("READY=1")?;
//! async_io::block_on(server.run())?;
//! # Ok(()) }
//! ```

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

/// The first fd passed by socket activation.
const LISTEN_FDS_START: i32 = 3;

/// The fds passed by socket activation, if `LISTEN_PID` names this process;
/// empty otherwise. Takes them over: marks them close-on-exec and removes
/// the `LISTEN_*` variables, so children do not take them for theirs.
///
/// # Safety
///
/// Call it once, before any other thread exists (first thing in `main`):
/// it removes environment variables, which is unsound while another
/// thread may read the environment, and it takes ownership of the fds
/// the variables name, which nothing else in the process may own.
pub unsafe fn listen_fds() -> io::Result<Vec<OwnedFd>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let ours = pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    if !ours {
        return Ok(Vec::new());
    }
    let count: i32 = count.and_then(|c| c.trim().parse().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "LISTEN_PID is set for this process but LISTEN_FDS is not a number",
        )
    })?;
    // SAFETY: no other thread exists yet (this function's contract).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut fds = Vec::new();
    for raw in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count.max(0)) {
        // SAFETY: by the socket activation protocol, fds 3..3+LISTEN_FDS
        // are open and handed to this process, which owns them from now on
        // (nothing else took them: this function's contract).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        fds.push(fd);
    }
    Ok(fds)
}

/// The listening unix stream socket passed by socket activation, if any.
/// Fails if the first passed fd is not one (a `ListenStream=` with a path
/// in the `.socket` unit); extra fds are closed.
///
/// # Safety
///
/// As for [`listen_fds`]: once, before any other thread exists.
pub unsafe fn listener() -> io::Result<Option<UnixListener>> {
    // SAFETY: passed on to our caller.
    let mut fds = unsafe { listen_fds() }?.into_iter();
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    let extra = fds.count();
    if extra > 0 {
        log::warn!(
            "socket activation passed {} fds; using the first",
            extra + 1
        );
    }
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let wrong = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket activation: fd 3 is {what}, not a listening unix stream socket"),
        )
    };
    let family = rustix::net::getsockname(&fd)
        .map_err(|e| wrong(format!("not a socket ({e})")))?
        .address_family();
    if family != AddressFamily::UNIX {
        return Err(wrong(format!("a socket of family {family:?}")));
    }
    if sockopt::socket_type(&fd)? != SocketType::STREAM {
        return Err(wrong("not a stream socket".into()));
    }
    if !sockopt::socket_acceptconn(&fd)? {
        return Err(wrong("not listening".into()));
    }
    Ok(Some(UnixListener::from(fd)))
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to the service
/// manager at `$NOTIFY_SOCKET`. Returns whether one was there to tell.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        Some((b'/', _)) => SocketAddr::from_pathname(&path)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={path:?} is neither a path nor an abstract name"),
            ));
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}
