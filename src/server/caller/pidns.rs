//! Callers inside a pid namespace of their own (`selfdump run`): the dump
//! is of the whole namespace, rooted at its init, so that every restore
//! makes a fresh namespace and many copies of one image can run at once.
//!
//! The init is found from the kernel, never from the request: starting at
//! the caller (named by its pidfd), parents are followed while they are in
//! the caller's pid namespace; the last one must be that namespace's pid 1
//! (`NSpid`). A pidfd then pins it, and it passes the same checks as every
//! task of a dumped tree, from the caller's point of view.

use crate::server::caller::policy::{Caller, check_tree_task};
use crate::server::conn::peer::Peer;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// Most parents followed from the caller to its namespace's init.
const MAX_DEPTH: usize = 4096;

/// The init of the caller's pid namespace, pinned by a pidfd; the dump's root.
#[derive(Debug)]
pub(crate) struct NsInit {
    /// The init, as a peer: its pid (the service's number), owner, pidfd.
    pub(crate) peer: Peer,
}

/// The inode of `/proc/<pid>/ns/pid`.
fn pid_ns(pid: &str) -> std::io::Result<u64> {
    Ok(rustix::fs::stat(format!("/proc/{pid}/ns/pid"))?.st_ino)
}

fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// `Ok(None)` when the caller shares the service's pid namespace (dump the
/// caller, as always); `Ok(Some(init))` when the whole namespace is to be
/// dumped; `Err` is why the service refuses.
pub(crate) fn dump_root(peer: &Peer, caller: &Caller) -> Result<Option<NsInit>, String> {
    let ours =
        pid_ns("self").map_err(|e| format!("cannot read the service's pid namespace: {e}"))?;
    let theirs = pid_ns(&peer.pid.to_string())
        .map_err(|e| format!("cannot read your pid namespace: {e}"))?;
    if !peer.is_alive() {
        return Err("you exited".into());
    }
    if ours == theirs {
        return Ok(None);
    }
    let status = peer
        .read_proc("status")
        .map_err(|e| format!("cannot inspect you: {e}"))?;
    let nspid = status_field(&status, "NSpid").unwrap_or_default();
    if nspid.split_whitespace().count() != 2 {
        return Err(format!(
            "you are in a nested pid namespace (NSpid {nspid}); CRIU dumps one level of \
             pid namespace below the service's: start the program with `selfdump run` from \
             the service's namespace"
        ));
    }
    let (top, top_status) = top_in_namespace(peer.pid, status, theirs)?;
    let top_nspid = status_field(&top_status, "NSpid").unwrap_or_default();
    if top_nspid.split_whitespace().nth(1) != Some("1") {
        return Err(format!(
            "the top of your process tree in your pid namespace (pid {top}, NSpid {top_nspid}) \
             is not the namespace's init: a process that entered the namespace from outside \
             (setns) cannot be dumped with it; start the program with `selfdump run`"
        ));
    }
    let pidfd = Pid::from_raw(top)
        .ok_or("bad pid")
        .and_then(|p| pidfd_open(p, PidfdFlags::empty()).map_err(|_| "gone"))
        .map_err(|e| format!("cannot pin your namespace's init (pid {top}): {e}"))?;
    // Re-read through the pinned pid: still that namespace's pid 1?
    let init_status = std::fs::read_to_string(format!("/proc/{top}/status"))
        .map_err(|e| format!("cannot inspect your namespace's init: {e}"))?;
    let still = pid_ns(&top.to_string()).ok() == Some(theirs)
        && status_field(&init_status, "NSpid")
            .is_some_and(|n| n.split_whitespace().nth(1) == Some("1"));
    if !still || !crate::server::conn::peer::is_alive(&pidfd) || !peer.is_alive() {
        return Err("your pid namespace's init changed while it was checked".into());
    }
    let task = Caller::parse(&init_status).ok_or("unreadable /proc status of your init")?;
    let proc_file = rustix::fs::stat(format!("/proc/{top}/stat"))
        .map_err(|e| format!("cannot inspect your namespace's init: {e}"))?;
    let comm = std::fs::read_to_string(format!("/proc/{top}/comm")).unwrap_or_default();
    let what = format!(
        "the init of your pid namespace (pid {top}, {}), which would be dumped with you,",
        comm.trim()
    );
    check_tree_task(caller, &task, &proc_file, &what)?;
    if !crate::server::conn::peer::is_alive(&pidfd) {
        return Err("your pid namespace's init exited".into());
    }
    Ok(Some(NsInit {
        peer: Peer {
            pid: top,
            uid: task.uids[1],
            gid: task.gids[1],
            pidfd,
        },
    }))
}

/// Follows the parents of `pid` (whose `/proc` status is `status`) while
/// they are in the pid namespace `ns`; returns the last one and its status.
fn top_in_namespace(pid: i32, status: String, ns: u64) -> Result<(i32, String), String> {
    // Up the parents while they are in the caller's namespace.
    let mut top = pid;
    let mut top_status = status;
    for _ in 0..MAX_DEPTH {
        let ppid: i32 = status_field(&top_status, "PPid")
            .and_then(|p| p.parse().ok())
            .ok_or("unreadable /proc status while looking for your namespace's init")?;
        if ppid <= 0 {
            break;
        }
        match pid_ns(&ppid.to_string()) {
            Ok(found) if found == ns => {}
            _ => break, // outside the namespace (or gone: then `top` is checked below)
        }
        top = ppid;
        top_status = std::fs::read_to_string(format!("/proc/{top}/status"))
            .map_err(|e| format!("cannot inspect pid {top} above you: {e}"))?;
    }
    Ok((top, top_status))
}

impl NsInit {
    /// Whether the init leads its own session (inside its namespace), as
    /// CRIU needs: otherwise "A session leader of N(1) is outside of its
    /// pid namespace". `Err` is the refusal.
    pub(crate) fn check_session(&self) -> Result<(), String> {
        let sid = self
            .peer
            .session_id()
            .map_err(|e| format!("cannot read your namespace's init: {e}"))?;
        if sid == self.peer.pid {
            Ok(())
        } else {
            Err(format!(
                "the init of your pid namespace (pid {}) does not lead a session of its own, \
                 and CRIU cannot dump a namespace whose session leader is outside it; start \
                 the program with `selfdump run` (or `unshare -p -f setsid CMD`)",
                self.peer.pid
            ))
        }
    }
}

/// The copy slot's name for CRIU (`pipe:[INODE]`), read at the freeze from
/// the caller's own fd `fd`; `None` if it is not the read end of a pipe.
pub(crate) fn copy_slot(peer: &Peer, fd: i32) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/{}/fd/{fd}", peer.pid)).ok()?;
    let target = target.to_str()?.to_owned();
    let ok = target.starts_with("pipe:[") && target.ends_with(']') && peer.is_alive();
    ok.then_some(target)
}
