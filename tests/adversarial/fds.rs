//! What the attacked service holds, by identity: each of its fds (number
//! and what it refers to), its children, and its warm CRIU workers. The
//! service is this process (a `Service` in a thread) or a `selfdump serve`
//! of its own; the checks read `/proc/<pid>` of whichever it is.

use crate::common::Guarded;
use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// One open fd of the service: its number and what it refers to. A link
/// to a waiting warm worker (the socket to a `criu swrk`, a pidfd of one)
/// is named [`WORKER_LINK`] instead: a worker that served a dump is
/// replaced by a new one, with a new socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fd {
    pub num: i32,
    pub what: String,
}

pub const WORKER_LINK: &str = "link to a waiting criu worker";

/// The open fds of `pid`, worker links named as such.
pub fn fds_of(pid: i32) -> Vec<Fd> {
    let workers = waiting_workers_of(pid);
    let worker_sockets: BTreeSet<u64> = workers.iter().flat_map(|&w| socket_inodes(w)).collect();
    let peers = socket_peers();
    let mut fds: Vec<Fd> = raw_fds(pid)
        .into_iter()
        .map(|(num, target)| {
            let text = target.to_string_lossy().into_owned();
            let to_worker = socket_inode(&text)
                .and_then(|inode| peers.get(&inode))
                .is_some_and(|peer| worker_sockets.contains(peer))
                || (text == "anon_inode:[pidfd]"
                    && pidfd_target(pid, num).is_some_and(|p| workers.contains(&p)));
            let what = if to_worker { WORKER_LINK.into() } else { text };
            Fd { num, what }
        })
        .collect();
    fds.sort();
    fds
}

/// The fds of `now` that `before` did not have, by identity. Links to
/// waiting warm workers are left out: a worker that served a dump is
/// replaced by a new one, with new fds, and the service holds one or two
/// per worker (its socket, and a pidfd once the worker was first waited
/// on); they lead to live waiting workers, whose number is checked apart.
pub fn new_fds(before: &[Fd], now: &[Fd]) -> Vec<Fd> {
    now.iter()
        .filter(|f| f.what != WORKER_LINK && !before.contains(f))
        .cloned()
        .collect()
}

/// `(fd, target)` of each open fd of `pid` (this process's reading of
/// the list itself left out).
pub fn raw_fds(pid: i32) -> Vec<(i32, PathBuf)> {
    let list = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(dir) = std::fs::read_dir(&list) else {
        return Vec::new();
    };
    let me = pid == std::process::id() as i32;
    dir.flatten()
        .filter_map(|e| {
            let num = e.file_name().to_str()?.parse().ok()?;
            Some((num, std::fs::read_link(e.path()).unwrap_or_default()))
        })
        .filter(|(_, target)| !(me && *target == list))
        .collect()
}

pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn socket_inodes(pid: i32) -> Vec<u64> {
    raw_fds(pid)
        .iter()
        .filter_map(|(_, t)| socket_inode(&t.to_string_lossy()))
        .collect()
}

/// The pid a pidfd of `pid` refers to (its fdinfo's `Pid:`).
fn pidfd_target(pid: i32, fd: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

/// Each unix socket's peer, by inode (from `ss`: the kernel's sock_diag).
pub fn socket_peers() -> BTreeMap<u64, u64> {
    let out = std::process::Command::new("ss")
        .args(["-xanH"])
        .output_guarded()
        .expect("ss (iproute2; scripts/install-test-tools.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let n = words.len();
            // ... local-address local-inode peer-address peer-inode
            let local = words.get(n.checked_sub(3)?)?.parse().ok()?;
            let peer = words.get(n - 1)?.parse().ok()?;
            Some((local, peer))
        })
        .collect()
}

/// The `criu` children of `service`.
fn criu_children_of(service: i32) -> Vec<i32> {
    children_of(service)
        .into_iter()
        .filter(|(_, _, comm)| comm == "criu")
        .map(|(pid, ..)| pid)
        .collect()
}

/// The warm `criu swrk` workers of `service`, waiting for a dump.
pub fn waiting_workers_of(service: i32) -> Vec<i32> {
    criu_children_of(service)
        .into_iter()
        .filter(|&pid| is_waiting_worker(service, pid))
        .collect()
}

/// The `criu` children of `service` at work on a dump (not waiting).
pub fn busy_criu_of(service: i32) -> Vec<i32> {
    criu_children_of(service)
        .into_iter()
        .filter(|&pid| !is_waiting_worker(service, pid))
        .collect()
}

/// A live criu that holds only what it was started with (/dev/null, its
/// socket, fds it inherited from the service). CRIU opens its log in the
/// images directory as soon as it takes a request, so a dumping one fails this.
fn is_waiting_worker(service: i32, pid: i32) -> bool {
    if process_state(pid).is_none_or(|s| s == 'Z') {
        return false;
    }
    let ours: Vec<PathBuf> = raw_fds(service).into_iter().map(|(_, path)| path).collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().all(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let text = target.to_string_lossy();
            text == "/dev/null" || text.starts_with("socket:[") || ours.contains(&target)
        })
    })
}
