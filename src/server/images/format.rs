//! What the service adds to a dump's images and reads back from them: its
//! own description of the dump, what was published, and CRIU's image
//! format (entries of protobuf messages). The directory CRIU writes into is
//! `fs/staging.rs`'s; the generation made of its files, `fs/generations/commit.rs`'s.

use crate::proto::JobId;
use crate::server::caller::credentials::Credentials;
use crate::server::images::criu_entries;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;

/// What the images of one dump are, as the service recorded it in their
/// signed manifest ([`Manifest`](crate::server::images::manifest::Manifest)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The wire protocol version of the service that wrote the images.
    pub protocol: u16,
    /// The job that wrote them.
    pub job: JobId,
    /// Root pid of the dumped tree.
    pub pid: i32,
    /// Owner of the dumped process.
    pub uid: u32,
    /// CRIU was told the root is a shell job (restore must say so too).
    pub shell_job: bool,
    /// Established TCP connections were dumped.
    pub tcp_established: bool,
    /// File locks were dumped.
    pub file_locks: bool,
    /// External unix sockets were allowed.
    pub ext_unix_sk: bool,
    /// Primary gid of the dumped process.
    #[serde(default)]
    pub gid: u32,
    /// Its supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
    /// Every task of the dumped tree (pids as the service saw them).
    #[serde(default)]
    pub pids: Vec<i32>,
    /// When the dump ended (seconds since the Unix epoch).
    #[serde(default)]
    pub created_unix: u64,
    /// The host (`uname` node name) and its boot id.
    #[serde(default)]
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` of that host at the time.
    #[serde(default)]
    pub boot_id: String,
    /// The dump is of a whole pid namespace: its root is the namespace's
    /// init, and each restore makes a fresh pid namespace (so many copies
    /// can run at once). Older images lack it: `false`.
    #[serde(default)]
    pub pid_namespace: bool,
    /// The caller's copy slot as CRIU names it (`pipe:[INODE]`), for
    /// `--inherit-fd`; see `DumpOptions::copy_slot_fd`. Older images lack it.
    #[serde(default)]
    pub copy_slot: Option<String>,
    /// The generation the images were committed as (a directory of that
    /// name in the images directory). Older images lack it.
    #[serde(default)]
    pub generation: Option<String>,
    /// What the checkpoint needs of the host that restores it (checked
    /// before CRIU runs). Older images lack it.
    #[serde(default)]
    pub needs: Option<super::host_needs::HostNeeds>,
}

impl ImageMeta {
    /// The credentials of the dumped process's owner.
    pub(crate) fn owner(&self) -> Credentials {
        Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

/// What the published images hold.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Bytes of all image files.
    pub bytes: u64,
    /// Microseconds `syncfs` took.
    pub sync_us: u64,
    /// CRIU's own statistics, if it wrote them.
    pub stats: Option<criu_entries::DumpStatsEntry>,
    /// Tasks in the dumped tree.
    pub processes: u32,
}

impl Published {
    /// Adds what a later `Staging::save` or `Staging::publish` moved.
    pub fn and(self, later: Published) -> Published {
        Published {
            bytes: self.bytes + later.bytes,
            sync_us: self.sync_us + later.sync_us,
            stats: later.stats.or(self.stats),
            processes: self.processes.max(later.processes),
        }
    }
}

/// The names in a directory (but `.` and `..`), read through its fd.
pub(crate) fn entry_names(dir: &impl AsFd) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads a small image file from `dir`, if it is there and a regular file
/// (never a symlink followed, never a FIFO waited on).
pub fn read_image(dir: &impl AsFd, name: &str) -> Option<Vec<u8>> {
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&file).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(&file, &mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
        if out.len() > 16 << 20 {
            return None;
        }
    }
}

/// The protobuf entries of a CRIU image: after two u32 magics, each entry
/// is a little-endian u32 length and that many bytes.
pub fn entries(image: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = image.get(8..).unwrap_or_default();
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let entry = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(entry)
    })
}

pub(crate) fn first_entry(image: &[u8]) -> Option<&[u8]> {
    entries(image).next()
}

/// CRIU's statistics of a dump, from its `stats-dump` in `dir`, if there.
pub(crate) fn dump_stats(dir: &impl AsFd) -> Option<criu_entries::DumpStatsEntry> {
    use prost::Message;
    let bytes = read_image(dir, "stats-dump")?;
    criu_entries::StatsEntry::decode(first_entry(&bytes)?)
        .ok()?
        .dump
}

/// Whether only root can write the file of `stat`: root's, and neither
/// group- nor other-writable. That covers ACLs too: with an access ACL the
/// mode's group bits are its mask, which bounds every named user and
/// group entry, so a mask without write leaves write to the owner alone.
/// Such a file is hard-linked, never copied, into the private directory
/// (`Verified::take`, and a generation's files when it is made), and
/// `Verified::recheck` requires it of every file there.
pub(crate) fn only_root_writes(stat: &rustix::fs::Stat) -> bool {
    stat.st_uid == 0 && stat.st_mode & 0o022 == 0
}

/// Copies `size` bytes of `src` into a new file `name` of `dir`.
pub(crate) fn copy(src: &OwnedFd, dir: &impl AsFd, name: &str, size: u64) -> io::Result<OwnedFd> {
    let dst = rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    let mut done = 0u64;
    while done < size {
        let mut off_in = done;
        let n = rustix::fs::copy_file_range(
            src,
            Some(&mut off_in),
            &dst,
            None,
            (size - done) as usize,
        )?;
        if n == 0 {
            return Err(io::Error::other("file shrank while it was copied"));
        }
        done += n as u64;
    }
    Ok(dst)
}

/// Writes all of `bytes` to `file`; a short write is a full disk.
pub(crate) fn write_all(file: &impl AsFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = rustix::io::write(file, bytes)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "short write"));
        }
        bytes = &bytes[n..];
    }
    Ok(())
}
/// A plain file name: not empty, not `.` or `..`, without `/` or NUL, at
/// most 255 bytes.
pub(crate) fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        for bad in ["", ".", "..", "a/b", "/", "a\0"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        assert!(!plain_name(&"x".repeat(256)));
        assert!(plain_name("pages-1.img"));
    }
}
