//! The last resort for TCP sockets: `/proc/ROOT/net/tcp{,6}`, read in big
//! reads (the kernel walks its whole connection table again for each
//! `read`) and only until the inodes looked for are found.

use crate::procfs::PROC;
use std::collections::{HashMap, HashSet};
use std::io::Read;

/// A TCP socket: its state (`TCP_ESTABLISHED` = 1, ...) and addresses.
#[derive(Debug, Clone)]
pub(super) struct TcpSocket {
    pub(super) state: u8,
    pub(super) local: String,
    pub(super) remote: String,
}

/// The address family of a TCP socket, which says in which table it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// `/proc/net/tcp`.
    Ipv4,
    /// `/proc/net/tcp6`.
    Ipv6,
    /// Not known: in either.
    Unknown,
}

/// Reads `/proc/ROOT/net/tcp{,6}` (only the ones needed) in big reads,
/// until every socket of `wanted` (inode, family) is found.
pub(super) fn read(root: i32, wanted: &[(u64, Family)], out: &mut HashMap<u64, TcpSocket>) {
    let mut want: HashSet<u64> = wanted.iter().map(|(ino, _)| *ino).collect();
    for (file, family) in [("tcp", Family::Ipv4), ("tcp6", Family::Ipv6)] {
        let in_it = |f: Family| f == family || f == Family::Unknown;
        if want.is_empty() || !wanted.iter().any(|(_, f)| in_it(*f)) {
            continue;
        }
        let Ok(mut table) = std::fs::File::open(PROC.path(root, &format!("net/{file}"))) else {
            continue;
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut text = Vec::new();
        while let Ok(n @ 1..) = table.read(&mut buf) {
            text.extend_from_slice(&buf[..n]);
            let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for line in String::from_utf8_lossy(&text[..end]).lines() {
                if let Some((ino, sock)) = table_line(line).filter(|(i, _)| want.remove(i)) {
                    out.insert(ino, sock);
                }
            }
            text.drain(..end);
            if want.is_empty() {
                break;
            }
        }
    }
}

/// One line of `/proc/net/tcp{,6}`: inode and socket.
fn table_line(line: &str) -> Option<(u64, TcpSocket)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, remote, state, ino) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
    let state = u8::from_str_radix(state, 16).ok()?;
    let ino = ino.parse::<u64>().ok().filter(|&i| i != 0)?;
    let sock = TcpSocket {
        state,
        local: tcp_address(local),
        remote: tcp_address(remote),
    };
    Some((ino, sock))
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
}
