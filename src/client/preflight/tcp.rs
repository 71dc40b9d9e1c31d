//! The TCP sockets of the tree: their state and addresses.
//!
//! Reading `/proc/PID/net/tcp{,6}` walks the kernel's whole connection
//! hash table on every `read` (milliseconds each on a machine with a big
//! table, even when it holds nothing), so it is the last resort. The
//! caller's own sockets are looked at directly: a copy of the fd
//! (`pidfd_getfd`) tells a listener (`SO_ACCEPTCONN`) or a never-connected
//! socket at once, and a connected one is asked for by address and cookie
//! (`inet_diag`). The table (`tcp_table.rs`) is read only for what is left
//! (sockets of other processes, a connection being set up).

use super::diag::{self, u32_at};
use super::tcp_table;
use super::tree::OpenFd;
use rustix::process::{PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

pub(super) const ESTABLISHED: u8 = 0x01;
pub(super) const SYN_SENT: u8 = 0x02;
pub(super) const SYN_RECV: u8 = 0x03;
pub(super) const CLOSE: u8 = 0x07;
pub(super) const LISTEN: u8 = 0x0A;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

pub(super) use tcp_table::{Family, TcpSocket};

/// A TCP socket fd of the tree.
pub(super) struct TcpFd<'a> {
    pub(super) fd: &'a OpenFd,
    pub(super) ino: u64,
    pub(super) family: Family,
}

/// The state and addresses of each of `fds`, by inode (those the kernel
/// does not know any more are left out).
pub(super) fn tcp_sockets(root: i32, fds: &[TcpFd<'_>]) -> HashMap<u64, TcpSocket> {
    let mut out = HashMap::new();
    // `/proc`'s number for this process (the fds' pids are `/proc`'s), and
    // the pid namespace's for `pidfd_open`: they differ under `selfdump run`
    let me = super::tree::own_pid();
    let pidfd = fds
        .iter()
        .any(|f| f.fd.pid == me)
        .then(|| pidfd_open(rustix::process::getpid(), PidfdFlags::empty()).ok())
        .flatten();
    let mut left = Vec::new();
    let mut queries = Vec::new();
    for f in fds {
        match pidfd.as_ref().filter(|_| f.fd.pid == me) {
            Some(pidfd) => match own_socket(pidfd, f) {
                Own::Known(sock) => {
                    out.insert(f.ino, sock);
                }
                Own::Ask(query) => queries.push((f, query)),
                Own::Unknown => left.push(f),
            },
            None => left.push(f),
        }
    }
    let asked: Vec<TcpQuery> = queries.iter().map(|(_, q)| *q).collect();
    let answers = inet_lookup(&asked).unwrap_or_else(|e| {
        log::debug!("preflight: inet_diag unavailable ({e}); reading the TCP tables");
        vec![None; asked.len()]
    });
    for ((f, _), answer) in queries.iter().zip(answers) {
        match answer {
            Some((ino, sock)) if ino == f.ino => {
                out.insert(ino, sock);
            }
            _ => left.push(f),
        }
    }
    if !left.is_empty() {
        let wanted: Vec<(u64, Family)> = left.iter().map(|f| (f.ino, f.family)).collect();
        tcp_table::read(root, &wanted, &mut out);
    }
    out
}

enum Own {
    Known(TcpSocket),
    Ask(TcpQuery),
    Unknown,
}

/// What a copy of one of this process's own TCP fds tells.
fn own_socket(pidfd: &OwnedFd, f: &TcpFd<'_>) -> Own {
    use rustix::net::{getpeername, getsockname, sockopt};
    let Ok(sock) = pidfd_getfd(pidfd, f.fd.fd, PidfdGetfdFlags::empty()) else {
        return Own::Unknown;
    };
    if rustix::fs::fstat(&sock).map(|s| s.st_ino) != Ok(f.ino) {
        return Own::Unknown; // closed (and the number reused) meanwhile
    }
    let Some(local) = getsockname(&sock)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
    else {
        return Own::Unknown;
    };
    let known = |state| {
        Own::Known(TcpSocket {
            state,
            local: local.to_string(),
            remote: String::new(),
        })
    };
    if sockopt::socket_acceptconn(&sock) == Ok(true) {
        return known(LISTEN);
    }
    match getpeername(&sock) {
        Ok(Some(remote)) => match (SocketAddr::try_from(remote), sockopt::socket_cookie(&sock)) {
            (Ok(remote), Ok(cookie)) => Own::Ask(TcpQuery {
                local,
                remote,
                cookie,
            }),
            _ => Own::Unknown,
        },
        // Not connected and never bound to a port: a fresh socket.
        _ if local.port() == 0 => known(CLOSE),
        // Bound, or a connection being set up (SYN_SENT): the table tells.
        _ => Own::Unknown,
    }
}
/// A TCP socket to find: its addresses and `SO_COOKIE`.
#[derive(Debug, Clone, Copy)]
struct TcpQuery {
    local: SocketAddr,
    remote: SocketAddr,
    cookie: u64,
}

/// The TCP sockets `queries` (by address, checked against the cookie), as
/// `(inode, socket)`; `None` for one the kernel did not find.
fn inet_lookup(queries: &[TcpQuery]) -> io::Result<Vec<Option<(u64, TcpSocket)>>> {
    let requests: Vec<Vec<u8>> = queries.iter().map(tcp_request).collect();
    let mut out = vec![None; queries.len()];
    diag::ask(&requests, false, |i, body| {
        if body.len() >= 72 {
            let family = body[0];
            let address = |port: usize, addr: usize| {
                let port = u16::from_be_bytes([body[port], body[port + 1]]);
                match family {
                    AF_INET => format!("{}:{port}", IpAddr::from(*sized::<4>(&body[addr..]))),
                    _ => format!("[{}]:{port}", IpAddr::from(*sized::<16>(&body[addr..]))),
                }
            };
            let sock = TcpSocket {
                state: body[1],
                local: address(4, 8),
                remote: address(6, 24),
            };
            out[i] = Some((u64::from(u32_at(body, 68)), sock));
        }
    })?;
    Ok(out)
}

fn tcp_request(q: &TcpQuery) -> Vec<u8> {
    let family = if q.local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut body = vec![family, IPPROTO_TCP, 0, 0];
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    body.extend_from_slice(&q.local.port().to_be_bytes());
    body.extend_from_slice(&q.remote.port().to_be_bytes());
    for addr in [q.local.ip(), q.remote.ip()] {
        let mut bytes = [0u8; 16];
        match addr {
            IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => bytes = a.octets(),
        }
        body.extend_from_slice(&bytes);
    }
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&(q.cookie as u32).to_ne_bytes());
    body.extend_from_slice(&((q.cookie >> 32) as u32).to_ne_bytes());
    body
}

/// The kernel's name for TCP state `state`.
pub(super) fn state_name(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "unknown state",
    }
}

fn sized<const N: usize>(b: &[u8]) -> &[u8; N] {
    b[..N].try_into().expect("length checked by the caller")
}
