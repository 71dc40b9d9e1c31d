//! What in a process would make CRIU refuse to dump it, or make its images
//! fail to restore, found before anything is frozen.
//!
//! [`checkpoint`](crate::checkpoint) runs this first (unless
//! [`Options::skip_preflight`](crate::Options::skip_preflight)) and fails
//! with [`Error::Preflight`](crate::Error::Preflight) when CRIU would refuse;
//! `selfdump check --pid PID` prints the same list for another process.
//!
//! ```no_run
//! for finding in selfdump::preflight()? {
//!     eprintln!("{finding}");
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! What is looked at, for the process and every descendant (CRIU dumps the
//! whole tree): `/proc/PID/fd` and `/proc/PID/fdinfo`, the kernel's unix
//! socket table (`sock_diag`, which names each connection's peer),
//! `/proc/PID/net/tcp{,6}`, and `/proc/PID/status`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// CRIU's default `--ghost-limit`: deleted files up to this size are copied
/// into the images, bigger ones make the dump fail.
const GHOST_LIMIT: u64 = 1 << 20;

/// What kind of problem a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A stream (or seqpacket) unix socket connected to a process outside
    /// the dumped tree: CRIU cannot dump one half of a connection.
    UnixStreamToOutside,
    /// A datagram unix socket connected to a socket outside the tree
    /// (`/dev/log`, say): CRIU refuses it without `ext_unix_sk`.
    UnixDgramToOutside,
    /// A TCP connection (not listening, not closed): CRIU refuses it
    /// without `tcp_established`.
    TcpConnection,
    /// A file opened on a path that has since been deleted.
    DeletedFile,
    /// A regular file open for writing without `O_APPEND`: if its size
    /// changes after the checkpoint, CRIU refuses to restore it.
    WrittenWithoutAppend,
    /// An `io_uring` instance, which CRIU cannot dump.
    IoUring,
    /// The process is being traced (a debugger, strace): CRIU cannot seize it.
    Traced,
}

/// How bad a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The dump or restore may work, but something may not come back as it
    /// was (a restore can fail later). [`checkpoint`](crate::checkpoint)
    /// logs these and goes on, unless
    /// [`Options::strict_preflight`](crate::Options::strict_preflight).
    Risky,
    /// CRIU would refuse to dump the process: [`checkpoint`](crate::checkpoint)
    /// fails early.
    Refused,
}

/// One thing in the process tree that CRIU would refuse or mishandle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The process holding it.
    pub pid: i32,
    /// The file descriptor, when the finding is about one.
    pub fd: Option<i32>,
    /// What kind of problem.
    pub kind: Kind,
    /// How bad.
    pub severity: Severity,
    /// What it is (the socket's addresses, the file's path, ...).
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Refused => "refused",
            Severity::Risky => "risky",
        };
        write!(f, "[{severity}] pid {}", self.pid)?;
        if let Some(fd) = self.fd {
            write!(f, " fd {fd}")?;
        }
        write!(f, ": {}; {}", self.what, self.fix)
    }
}

/// Which process to look at, and which CRIU options the dump will use.
///
/// ```no_run
/// use selfdump::preflight::Preflight;
/// let findings = Preflight::new().pid(1234).tcp_established(true).run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pid: Option<i32>,
    tcp_established: bool,
    ext_unix_sk: bool,
}

