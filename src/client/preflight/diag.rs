//! The kernel's socket tables through `NETLINK_SOCK_DIAG`: the transport
//! (each question is one message, all of them go in one `send`, each gets
//! exactly one answer: the socket, or an error) and the unix sockets,
//! asked for by inode (`unix_diag`). TCP questions are in `tcp.rs`.

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, send, socket_with,
};
use std::collections::HashMap;
use std::io;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const AF_UNIX: u8 = 1;
/// More unix sockets than this are found with one dump of the table
/// rather than one question each (each question walks the table).
const MOST_EXACT: usize = 64;

/// A unix socket as `sock_diag` reports it.
#[derive(Debug, Clone)]
pub(super) struct UnixSocket {
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub(super) kind: u8,
    /// The address it is bound to (`@name` when abstract).
    pub(super) name: Option<String>,
    /// The inode of the socket it is connected to.
    pub(super) peer: Option<u64>,
}

/// The unix sockets `inodes` of this network namespace, with their names
/// and peers (`UDIAG_SHOW_NAME | UDIAG_SHOW_PEER`); sockets that no longer
/// exist (or live in another namespace) are left out.
pub(super) fn unix_sockets(inodes: &[u64]) -> io::Result<HashMap<u64, UnixSocket>> {
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_PEER: u32 = 4;
    let request = |ino: u64| {
        let mut body = vec![AF_UNIX, 0, 0, 0];
        body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        body.extend_from_slice(&(ino as u32).to_ne_bytes());
        body.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
        body.extend_from_slice(&[0xff; 8]); // no cookie
        body
    };
    let mut out = HashMap::new();
    let mut keep = |body: &[u8]| {
        if let Some((ino, sock)) = parse_unix(body) {
            out.insert(ino, sock);
        }
    };
    if inodes.len() > MOST_EXACT {
        ask(&[request(0)], true, |_, body| keep(body))?;
    } else {
        let requests: Vec<_> = inodes.iter().map(|&ino| request(ino)).collect();
        ask(&requests, false, |_, body| keep(body))?;
    }
    Ok(out)
}

fn parse_unix(body: &[u8]) -> Option<(u64, UnixSocket)> {
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_PEER: u16 = 2;
    let header = body.get(..16)?;
    let mut sock = UnixSocket {
        kind: header[1],
        name: None,
        peer: None,
    };
    let ino = u64::from(u32_at(header, 4));
    let mut attrs = &body[16..];
    while attrs.len() >= 4 {
        let alen = (u16_at(attrs, 0) as usize).min(attrs.len());
        if alen < 4 {
            break;
        }
        let data = &attrs[4..alen];
        match u16_at(attrs, 2) {
            UNIX_DIAG_NAME => sock.name = Some(socket_name(data)),
            UNIX_DIAG_PEER if data.len() >= 4 => sock.peer = Some(u64::from(u32_at(data, 0))),
            _ => {}
        }
        attrs = attrs.get((alen + 3) & !3..).unwrap_or(&[]);
    }
    Some((ino, sock))
}

/// A unix socket address as text: `@name` for an abstract one.
pub(super) fn socket_name(data: &[u8]) -> String {
    match data.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(data)
            .trim_end_matches('\0')
            .to_owned(),
    }
}

/// Sends `requests` (message bodies, numbered from 0 by their sequence
/// number) and hands each socket in the answers to `answer` with the
/// number of its request. For a dump (one request), reads until the end;
/// otherwise until each request got its answer. "No such socket" answers
/// are skipped; other errors fail the whole question.
pub(super) fn ask(
    requests: &[Vec<u8>],
    dump: bool,
    mut answer: impl FnMut(usize, &[u8]),
) -> io::Result<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let sock = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    send(&sock, &framed(requests, dump), SendFlags::empty())?;

    let mut left = requests.len();
    let mut buf = vec![0u8; 64 * 1024];
    while dump || left > 0 {
        let (n, _) = recv(&sock, &mut buf[..], RecvFlags::empty())?;
        let mut msgs = &buf[..n];
        if n == 0 {
            return Ok(());
        }
        while msgs.len() >= 16 {
            let len = (u32_at(msgs, 0) as usize).min(msgs.len());
            if len < 16 {
                return Ok(());
            }
            let (kind, seq) = (u16_at(msgs, 4), u32_at(msgs, 8) as usize);
            let body = &msgs[16..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = -(body.get(..4).map_or(0, |b| u32_at(b, 0) as i32));
                    let missing = errno == 0 || errno == rustix::io::Errno::NOENT.raw_os_error();
                    if dump || !missing {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    left -= 1;
                }
                SOCK_DIAG_BY_FAMILY if seq < requests.len() => {
                    answer(seq, body);
                    left = left.saturating_sub(1);
                }
                _ => {}
            }
            msgs = msgs.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }
    Ok(())
}

/// `requests` as netlink messages, numbered from 0.
fn framed(requests: &[Vec<u8>], dump: bool) -> Vec<u8> {
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    let mut msg = Vec::new();
    for (seq, body) in requests.iter().enumerate() {
        msg.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&(seq as u32).to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        msg.extend_from_slice(body);
    }
    msg
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

pub(super) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_names_get_an_at() {
        assert_eq!(socket_name(b"\0foo"), "@foo");
        assert_eq!(socket_name(b"/run/x.sock"), "/run/x.sock");
    }

    #[test]
    fn sock_diag_sees_a_socketpair_as_peers() {
        use std::os::fd::AsFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |s: &std::os::unix::net::UnixStream| rustix::fs::fstat(s.as_fd()).unwrap().st_ino;
        let found = unix_sockets(&[ino(&a), ino(&b), 1]).unwrap();
        assert_eq!(found[&ino(&a)].peer, Some(ino(&b)));
        assert_eq!(found[&ino(&b)].peer, Some(ino(&a)));
        assert_eq!(found.len(), 2, "inode 1 is no socket: {found:?}");
        // More than MOST_EXACT: one dump of the table instead.
        let inodes: Vec<u64> = (1..=MOST_EXACT as u64).chain([ino(&a)]).collect();
        let dumped = unix_sockets(&inodes).unwrap();
        assert_eq!(dumped[&ino(&a)].peer, Some(ino(&b)));
    }
}
