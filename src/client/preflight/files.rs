//! Fds that are not sockets: `io_uring` instances, deleted files, regular
//! files written without `O_APPEND`.

use super::tree::OpenFd;
use super::{Finding, Kind, Severity};
use crate::procfs::{self, PROC};

/// CRIU's default `--ghost-limit`: deleted files up to this size are copied
/// into the images, bigger ones make the dump fail.
const GHOST_LIMIT: u64 = 1 << 20;

/// Adds the findings about `fd`, which is not a socket.
pub(super) fn check_file(fd: &OpenFd, out: &mut Vec<Finding>) {
    let link = fd.target.to_string_lossy();
    if link == "anon_inode:[io_uring]" {
        out.push(Finding {
            pid: fd.pid,
            fd: Some(fd.fd),
            kind: Kind::IoUring,
            severity: Severity::Refused,
            what: "an io_uring instance".into(),
            fix: "CRIU cannot dump io_uring: close the ring before the checkpoint and set it up \
                  again after (a selfdump::Resource hook)"
                .into(),
        });
        return;
    }
    if !link.starts_with('/') || link.starts_with("/memfd:") {
        return; // pipes, anonymous inodes, memfds: CRIU handles them
    }
    let meta = std::fs::metadata(procfs::fd_of(fd.pid, fd.fd));
    if !meta.as_ref().is_ok_and(|m| m.is_file()) {
        return;
    }
    let size = meta.map(|m| m.len()).unwrap_or(0);
    match link.strip_suffix(" (deleted)") {
        Some(path) => out.push(deleted(fd, path, size)),
        None => out.extend(written_without_append(fd, &link)),
    }
}

/// A deleted file still open: copied into the images up to CRIU's limit.
fn deleted(fd: &OpenFd, path: &str, size: u64) -> Finding {
    let (severity, fix) = if size > GHOST_LIMIT {
        (
            Severity::Refused,
            format!(
                "CRIU copies deleted files into the images only up to {GHOST_LIMIT} bytes: \
                 close it before the checkpoint"
            ),
        )
    } else {
        (
            Severity::Risky,
            "CRIU copies its content into the images and a restored copy gets that copy, \
             not a file anyone else sees: close it before the checkpoint if that matters"
                .to_owned(),
        )
    };
    Finding {
        pid: fd.pid,
        fd: Some(fd.fd),
        kind: Kind::DeletedFile,
        severity,
        what: format!("file {path} ({size} bytes) is deleted but still open"),
        fix,
    }
}

/// A regular file open for writing without `O_APPEND`: restore fails if
/// its size changes after the checkpoint.
fn written_without_append(fd: &OpenFd, link: &str) -> Option<Finding> {
    const O_ACCMODE: u32 = 0o3;
    const O_APPEND: u32 = 0o2000;
    let flags = open_flags(fd);
    let writable = matches!(flags & O_ACCMODE, 1 | 2);
    (writable && flags & O_APPEND == 0).then(|| Finding {
        pid: fd.pid,
        fd: Some(fd.fd),
        kind: Kind::WrittenWithoutAppend,
        severity: Severity::Risky,
        what: format!("regular file {link} is open for writing without O_APPEND"),
        fix: "if its size changes after the checkpoint, restore fails (\"File ... has bad \
              size\"): open logs with O_APPEND (`>>` in a shell), or close the file before \
              the checkpoint and reopen it after"
            .into(),
    })
}

/// The `flags:` line of `/proc/PID/fdinfo/FD` (octal), 0 when unreadable.
fn open_flags(fd: &OpenFd) -> u32 {
    PROC.read(fd.pid, &format!("fdinfo/{}", fd.fd))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        })
        .unwrap_or(0)
}