impl Preflight {
    /// The calling process, dumped without the TCP and external unix socket options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Look at process `pid` (and its descendants) instead of the caller.
    pub fn pid(mut self, pid: i32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// The dump will use `tcp_established`: established connections are fine.
    pub fn tcp_established(mut self, on: bool) -> Self {
        self.tcp_established = on;
        self
    }

    /// The dump will use `ext_unix_sk`: datagram sockets connected outside are fine.
    pub fn ext_unix_sk(mut self, on: bool) -> Self {
        self.ext_unix_sk = on;
        self
    }

    /// Looks at the process tree and lists what CRIU would refuse or mishandle.
    ///
    /// Fails only when the process cannot be looked at (it does not exist,
    /// or its `/proc` entries are not readable by this process).
    pub fn run(&self) -> io::Result<Vec<Finding>> {
        let root = self
            .pid
            .unwrap_or_else(|| rustix::process::getpid().as_raw_nonzero().get());
        let tree = process_tree(root)?;
        let mut fds = Vec::new();
        let mut findings = Vec::new();
        for &pid in &tree {
            if let Some(tracer) = tracer(pid) {
                findings.push(Finding {
                    pid,
                    fd: None,
                    kind: Kind::Traced,
                    severity: Severity::Refused,
                    what: format!("traced by process {tracer} ({})", comm(tracer)),
                    fix: "detach the debugger or strace first: CRIU must trace the process itself"
                        .into(),
                });
            }
            match open_fds(pid) {
                Ok(list) => fds.extend(list),
                Err(e) if pid == root => return Err(e),
                Err(_) => {} // a descendant that just exited
            }
        }
        let sockets: BTreeSet<u64> = fds.iter().filter_map(|f| f.socket).collect();
        let unix = match unix_sockets() {
            Ok(u) => u,
            Err(e) => {
                log::debug!("preflight: sock_diag unavailable ({e}); unix peers not checked");
                HashMap::new()
            }
        };
        let tcp = tcp_sockets(root);
        for fd in &fds {
            if let Some(ino) = fd.socket {
                if let Some(sock) = unix.get(&ino) {
                    self.check_unix(fd, sock, &sockets, &unix, &mut findings);
                } else if let Some(conn) = tcp.get(&ino) {
                    self.check_tcp(fd, conn, &mut findings);
                }
                continue;
            }
            check_file(fd, &mut findings);
        }
        findings.sort_by_key(|f| (std::cmp::Reverse(f.severity), f.pid, f.fd));
        Ok(findings)
    }

    fn check_unix(
        &self,
        fd: &OpenFd,
        sock: &UnixSocket,
        tree_sockets: &BTreeSet<u64>,
        all: &HashMap<u64, UnixSocket>,
        out: &mut Vec<Finding>,
    ) {
        let Some(peer) = sock.peer.filter(|&p| p != 0) else {
            return;
        };
        if tree_sockets.contains(&peer) {
            return;
        }
        let peer_name = all
            .get(&peer)
            .and_then(|p| p.name.clone())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let own_name = sock
            .name
            .as_ref()
            .map(|n| format!(" bound to {n}"))
            .unwrap_or_default();
        let holders = holders_of(peer);
        let dgram = sock.kind == libc_sock::DGRAM;
        if dgram && self.ext_unix_sk {
            return;
        }
        let what = format!(
            "{} unix socket{own_name} connected to socket {peer}{peer_name} held outside the \
             dumped tree{holders}",
            match sock.kind {
                libc_sock::DGRAM => "datagram",
                libc_sock::SEQPACKET => "seqpacket",
                _ => "stream",
            },
        );
        out.push(if dgram {
            Finding {
                pid: fd.pid,
                fd: Some(fd.fd),
                kind: Kind::UnixDgramToOutside,
                severity: Severity::Refused,
                what,
                fix: "set Options::ext_unix_sk(true) (the restored copy reconnects by name), or \
                      close it before the checkpoint"
                    .into(),
            }
        } else {
            Finding {
                pid: fd.pid,
                fd: Some(fd.fd),
                kind: Kind::UnixStreamToOutside,
                severity: Severity::Refused,
                what,
                fix: "CRIU cannot dump one half of a connection: close it before the checkpoint \
                      and reconnect after (a selfdump::Resource hook does both)"
                    .into(),
            }
        });
    }

    fn check_tcp(&self, fd: &OpenFd, conn: &TcpSocket, out: &mut Vec<Finding>) {
        const ESTABLISHED: u8 = 0x01;
        const SYN_SENT: u8 = 0x02;
        const SYN_RECV: u8 = 0x03;
        const CLOSE: u8 = 0x07;
        const LISTEN: u8 = 0x0A;
        if matches!(conn.state, LISTEN | CLOSE) {
            return;
        }
        let connecting = matches!(conn.state, SYN_SENT | SYN_RECV);
        if self.tcp_established && !connecting {
            return;
        }
        let what = format!(
            "TCP connection {} -> {} ({})",
            conn.local,
            conn.remote,
            tcp_state_name(conn.state)
        );
        let fix = if connecting {
            "CRIU cannot dump a connection being set up: wait until it is established or close it"
        } else if conn.state == ESTABLISHED {
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
}

fn check_file(fd: &OpenFd, out: &mut Vec<Finding>) {
    let link = fd.target.to_string_lossy();
    if link == "anon_inode:[io_uring]" {
        out.push(Finding {
            pid: fd.pid,
            fd: Some(fd.fd),
            kind: Kind::IoUring,
            severity: Severity::Refused,
            what: "an io_uring instance".into(),
            fix: "CRIU cannot dump io_uring: close the ring before the checkpoint and set it up \
                  again after (a selfdump::Resource hook)"
                .into(),
        });
        return;
    }
    if !link.starts_with('/') || link.starts_with("/memfd:") {
        return; // pipes, anonymous inodes, memfds: CRIU handles them
    }
    let meta = std::fs::metadata(format!("/proc/{}/fd/{}", fd.pid, fd.fd));
    let regular = meta.as_ref().is_ok_and(|m| m.is_file());
    if let Some(path) = link.strip_suffix(" (deleted)") {
        if !regular {
            return;
        }
        let size = meta.map(|m| m.len()).unwrap_or(0);
        let (severity, fix) = if size > GHOST_LIMIT {
            (
                Severity::Refused,
                format!(
                    "CRIU copies deleted files into the images only up to {GHOST_LIMIT} bytes: \
                     close it before the checkpoint"
                ),
            )
        } else {
            (
                Severity::Risky,
                "CRIU copies its content into the images and a restored copy gets that copy, \
                 not a file anyone else sees: close it before the checkpoint if that matters"
                    .to_owned(),
            )
        };
        out.push(Finding {
            pid: fd.pid,
            fd: Some(fd.fd),
            kind: Kind::DeletedFile,
            severity,
            what: format!("file {path} ({size} bytes) is deleted but still open"),
            fix,
        });
        return;
    }
    const O_ACCMODE: u32 = 0o3;
    const O_APPEND: u32 = 0o2000;
    let writable = matches!(fd.flags & O_ACCMODE, 1 | 2);
    if regular && writable && fd.flags & O_APPEND == 0 {
        out.push(Finding {
            pid: fd.pid,
            fd: Some(fd.fd),
            kind: Kind::WrittenWithoutAppend,
            severity: Severity::Risky,
            what: format!("regular file {link} is open for writing without O_APPEND"),
            fix: "if its size changes after the checkpoint, restore fails (\"File ... has bad \
                  size\"): open logs with O_APPEND (`>>` in a shell), or close the file before \
                  the checkpoint and reopen it after"
                .into(),
        });
    }
}

/// One open file descriptor of a process in the tree.
#[derive(Debug)]
struct OpenFd {
    pid: i32,
    fd: i32,
    target: PathBuf,
    /// The inode, when the fd is a socket.
    socket: Option<u64>,
    /// `flags:` of fdinfo (octal in the file).
    flags: u32,
}

fn open_fds(pid: i32) -> io::Result<Vec<OpenFd>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        let socket = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok());
        let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            })
            .unwrap_or(0);
        out.push(OpenFd {
            pid,
            fd,
            target,
            socket,
            flags,
        });
    }
    Ok(out)
}

