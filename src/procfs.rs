//! Reading `/proc`, for the client's preflight and the service alike:
//! every read of `/proc` in the crate goes through here. [`ProcFs`] says
//! which `/proc`: the real one ([`PROC`]) or, in unit tests, a directory
//! laid out like it, so that the checks of a process tree or of a pid
//! namespace run without root and without the processes they describe.
//!
//! Small files are read in one read; the fields of `/proc/<pid>/stat` are
//! counted from the last `)`, since the second field, the command name in
//! parentheses, may itself hold spaces and parentheses.
#![cfg_attr(not(all(feature = "client", feature = "server")), allow(dead_code))]

use std::fmt::Display;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// The process state (`R`, `S`, `Z`, ...).
pub(crate) const STATE: usize = 3;
/// The process group id.
#[cfg(feature = "server")]
pub(crate) const PGRP: usize = 5;
/// The session id: 0 when the session leader is outside the pid namespace
/// of this `/proc`.
pub(crate) const SESSION: usize = 6;
/// The start time, in clock ticks after boot.
pub(crate) const START_TIME: usize = 22;

/// A `/proc` to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcFs<'a> {
    root: &'a str,
}

/// The real `/proc`.
pub(crate) const PROC: ProcFs<'static> = ProcFs { root: "/proc" };

impl<'a> ProcFs<'a> {
    /// A directory laid out like `/proc` (`<root>/<pid>/status`, ...).
    #[cfg(test)]
    pub(crate) fn at(root: &'a str) -> Self {
        Self { root }
    }

    /// `<root>/<pid>/<file>`; `pid` may be `"self"`, `file` may name a
    /// path below (`"task/7/status"`).
    pub(crate) fn path(self, pid: impl Display, file: &str) -> PathBuf {
        PathBuf::from(format!("{}/{pid}/{file}", self.root))
    }

    /// A file of `/proc` that belongs to no process (`"uptime"`,
    /// `"sys/kernel/random/boot_id"`).
    pub(crate) fn read_file(self, file: &str) -> io::Result<String> {
        read(format!("{}/{file}", self.root))
    }

    /// `<root>/<pid>/<file>`, read whole.
    pub(crate) fn read(self, pid: impl Display, file: &str) -> io::Result<String> {
        read(self.path(pid, file))
    }

    /// The owner, mode and inode of `<root>/<pid>/<file>`.
    pub(crate) fn stat(self, pid: impl Display, file: &str) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::stat(self.path(pid, file))?)
    }

    /// Where the link `<root>/<pid>/<file>` points (`fd/3`, `exe`, ...).
    pub(crate) fn read_link(self, pid: impl Display, file: &str) -> io::Result<PathBuf> {
        std::fs::read_link(self.path(pid, file))
    }

    /// Whether `<root>/<pid>` exists: some process has that pid.
    pub(crate) fn exists(self, pid: impl Display) -> bool {
        Path::new(&format!("{}/{pid}", self.root)).exists()
    }

    /// The pid namespace of `pid`: the inode of its `ns/pid`.
    pub(crate) fn pid_namespace(self, pid: impl Display) -> io::Result<u64> {
        Ok(self.stat(pid, "ns/pid")?.st_ino)
    }

    /// This process's pid as this `/proc` numbers it (`<root>/self`): not
    /// `getpid()` inside a pid namespace of its own (`selfdump run`) whose
    /// `/proc` is the host's.
    pub(crate) fn own_pid(self) -> io::Result<i32> {
        let link = std::fs::read_link(format!("{}/self", self.root))?;
        link.to_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other(format!("odd {}/self: {link:?}", self.root)))
    }

    /// The open fds of `pid` (`<root>/<pid>/fd`).
    pub(crate) fn fds(self, pid: i32) -> io::Result<Vec<i32>> {
        numbered_entries(&self.path(pid, "fd"))
    }

    /// Every pid this `/proc` shows.
    pub(crate) fn pids(self) -> io::Result<Vec<i32>> {
        numbered_entries(Path::new(self.root))
    }

    /// The task (thread) ids of `pid`. An entry that cannot be read is an
    /// error; names that are not ids are skipped.
    pub(crate) fn tasks(self, pid: i32) -> io::Result<Vec<i32>> {
        numbered_entries(&self.path(pid, "task"))
    }

    /// The children of task `tid` of `pid` (`<pid>/task/<tid>/children`).
    pub(crate) fn children(self, pid: i32, tid: i32) -> io::Result<Vec<i32>> {
        let text = self.read(pid, &format!("task/{tid}/children"))?;
        Ok(text
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect())
    }
}

/// The entries of `dir` named by a number.
fn numbered_entries(dir: &Path) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(n) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) {
            out.push(n);
        }
    }
    Ok(out)
}

/// `/proc/self/fd/<fd>`: the file that this process's `fd` names,
/// reached by path (by this process, or by a child, CRIU, that inherited
/// `fd` at the same number).
#[cfg(feature = "server")]
pub(crate) fn self_fd(fd: RawFd) -> PathBuf {
    PROC.path("self", &format!("fd/{fd}"))
}

/// `/proc/<pid>/fd/<fd>`: fd `fd` of process `pid`, which another
/// process may open as long as `pid` holds it (this process's own fds,
/// given to a CRIU that runs as root).
pub(crate) fn fd_of(pid: impl Display, fd: RawFd) -> PathBuf {
    PROC.path(pid, &format!("fd/{fd}"))
}

/// Field `n` of a `/proc/<pid>/stat` text, numbered as in proc(5) (from 3,
/// the first after the command name).
pub(crate) fn field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace()
        .nth(n.checked_sub(STATE)?)?
        .parse()
        .ok()
}

/// A small `/proc` file, read with one big `read` rather than the small
/// probing reads of `read_to_string` (each of which makes the kernel
/// generate the file again for some of them).
fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_from_the_last_parenthesis() {
        let stat = "42 (a) b) (c) S 1 42 7 0 -1";
        assert_eq!(field::<char>(stat, STATE), Some('S'));
        assert_eq!(field::<i32>(stat, SESSION), Some(7));
        assert_eq!(field::<i32>(stat, 2), None);
        assert_eq!(field::<i32>(stat, 40), None);
    }

    #[test]
    fn a_directory_laid_out_like_proc_reads_as_proc() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join("7/task/7")).unwrap();
        std::fs::create_dir_all(dir.path().join("7/task/8")).unwrap();
        std::fs::write(dir.path().join("7/task/7/children"), "9 10\n").unwrap();
        std::fs::write(dir.path().join("7/comm"), "x\n").unwrap();
        let proc = ProcFs::at(root);
        assert_eq!(proc.read(7, "comm").unwrap(), "x\n");
        let mut tasks = proc.tasks(7).unwrap();
        tasks.sort();
        assert_eq!(tasks, [7, 8]);
        assert_eq!(proc.children(7, 7).unwrap(), [9, 10]);
        assert_eq!(proc.pids().unwrap(), [7]);
        assert!(proc.exists(7) && !proc.exists(9));
        assert!(proc.read(9, "comm").is_err());
    }
}
