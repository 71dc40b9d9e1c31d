//! CRIU's version, remembered across processes: a file of root's in the
//! service's own directory ([`LOG_DIR`]), so that a `selfdump restore` (a
//! process of its own, every time) does not run `criu --version` before
//! each restore. That exec is the largest part of what the command costs
//! over the library's restore: 5–8 ms of a 2 MiB restore of ~20 ms here.
//!
//! What is remembered is only ever a version `criu --version` printed, for
//! the binary it printed it of, named by its path and told apart by what
//! changes whenever the file is replaced or rewritten: its device and
//! inode, size, modification and change times (to the nanosecond; the
//! change time cannot be set by a program). It is trusted as the service
//! trusts its own memory: the file and its directory are root's and
//! writable by root alone, checked through their fds, and the file is
//! never followed through a symlink. Anything else (not root, the
//! directory or the file not as expected, a line that does not parse)
//! and the version is asked of CRIU again, as before.

use crate::server::fs::service_dir::{LOG_DIR, ServiceDir};
use rustix::fs::{FileType, Mode, OFlags, Stat};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// The file's name in [`LOG_DIR`].
const FILE: &str = "criu-versions";

/// Binaries remembered at most (the newest).
const KEEP: usize = 8;

/// Longest file read: [`KEEP`] lines of a path and a version.
const MAX_BYTES: u64 = 64 << 10;

/// What tells one binary at `path` from another: `path` and its `stat`.
/// `None` for a path that cannot be told on one line.
pub(super) fn key(path: &Path, stat: &Stat) -> Option<String> {
    let path = path.to_str().filter(|p| !p.contains(['\n', '\t']))?;
    Some(format!(
        "{} {} {} {}.{:09} {}.{:09} {path}",
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime,
        stat.st_mtime_nsec,
        stat.st_ctime,
        stat.st_ctime_nsec
    ))
}

/// The version remembered for `key`, if this process is root and the file
/// is as it must be.
pub(super) fn recall(key: &str) -> Option<String> {
    recall_in(Path::new(LOG_DIR), key)
}

fn recall_in(dir: &Path, key: &str) -> Option<String> {
    let text = read_all(dir)?;
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
        .filter(|v| is_version(v))
}

/// Remembers `version` for `key` (with the newest others); a failure only
/// means CRIU is asked again next time.
pub(super) fn remember(key: &str, version: &str) {
    remember_in(Path::new(LOG_DIR), key, version)
}

fn remember_in(dir: &Path, key: &str, version: &str) {
    if !is_version(version) {
        return;
    }
    let others = read_all(dir).unwrap_or_default();
    let mut lines: Vec<&str> = others
        .lines()
        .filter(|l| l.split_once('\t').is_some_and(|(k, _)| k != key))
        .collect();
    lines.truncate(KEEP - 1);
    let entry = format!("{key}\t{version}");
    lines.insert(0, &entry);
    let mut text = lines.join("\n");
    text.push('\n');
    if let Err(e) = write_all(dir, &text) {
        log::debug!(
            "cannot remember CRIU's version in {}/{FILE}: {e}",
            dir.display()
        );
    }
}

/// A version as `criu --version` prints it: digits and dots, short.
fn is_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The service's directory (`path`: [`LOG_DIR`] but in tests), for root
/// only (others ask CRIU each time).
fn dir(path: &Path) -> Option<ServiceDir> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    ServiceDir::open_or_create(path).ok()
}

/// The file's text, if it is a regular file of root's only root can write.
fn read_all(dir_path: &Path) -> Option<String> {
    let dir = dir(dir_path)?;
    let file = rustix::fs::openat(
        &dir,
        FILE,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&file).ok()?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
        || stat.st_uid != 0
        || stat.st_mode & 0o022 != 0
    {
        return None;
    }
    let mut text = String::new();
    std::fs::File::from(file)
        .take(MAX_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Replaces the file with `text`: written under a fresh name, then
/// renamed over it (a reader sees the old file or the new, whole).
fn write_all(dir_path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = dir(dir_path).ok_or_else(|| std::io::Error::other("no directory of root's"))?;
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let temp = format!(".{FILE}-{:016x}", u64::from_le_bytes(random));
    let file: OwnedFd = rustix::fs::openat(
        &dir,
        temp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    let written = std::fs::File::from(file).write_all(text.as_bytes());
    let renamed = written.and_then(|()| Ok(rustix::fs::renameat(&dir, temp.as_str(), &dir, FILE)?));
    if renamed.is_err() {
        let _ = dir.remove(&temp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_binaries_apart_and_versions_are_only_numbers() {
        let stat = rustix::fs::stat("/proc/self/exe").unwrap();
        let k = key(Path::new("/usr/sbin/criu"), &stat).unwrap();
        assert!(k.ends_with(" /usr/sbin/criu"), "{k}");
        assert!(key(Path::new("/odd\tpath"), &stat).is_none());
        assert!(key(Path::new("/odd\npath"), &stat).is_none());
        let mut later = stat;
        later.st_ctime_nsec = (later.st_ctime_nsec + 1) % 1_000_000_000;
        assert_ne!(key(Path::new("/usr/sbin/criu"), &later).unwrap(), k);
        assert!(is_version("4.1.1"));
        assert!(!is_version(""));
        assert!(!is_version("4.1.1\n5"));
        assert!(!is_version("4.1 (gitid)"));
    }

    /// What a process remembers, the next one recalls, for that binary
    /// only; as root only (the file is root's): others remember nothing.
    /// In a directory of the test's own, not the service's.
    #[test]
    fn a_version_remembered_is_recalled_for_the_same_binary_only() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("service");
        let stat = rustix::fs::stat("/proc/self/exe").unwrap();
        let path = "/nonexistent/criu";
        let k = key(Path::new(path), &stat).unwrap();
        assert_eq!(recall_in(&dir, &k), None);
        remember_in(&dir, &k, "4.0.7");
        if !rustix::process::geteuid().is_root() {
            assert_eq!(recall_in(&dir, &k), None, "not root: nothing remembered");
            return;
        }
        assert_eq!(recall_in(&dir, &k).as_deref(), Some("4.0.7"));
        let mut rewritten = stat;
        rewritten.st_ctime += 1;
        assert_eq!(
            recall_in(&dir, &key(Path::new(path), &rewritten).unwrap()),
            None
        );
        remember_in(&dir, &k, "4.0.8 (not a version)");
        assert_eq!(
            recall_in(&dir, &k).as_deref(),
            Some("4.0.7"),
            "kept: nothing else was"
        );
    }
}
