//! Callers inside a pid namespace of their own (`selfdump run`): the dump
//! is of the whole namespace, rooted at its init, so that every restore
//! makes a fresh namespace and many copies of one image can run at once.
//!
//! The init is found from the kernel, never from the request: starting at
//! the caller (named by its pidfd), parents are followed while they are in
//! the caller's pid namespace; the last one must be that namespace's pid 1
//! (`NSpid`). A pidfd then pins it, and it passes the same checks as every
//! task of a dumped tree, from the caller's point of view.

use super::policy::check_tree_task;
use super::process::Process;
use super::status::TaskStatus;
use crate::procfs::ProcFs;

/// Most parents followed from the caller to its namespace's init.
const MAX_DEPTH: usize = 4096;

/// The init of the caller's pid namespace, pinned by a pidfd; the dump's root.
#[derive(Debug)]
pub(crate) struct NsInit {
    /// The init: its pid (the service's number) and pidfd.
    pub(crate) process: Process,
}

fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Whether a status's `NSpid` says pid 1 in the innermost namespace.
fn is_init(status: &str) -> bool {
    status_field(status, "NSpid").is_some_and(|n| n.split_whitespace().nth(1) == Some("1"))
}

/// `Ok(None)` when the `caller` (whose status is `status`) shares the
/// service's pid namespace (dump the caller, as always); `Ok(Some(init))`
/// when the whole namespace is to be dumped; `Err` is why the service
/// refuses. `proc` is what `/proc` to read.
pub(crate) fn dump_root(
    proc: ProcFs<'_>,
    caller: &Process,
    status: &TaskStatus,
) -> Result<Option<NsInit>, String> {
    let ours = proc
        .pid_namespace("self")
        .map_err(|e| format!("cannot read the service's pid namespace: {e}"))?;
    let theirs = proc
        .pid_namespace(caller.pid)
        .map_err(|e| format!("cannot read your pid namespace: {e}"))?;
    caller.alive_or("you exited")?;
    if ours == theirs {
        return Ok(None);
    }
    let caller_status = caller
        .read_in(proc, "status")
        .map_err(|e| format!("cannot inspect you: {e}"))?;
    let nspid = status_field(&caller_status, "NSpid").unwrap_or_default();
    if nspid.split_whitespace().count() != 2 {
        return Err(format!(
            "you are in a nested pid namespace (NSpid {nspid}); CRIU dumps one level of \
             pid namespace below the service's: start the program with `selfdump run` from \
             the service's namespace"
        ));
    }
    let (top, top_status) = top_in_namespace(proc, caller.pid, caller_status, theirs)?;
    if !is_init(&top_status) {
        let top_nspid = status_field(&top_status, "NSpid").unwrap_or_default();
        return Err(format!(
            "the top of your process tree in your pid namespace (pid {top}, NSpid {top_nspid}) \
             is not the namespace's init: a process that entered the namespace from outside \
             (setns) cannot be dumped with it; start the program with `selfdump run`"
        ));
    }
    let init = pin_init(proc, caller, top, theirs, status)?;
    Ok(Some(NsInit { process: init }))
}

/// Pins the namespace's init `top` (in namespace `ns`), checks through the
/// pin that it still is that namespace's pid 1, then holds it to the
/// checks of every task of a dumped tree, from the caller's point of view.
fn pin_init(
    proc: ProcFs<'_>,
    caller: &Process,
    top: i32,
    ns: u64,
    status: &TaskStatus,
) -> Result<Process, String> {
    let init = Process::open(top)
        .map_err(|e| format!("cannot pin your namespace's init (pid {top}): {e}"))?;
    // Re-read through the pinned pid: still that namespace's pid 1?
    let init_status = proc
        .read(top, "status")
        .map_err(|e| format!("cannot inspect your namespace's init: {e}"))?;
    let still = proc.pid_namespace(top).ok() == Some(ns) && is_init(&init_status);
    if !still || !init.is_alive() || !caller.is_alive() {
        return Err("your pid namespace's init changed while it was checked".into());
    }
    let task = TaskStatus::parse(&init_status).ok_or("unreadable /proc status of your init")?;
    let proc_file = proc
        .stat(top, "stat")
        .map_err(|e| format!("cannot inspect your namespace's init: {e}"))?;
    let comm = proc.read(top, "comm").unwrap_or_default();
    let what = format!(
        "the init of your pid namespace (pid {top}, {}), which would be dumped with you,",
        comm.trim()
    );
    check_tree_task(status, &task, &proc_file, &what)?;
    init.alive_or("your pid namespace's init exited")?;
    Ok(init)
}

/// Follows the parents of `pid` (whose `/proc` status is `status`) while
/// they are in the pid namespace `ns`; returns the last one and its status.
fn top_in_namespace(
    proc: ProcFs<'_>,
    pid: i32,
    status: String,
    ns: u64,
) -> Result<(i32, String), String> {
    let mut top = pid;
    let mut top_status = status;
    for _ in 0..MAX_DEPTH {
        let ppid: i32 = status_field(&top_status, "PPid")
            .and_then(|p| p.parse().ok())
            .ok_or("unreadable /proc status while looking for your namespace's init")?;
        if ppid <= 0 {
            break;
        }
        match proc.pid_namespace(ppid) {
            Ok(found) if found == ns => {}
            _ => break, // outside the namespace (or gone: then `top` is checked below)
        }
        top = ppid;
        top_status = proc
            .read(top, "status")
            .map_err(|e| format!("cannot inspect pid {top} above you: {e}"))?;
    }
    Ok((top, top_status))
}

impl NsInit {
    /// Whether the init leads its own session (inside its namespace), as
    /// CRIU needs: otherwise "A session leader of N(1) is outside of its
    /// pid namespace". `Err` is the refusal.
    pub(crate) fn check_session(&self, proc: ProcFs<'_>) -> Result<(), String> {
        let pid = self.process.pid;
        let sid = self
            .process
            .session_id_in(proc)
            .map_err(|e| format!("cannot read your namespace's init: {e}"))?;
        if sid == pid {
            Ok(())
        } else {
            Err(format!(
                "the init of your pid namespace (pid {pid}) does not lead a session of its own, \
                 and CRIU cannot dump a namespace whose session leader is outside it; start \
                 the program with `selfdump run` (or `unshare -p -f setsid CMD`)"
            ))
        }
    }
}

/// The copy slot's name for CRIU (`pipe:[INODE]`), read at the freeze from
/// the caller's own fd `fd`; `None` if it is not the read end of a pipe.
pub(crate) fn copy_slot(proc: ProcFs<'_>, caller: &Process, fd: i32) -> Option<String> {
    let target = proc.read_link(caller.pid, &format!("fd/{fd}")).ok()?;
    let target = target.to_str()?.to_owned();
    let ok = target.starts_with("pipe:[") && target.ends_with(']') && caller.is_alive();
    ok.then_some(target)
}

#[cfg(test)]
#[path = "pidns_tests.rs"]
mod tests;