/// `root` and its descendants (every thread's children).
fn process_tree(root: i32) -> io::Result<Vec<i32>> {
    std::fs::metadata(format!("/proc/{root}"))
        .map_err(|e| io::Error::new(e.kind(), format!("process {root}: {e}")))?;
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let pid = tree[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !tree.contains(&child) {
                    tree.push(child);
                }
            }
        }
    }
    Ok(tree)
}

fn tracer(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    (tracer != 0).then_some(tracer)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Processes holding socket `ino`, as " (held by pid N (name), ...)".
fn holders_of(ino: u64) -> String {
    let want = PathBuf::from(format!("socket:[{ino}]"));
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want))
        {
            found.push(format!("pid {pid} ({})", comm(pid)));
        }
        if found.len() >= 3 {
            break;
        }
    }
    if found.is_empty() {
        String::new()
    } else {
        format!(" by {}", found.join(", "))
    }
}

mod libc_sock {
    pub const DGRAM: u8 = 2;
    pub const SEQPACKET: u8 = 5;
}

/// A unix socket as `sock_diag` reports it.
#[derive(Debug, Clone)]
struct UnixSocket {
    kind: u8,
    name: Option<String>,
    peer: Option<u64>,
}

/// Every unix socket of this network namespace, by inode, with its peer
/// (`NETLINK_SOCK_DIAG`, `UDIAG_SHOW_NAME | UDIAG_SHOW_PEER`).
fn unix_sockets() -> io::Result<HashMap<u64, UnixSocket>> {
    use rustix::net::{
        AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, send,
        socket_with,
    };
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const AF_UNIX: u8 = 1;
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_PEER: u16 = 2;

    let sock = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.extend_from_slice(&[AF_UNIX, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    send(&sock, &req, SendFlags::empty())?;

    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, _) = recv(&sock, &mut buf[..], RecvFlags::empty())?;
        if n == 0 {
            return Ok(out);
        }
        let mut msgs = &buf[..n];
        while msgs.len() >= 16 {
            let len = (u32_at(msgs, 0) as usize).min(msgs.len());
            let kind = u16_at(msgs, 4);
            if len < 16 {
                return Ok(out);
            }
            let body = &msgs[16..len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = body.get(..4).map_or(0, |b| u32_at(b, 0) as i32);
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY if body.len() >= 16 => {
                    let mut sock = UnixSocket {
                        kind: body[1],
                        name: None,
                        peer: None,
                    };
                    let ino = u64::from(u32_at(body, 4));
                    let mut attrs = &body[16..];
                    while attrs.len() >= 4 {
                        let alen = (u16_at(attrs, 0) as usize).min(attrs.len());
                        if alen < 4 {
                            break;
                        }
                        let data = &attrs[4..alen];
                        match u16_at(attrs, 2) {
                            UNIX_DIAG_NAME => sock.name = Some(socket_name(data)),
                            UNIX_DIAG_PEER if data.len() >= 4 => {
                                sock.peer = Some(u64::from(u32_at(data, 0)))
                            }
                            _ => {}
                        }
                        attrs = attrs.get((alen + 3) & !3..).unwrap_or(&[]);
                    }
                    out.insert(ino, sock);
                }
                _ => {}
            }
            let next = (len + 3) & !3;
            msgs = msgs.get(next..).unwrap_or(&[]);
        }
    }
}

