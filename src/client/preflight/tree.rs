//! The process tree and what its processes hold: descendants from
//! `/proc/PID/task/*/children`, open fds from `/proc/PID/fd`, the tracer
//! from `/proc/PID/status`.

use crate::procfs::{self, PROC};
use std::io;
use std::path::PathBuf;

/// One open file descriptor of a process in the tree.
#[derive(Debug)]
pub(super) struct OpenFd {
    pub(super) pid: i32,
    pub(super) fd: i32,
    /// Where `/proc/PID/fd/FD` points.
    pub(super) target: PathBuf,
    /// The inode, when the fd is a socket.
    pub(super) socket: Option<u64>,
}

/// The open fds of `pid`: one `readlink` each (fdinfo is read later, and
/// only for the regular files that need their flags).
pub(super) fn open_fds(pid: i32) -> io::Result<Vec<OpenFd>> {
    let mut out = Vec::new();
    for fd in PROC.fds(pid)? {
        let Ok(target) = PROC.read_link(pid, &format!("fd/{fd}")) else {
            continue; // closed meanwhile
        };
        let socket = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok());
        out.push(OpenFd {
            pid,
            fd,
            target,
            socket,
        });
    }
    Ok(out)
}

/// This process's pid as `/proc` numbers it. Inside a pid namespace of its
/// own (`selfdump run`) with the host's `/proc` (no private mount
/// namespace), `getpid()` is the namespace's number (1, 2, ...) while
/// `/proc/<pid>` and every pid read from `/proc` are the host's: the tree
/// is walked in `/proc`'s numbers throughout.
pub(super) fn own_pid() -> i32 {
    PROC.own_pid()
        .unwrap_or_else(|_| rustix::process::getpid().as_raw_nonzero().get())
}

/// `root` and its descendants (every thread's children).
pub(super) fn process_tree(root: i32) -> io::Result<Vec<i32>> {
    PROC.stat(root, "")
        .map_err(|e| io::Error::new(e.kind(), format!("process {root}: {e}")))?;
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let pid = tree[i];
        i += 1;
        let Ok(tasks) = PROC.tasks(pid) else {
            continue;
        };
        for tid in tasks {
            let Ok(children) = PROC.children(pid, tid) else {
                continue;
            };
            for child in children {
                if !tree.contains(&child) {
                    tree.push(child);
                }
            }
        }
    }
    Ok(tree)
}

/// The process tracing `pid`, if any.
pub(super) fn tracer(pid: i32) -> Option<i32> {
    let status = PROC.read(pid, "status").ok()?;
    let tracer: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    (tracer != 0).then_some(tracer)
}

/// The session id of `pid` as its pid namespace sees it: 0 when the session
/// leader is outside that namespace.
pub(super) fn session_id(pid: i32) -> Option<i32> {
    let stat = PROC.read(pid, "stat").ok()?;
    procfs::field(&stat, procfs::SESSION)
}

/// The command name of `pid`, or `?`.
pub(super) fn comm(pid: i32) -> String {
    PROC.read(pid, "comm")
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Processes holding socket `ino`, as " by pid N (name), ...": a scan of
/// every process's fds, so only for a socket that is already a finding.
pub(super) fn holders_of(ino: u64) -> String {
    let want = PathBuf::from(format!("socket:[{ino}]"));
    let mut found = Vec::new();
    let Ok(pids) = PROC.pids() else {
        return String::new();
    };
    for pid in pids {
        let Ok(fds) = PROC.fds(pid) else {
            continue;
        };
        let holds = |fd: i32| {
            PROC.read_link(pid, &format!("fd/{fd}"))
                .is_ok_and(|t| t == want)
        };
        if fds.into_iter().any(holds) {
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
