//! The frozen tree, checked task by task before CRIU may dump it.

use crate::procfs;
use crate::server::caller::policy::{Caller, check_tree_task};
use crate::server::conn::peer::Peer;

/// Most tasks a frozen tree may have (a bound on the walk, far above any
/// real tree).
const MAX_TREE_TASKS: usize = 1 << 16;

/// Applies the caller checks to every task (every thread) of the frozen
/// tree rooted at the caller, from the caller's point of view. The tree is
/// frozen, so nothing in it can fork, exec or change ids meanwhile; the
/// caller's pidfd is checked before and after, so the pid named it all along.
pub(crate) fn check_frozen_tree(peer: &Peer, caller: &Caller) -> Result<(), String> {
    peer.alive_or("the caller exited before its tree was frozen")?;
    let mut stack = vec![peer.pid];
    let mut seen = std::collections::HashSet::from([peer.pid]);
    let mut checked = 0;
    while let Some(pid) = stack.pop() {
        let tasks =
            procfs::tasks(pid).map_err(|e| format!("cannot list the threads of pid {pid}: {e}"))?;
        for tid in tasks {
            checked += 1;
            if checked > MAX_TREE_TASKS {
                return Err(format!("the tree has more than {MAX_TREE_TASKS} tasks"));
            }
            let dir = procfs::task_dir(pid, tid);
            match check_task(caller, &dir, pid, tid, pid == peer.pid) {
                Ok(()) => {}
                // gone (reaped) since the listing: it will not be dumped
                Err(TaskError::Gone) => continue,
                Err(TaskError::Refused(why)) => return Err(why),
            }
            let children = match procfs::children(pid, tid) {
                Ok(children) => children,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot list the children of task {tid}: {e}")),
            };
            for child in children {
                if seen.insert(child) {
                    stack.push(child);
                }
            }
        }
    }
    peer.alive_or("the caller exited while its tree was checked")
}

enum TaskError {
    Gone,
    Refused(String),
}

fn check_task(caller: &Caller, dir: &str, pid: i32, tid: i32, root: bool) -> Result<(), TaskError> {
    let gone_or = |e: std::io::Error, what: &str| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TaskError::Gone
        } else {
            TaskError::Refused(format!("cannot inspect {what} of task {tid}: {e}"))
        }
    };
    let comm = procfs::read(format!("{dir}/comm")).map_err(|e| gone_or(e, "comm"))?;
    let comm = comm.trim_end();
    let what = match (root, pid == tid) {
        (true, true) => format!("the caller (pid {pid}, {comm})"),
        (true, false) => format!("thread {tid} ({comm}) of the caller (pid {pid})"),
        (false, true) => format!("task pid {pid} ({comm}) in the caller's tree"),
        (false, false) => format!("thread {tid} ({comm}) of pid {pid} in the caller's tree"),
    };
    let status = procfs::read(format!("{dir}/status")).map_err(|e| gone_or(e, "status"))?;
    let mut task = Caller::parse(&status)
        .ok_or_else(|| TaskError::Refused(format!("unreadable /proc status of {what}")))?;
    // A zombie child has no memory and root's /proc files: it is not
    // refused as non-dumpable (CRIU records it as a zombie: pid, ids,
    // exit code). The caller's own threads are never let off: a caller
    // whose main thread exited still runs, with memory, in its others.
    task.zombie &= !root;
    // a file, not the directory: see `admit`
    let proc_file =
        rustix::fs::stat(format!("{dir}/stat")).map_err(|e| gone_or(e.into(), "owner"))?;
    check_tree_task(caller, &task, &proc_file, &what).map_err(TaskError::Refused)
}