fn socket_name(data: &[u8]) -> String {
    match data.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(data)
            .trim_end_matches('\0')
            .to_owned(),
    }
}

/// A TCP socket from `/proc/PID/net/tcp{,6}`.
#[derive(Debug, Clone)]
struct TcpSocket {
    state: u8,
    local: String,
    remote: String,
}

fn tcp_sockets(pid: i32) -> HashMap<u64, TcpSocket> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(ino)) =
                (f.get(1), f.get(2), f.get(3), f.get(9))
            else {
                continue;
            };
            let (Ok(state), Ok(ino)) = (u8::from_str_radix(state, 16), ino.parse::<u64>()) else {
                continue;
            };
            if ino == 0 {
                continue;
            }
            out.insert(
                ino,
                TcpSocket {
                    state,
                    local: tcp_address(local),
                    remote: tcp_address(remote),
                },
            );
        }
    }
    out
}

/// `0100007F:1F90` -> `127.0.0.1:8080`; IPv6 as `[addr]:port`.
fn tcp_address(hex: &str) -> String {
    let Some((addr, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    let words: Option<Vec<[u8; 4]>> = (0..addr.len() / 8)
        .map(|i| {
            u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16)
                .ok()
                .map(u32::to_le_bytes)
        })
        .collect();
    match words.as_deref() {
        Some([w]) => format!("{}:{port}", std::net::Ipv4Addr::from(*w)),
        Some(ws) if ws.len() == 4 => {
            let mut b = [0u8; 16];
            for (i, w) in ws.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
        }
        _ => hex.to_owned(),
    }
}

fn tcp_state_name(state: u8) -> &'static str {
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

/// Lists what in the calling process (and its children) would make CRIU
/// refuse to dump it or fail to restore it, for a dump without the TCP and
/// external unix socket options. See [`Preflight`] for those and for other
/// processes.
pub fn preflight() -> io::Result<Vec<Finding>> {
    Preflight::new().run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_are_readable() {
        assert_eq!(tcp_address("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(
            tcp_address("00000000000000000000000001000000:0016"),
            "[::1]:22"
        );
    }

    #[test]
    fn abstract_names_get_an_at() {
        assert_eq!(socket_name(b"\0foo"), "@foo");
        assert_eq!(socket_name(b"/run/x.sock"), "/run/x.sock");
    }

    #[test]
    fn sock_diag_sees_a_socketpair_as_peers() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| {
            use std::os::fd::AsFd;
            rustix::fs::fstat(s.as_fd()).unwrap().st_ino
        };
        let all = unix_sockets().unwrap();
        assert_eq!(all[&ino(&a)].peer, Some(ino(&b)));
        assert_eq!(all[&ino(&b)].peer, Some(ino(&a)));
    }
}
