//! What `/proc/<pid>/status` says of a task: its ids, groups,
//! capabilities and whether it is a zombie.

use super::credentials::Credentials;
use super::process::Process;

/// One kind of id of a task (uids, or gids), as the kernel lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) real: u32,
    pub(crate) effective: u32,
    pub(crate) saved: u32,
    pub(crate) filesystem: u32,
}

impl Ids {
    /// The same id four times.
    #[cfg(test)]
    pub(crate) fn all(id: u32) -> Self {
        Self::from([id; 4])
    }

    /// Real, effective, saved and filesystem, in the kernel's order.
    pub(crate) fn as_array(self) -> [u32; 4] {
        [self.real, self.effective, self.saved, self.filesystem]
    }

    /// Whether all four are one id: no setuid or setgid change.
    pub(crate) fn unchanged(self) -> bool {
        self.as_array().iter().all(|&id| id == self.real)
    }

    /// Whether the real, effective and saved ids are all `id` (what the
    /// kernel's ptrace check compares).
    pub(crate) fn are(self, id: u32) -> bool {
        [self.real, self.effective, self.saved] == [id; 3]
    }
}

impl From<[u32; 4]> for Ids {
    fn from([real, effective, saved, filesystem]: [u32; 4]) -> Self {
        Self {
            real,
            effective,
            saved,
            filesystem,
        }
    }
}

/// A task's capability sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Caps {
    pub(crate) effective: u64,
    pub(crate) permitted: u64,
    pub(crate) ambient: u64,
}

/// What is known of a task once its `/proc` status has been read: of the
/// caller, or of any task of its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskStatus {
    pub(crate) uids: Ids,
    pub(crate) gids: Ids,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
    pub(crate) caps: Caps,
    /// The task is a zombie (it exited and was not reaped yet): it has no
    /// memory, and its `/proc` files are root's whatever its dumpability.
    pub(crate) zombie: bool,
}

impl TaskStatus {
    /// Reads a process's status; fails if it exited meanwhile.
    pub(crate) fn read(process: &Process) -> std::io::Result<Self> {
        Self::parse(&process.read("status")?)
            .ok_or_else(|| std::io::Error::other("unreadable /proc status of the caller"))
    }

    /// Parses the text of `/proc/<pid>/status`.
    pub(crate) fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let ids = |name: &str| -> Option<Ids> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            <[u32; 4]>::try_from(v).ok().map(Ids::from)
        };
        let caps = |name: &str| u64::from_str_radix(&field(name)?, 16).ok();
        Some(Self {
            uids: ids("Uid:")?,
            gids: ids("Gid:")?,
            groups: field("Groups:")?
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
            caps: Caps {
                effective: caps("CapEff:")?,
                permitted: caps("CapPrm:")?,
                ambient: caps("CapAmb:")?,
            },
            zombie: field("State:")?.starts_with('Z'),
        })
    }

    /// The effective uid.
    pub(crate) fn uid(&self) -> u32 {
        self.uids.effective
    }

    /// The effective gid.
    pub(crate) fn gid(&self) -> u32 {
        self.gids.effective
    }

    /// Whether `gid` is one of the task's groups.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid() == gid || self.groups.contains(&gid)
    }

    /// Its effective ids and groups: the rights it acts with (an admitted
    /// caller's ids are all equal).
    pub(crate) fn credentials(&self) -> Credentials {
        Credentials {
            uid: self.uid(),
            gid: self.gid(),
            groups: self.groups.clone(),
        }
    }
}
