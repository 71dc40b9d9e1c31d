//! Reading `/proc`, for the client's preflight and the service alike:
//! small files in one read, the fields of `/proc/<pid>/stat`, the tasks
//! of a process and their children.
//!
//! The second field of `stat`, the command name in parentheses, may itself
//! hold spaces and parentheses, so the fields are counted from the last `)`.
#![cfg_attr(not(all(feature = "client", feature = "server")), allow(dead_code))]

use std::io::{self, Read};
use std::path::Path;

/// The process state (`R`, `S`, `Z`, ...).
pub(crate) const STATE: usize = 3;
/// The process group id.
#[cfg(feature = "server")]
pub(crate) const PGRP: usize = 5;
/// The session id: 0 when the session leader is outside the pid namespace
/// of this `/proc`.
pub(crate) const SESSION: usize = 6;
/// The start time, in clock ticks after boot.
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) const START_TIME: usize = 22;

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
pub(crate) fn read(path: impl AsRef<Path>) -> io::Result<String> {
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

/// `/proc/<pid>/<file>`.
pub(crate) fn read_of(pid: i32, file: &str) -> io::Result<String> {
    read(format!("/proc/{pid}/{file}"))
}

/// The directory of task `tid` of process `pid`.
pub(crate) fn task_dir(pid: i32, tid: i32) -> String {
    format!("/proc/{pid}/task/{tid}")
}

/// The task (thread) ids of `pid`. An entry that cannot be read is an
/// error; names that are not ids are skipped.
pub(crate) fn tasks(pid: i32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// The children of task `tid` of `pid` (`/proc/<pid>/task/<tid>/children`).
pub(crate) fn children(pid: i32, tid: i32) -> io::Result<Vec<i32>> {
    let text = read(format!("{}/children", task_dir(pid, tid)))?;
    Ok(text
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect())
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
}
