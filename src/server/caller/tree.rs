//! The frozen tree, checked task by task before CRIU may dump it.

use super::policy::check_tree_task;
use super::process::Process;
use super::status::TaskStatus;
use crate::procfs::ProcFs;

/// Most tasks a frozen tree may have (a bound on the walk, far above any
/// real tree).
const MAX_TREE_TASKS: usize = 1 << 16;

/// Applies the caller checks to every task (every thread) of the frozen
/// tree rooted at `root` (the caller, or its namespace's init), from the
/// caller's point of view, as `proc` shows them. The tree is frozen, so
/// nothing in it can fork, exec or change ids meanwhile; the root's pidfd
/// is checked before and after, so its pid named it all along.
pub(crate) fn check_frozen_tree(
    proc: ProcFs<'_>,
    root: &Process,
    caller: &TaskStatus,
) -> Result<(), String> {
    root.alive_or("the caller exited before its tree was frozen")?;
    let mut stack = vec![root.pid];
    let mut seen = std::collections::HashSet::from([root.pid]);
    let mut checked = 0;
    while let Some(pid) = stack.pop() {
        let tasks = proc
            .tasks(pid)
            .map_err(|e| format!("cannot list the threads of pid {pid}: {e}"))?;
        for tid in tasks {
            checked += 1;
            if checked > MAX_TREE_TASKS {
                return Err(format!("the tree has more than {MAX_TREE_TASKS} tasks"));
            }
            let task = Task {
                proc,
                pid,
                tid,
                of_root: pid == root.pid,
            };
            match task.check(caller) {
                Ok(()) => {}
                // gone (reaped) since the listing: it will not be dumped
                Err(TaskError::Gone) => continue,
                Err(TaskError::Refused(why)) => return Err(why),
            }
            let children = match proc.children(pid, tid) {
                Ok(children) => children,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot list the children of task {tid}: {e}")),
            };
            stack.extend(children.into_iter().filter(|child| seen.insert(*child)));
        }
    }
    root.alive_or("the caller exited while its tree was checked")
}

enum TaskError {
    Gone,
    Refused(String),
}

/// One task (thread `tid` of process `pid`) of the tree.
#[derive(Clone, Copy)]
struct Task<'a> {
    proc: ProcFs<'a>,
    pid: i32,
    tid: i32,
    /// A thread of the tree's root.
    of_root: bool,
}

impl Task<'_> {
    fn check(self, caller: &TaskStatus) -> Result<(), TaskError> {
        let Self { pid, tid, .. } = self;
        let comm = self.read("comm")?;
        let comm = comm.trim_end();
        let what = match (self.of_root, pid == tid) {
            (true, true) => format!("the caller (pid {pid}, {comm})"),
            (true, false) => format!("thread {tid} ({comm}) of the caller (pid {pid})"),
            (false, true) => format!("task pid {pid} ({comm}) in the caller's tree"),
            (false, false) => format!("thread {tid} ({comm}) of pid {pid} in the caller's tree"),
        };
        let status = self.read("status")?;
        let mut task = TaskStatus::parse(&status)
            .ok_or_else(|| TaskError::Refused(format!("unreadable /proc status of {what}")))?;
        // A zombie child has no memory and root's /proc files: it is not
        // refused as non-dumpable (CRIU records it as a zombie: pid, ids,
        // exit code). The caller's own threads are never let off: a caller
        // whose main thread exited still runs, with memory, in its others.
        task.zombie &= !self.of_root;
        // a file, not the directory: see `requests/checkpoint/checks.rs`
        let proc_file = self
            .proc
            .stat(pid, &format!("task/{tid}/stat"))
            .map_err(|e| self.gone_or(e, "owner"))?;
        check_tree_task(caller, &task, &proc_file, &what).map_err(TaskError::Refused)
    }

    fn read(self, file: &str) -> Result<String, TaskError> {
        let path = format!("task/{}/{file}", self.tid);
        self.proc
            .read(self.pid, &path)
            .map_err(|e| self.gone_or(e, file))
    }

    fn gone_or(self, e: std::io::Error, what: &str) -> TaskError {
        if e.kind() == std::io::ErrorKind::NotFound {
            TaskError::Gone
        } else {
            TaskError::Refused(format!("cannot inspect {what} of task {}: {e}", self.tid))
        }
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
