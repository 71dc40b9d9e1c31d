//! Who may ask for a dump, and whether a caller may be dumped at all.

use super::peer::Peer;
use rustix::fs::{FileType, Stat};
use std::collections::BTreeSet;

/// Which callers may ask for a checkpoint. The socket's own mode and owner
/// are the first gate; this is the second. The default allows root only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Uids allowed besides root.
    pub allow_uids: BTreeSet<u32>,
    /// Callers with one of these gids (primary or supplementary) are allowed.
    pub allow_gids: BTreeSet<u32>,
    /// Allow every caller that can connect (the socket's permissions decide).
    pub allow_any: bool,
}

/// What is known of a caller once its `/proc` status has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gids.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capability set.
    pub cap_eff: u64,
}

impl Caller {
    /// Reads a caller's ids from its `/proc/<pid>/status`.
    pub fn read(peer: &Peer) -> std::io::Result<Self> {
        Self::parse(&peer.read_proc("status")?)
            .ok_or_else(|| std::io::Error::other("unreadable /proc status of the caller"))
    }

    /// Parses the text of `/proc/<pid>/status`.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            v.try_into().ok()
        };
        Some(Self {
            uids: ids("Uid:")?,
            gids: ids("Gid:")?,
            groups: field("Groups:")?
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
            cap_eff: u64::from_str_radix(&field("CapEff:")?, 16).ok()?,
        })
    }

    /// The effective uid.
    pub fn uid(&self) -> u32 {
        self.uids[1]
    }

    /// Whether `gid` is one of the caller's groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gids[1] == gid || self.groups.contains(&gid)
    }
}

impl Policy {
    /// Root only.
    pub fn root_only() -> Self {
        Self::default()
    }

    /// Whether this caller may ask at all; the error says why not.
    pub fn admit(&self, caller: &Caller) -> Result<(), String> {
        let uid = caller.uid();
        if self.allow_any
            || uid == 0
            || self.allow_uids.contains(&uid)
            || self.allow_gids.iter().any(|&g| caller.in_group(g))
        {
            Ok(())
        } else {
            Err(format!(
                "uid {uid} is not allowed to checkpoint through this service; \
                 the operator can allow it with `selfdump serve --allow-uid {uid}`"
            ))
        }
    }
}

/// Refuses callers that could hand the service more than they could reach
/// themselves: changed ids (setuid/setgid), or, for non-root callers, any
/// effective capability, or a `/proc` entry not owned by the caller (not
/// dumpable).
pub fn check_dumpable(caller: &Caller, proc_dir: &Stat, what: &str) -> Result<(), String> {
    let [ruid, ..] = caller.uids;
    if caller.uids.iter().any(|&u| u != ruid) || caller.gids.iter().any(|&g| g != caller.gids[0]) {
        return Err(format!(
            "{what} has changed ids (uids {:?}, gids {:?}; setuid or setgid): not dumpable",
            caller.uids, caller.gids
        ));
    }
    if ruid != 0 {
        if caller.cap_eff != 0 {
            return Err(format!(
                "{what} runs as uid {ruid} with capabilities {:#x}: not dumpable by an unprivileged caller",
                caller.cap_eff
            ));
        }
        if proc_dir.st_uid != ruid {
            return Err(format!("{what} is not dumpable (PR_SET_DUMPABLE is off)"));
        }
    }
    Ok(())
}

/// Whether a caller may create files in a directory, from its mode bits
/// (the caller needs write and search permission).
pub fn may_write_dir(caller: &Caller, dir: &Stat) -> Result<(), String> {
    if FileType::from_raw_mode(dir.st_mode) != FileType::Directory {
        return Err("the images fd is not a directory".into());
    }
    let uid = caller.uid();
    if uid == 0 {
        return Ok(());
    }
    let mode = dir.st_mode;
    let bits = if dir.st_uid == uid {
        (mode >> 6) & 0o3
    } else if caller.in_group(dir.st_gid) {
        (mode >> 3) & 0o3
    } else {
        mode & 0o3
    };
    if bits == 0o3 {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} may not create files in the images directory"
        ))
    }
}
