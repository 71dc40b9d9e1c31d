//! Socket fds: which protocol each one is (the socket's
//! `system.sockprotoname`), unix sockets connected outside the tree, TCP
//! connections.

use super::diag::{self, UnixSocket};
use super::tcp::{self, Family, TcpFd, TcpSocket};
use super::tree::{OpenFd, holders_of};
use super::{Finding, Kind, Preflight, Severity};
use std::collections::{BTreeSet, HashMap};

const SOCK_DGRAM: u8 = 2;
const SOCK_SEQPACKET: u8 = 5;

/// What the kernel says about the tree's sockets.
pub(super) struct Sockets {
    /// Every socket inode the tree holds.
    tree: BTreeSet<u64>,
    unix: HashMap<u64, UnixSocket>,
    tcp: HashMap<u64, TcpSocket>,
}

/// A socket's protocol family, as far as preflight cares.
enum Protocol {
    Unix,
    Tcp(Family),
    Other,
    /// The kernel did not say (the fd closed meanwhile, say): try both.
    Unknown,
}

fn protocol(fd: &OpenFd) -> Protocol {
    let path = crate::procfs::fd_of(fd.pid, fd.fd);
    let mut buf = [0u8; 32];
    let Ok(n) = rustix::fs::getxattr(path, "system.sockprotoname", &mut buf[..]) else {
        return Protocol::Unknown;
    };
    match buf[..n].split(|&b| b == 0).next().unwrap_or_default() {
        name if name.starts_with(b"UNIX") => Protocol::Unix,
        b"TCP" => Protocol::Tcp(Family::Ipv4),
        b"TCPv6" => Protocol::Tcp(Family::Ipv6),
        _ => Protocol::Other,
    }
}

impl Sockets {
    /// Asks the kernel about the sockets among `fds` (of the tree of `root`).
    pub(super) fn look_up(root: i32, fds: &[OpenFd]) -> Self {
        let mut unix = Vec::new();
        let mut tcp = Vec::new();
        for fd in fds {
            let Some(ino) = fd.socket else { continue };
            match protocol(fd) {
                Protocol::Unix => unix.push(ino),
                Protocol::Tcp(family) => tcp.push(TcpFd { fd, ino, family }),
                Protocol::Other => {}
                Protocol::Unknown => {
                    unix.push(ino);
                    tcp.push(TcpFd {
                        fd,
                        ino,
                        family: Family::Unknown,
                    });
                }
            }
        }
        let unix = diag::unix_sockets(&unix).unwrap_or_else(|e| {
            log::debug!("preflight: sock_diag unavailable ({e}); unix peers not checked");
            HashMap::new()
        });
        tcp.retain(|t| !unix.contains_key(&t.ino));
        let tcp = if tcp.is_empty() {
            HashMap::new()
        } else {
            tcp::tcp_sockets(root, &tcp)
        };
        Self {
            tree: fds.iter().filter_map(|f| f.socket).collect(),
            unix,
            tcp,
        }
    }

    /// Adds the findings about `fd`, socket `ino`.
    pub(super) fn check(&self, options: &Preflight, fd: &OpenFd, ino: u64, out: &mut Vec<Finding>) {
        if let Some(sock) = self.unix.get(&ino) {
            self.check_unix(options, fd, sock, out);
        } else if let Some(conn) = self.tcp.get(&ino) {
            check_tcp(options, fd, conn, out);
        }
    }

    fn check_unix(
        &self,
        options: &Preflight,
        fd: &OpenFd,
        sock: &UnixSocket,
        out: &mut Vec<Finding>,
    ) {
        let Some(peer) = sock.peer.filter(|&p| p != 0) else {
            return;
        };
        let dgram = sock.kind == SOCK_DGRAM;
        if self.tree.contains(&peer) || dgram && options.ext_unix_sk {
            return;
        }
        let peer_name = match self.unix.get(&peer) {
            Some(p) => p.name.clone(),
            None => diag::unix_sockets(&[peer])
                .ok()
                .and_then(|mut found| found.remove(&peer))
                .and_then(|p| p.name),
        }
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
        let own_name = sock
            .name
            .as_ref()
            .map(|n| format!(" bound to {n}"))
            .unwrap_or_default();
        let holders = holders_of(peer);
        let what = format!(
            "{} unix socket{own_name} connected to socket {peer}{peer_name} held outside the \
             dumped tree{holders}",
            match sock.kind {
                SOCK_DGRAM => "datagram",
                SOCK_SEQPACKET => "seqpacket",
                _ => "stream",
            },
        );
        let (kind, fix) = if dgram {
            (
                Kind::UnixDgramToOutside,
                "set Options::ext_unix_sk(true) (the restored copy reconnects by name), or close \
                 it before the checkpoint",
            )
        } else {
            (
                Kind::UnixStreamToOutside,
                "CRIU cannot dump one half of a connection: close it before the checkpoint and \
                 reconnect after (a selfdump::Resource hook does both)",
            )
        };
        out.push(Finding {
            pid: fd.pid,
            fd: Some(fd.fd),
            kind,
            severity: Severity::Refused,
            what,
            fix: fix.into(),
        });
    }
}

fn check_tcp(options: &Preflight, fd: &OpenFd, conn: &TcpSocket, out: &mut Vec<Finding>) {
    if matches!(conn.state, tcp::LISTEN | tcp::CLOSE) {
        return;
    }
    let connecting = matches!(conn.state, tcp::SYN_SENT | tcp::SYN_RECV);
    if options.tcp_established && !connecting {
        return;
    }
    let what = format!(
        "TCP connection {} -> {} ({})",
        conn.local,
        conn.remote,
        tcp::state_name(conn.state)
    );
    let fix = if connecting {
        "CRIU cannot dump a connection being set up: wait until it is established or close it"
    } else if conn.state == tcp::ESTABLISHED {
        "set Options::tcp_established(true) to dump it (the peer must tolerate the pause), \
         or close it before the checkpoint and reconnect after (a selfdump::Resource hook)"
    } else {
        "set Options::tcp_established(true) to dump a closing connection, or wait until it is closed"
    };
    out.push(Finding {
        pid: fd.pid,
        fd: Some(fd.fd),
        kind: Kind::TcpConnection,
        severity: Severity::Refused,
        what,
        fix: fix.into(),
    });
}
