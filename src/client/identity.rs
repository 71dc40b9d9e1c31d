//! Which kernel task is this? A copy restored by CRIU keeps its pid but is a
//! new task: its start time changes, and so does its pidfd inode (pidfs,
//! Linux 6.9+); on another host, the boot id changes too.

use crate::procfs::PROC;
use rustix::process::{PidfdFlags, getpid, pidfd_open};

/// This process's identity as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    boot_id: String,
    start_time: Option<u64>,
    pidfd_inode: Option<u64>,
}

impl Identity {
    pub(crate) fn current() -> Self {
        Self {
            boot_id: PROC
                .read_file("sys/kernel/random/boot_id")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            start_time: PROC.read("self", "stat").ok().and_then(|s| start_time(&s)),
            pidfd_inode: pidfd_open(getpid(), PidfdFlags::empty())
                .and_then(|fd| rustix::fs::fstat(&fd))
                .ok()
                .map(|st| st.st_ino),
        }
    }
}

/// The start time in clock ticks after boot, from `/proc/<pid>/stat`.
fn start_time(stat: &str) -> Option<u64> {
    crate::procfs::field(stat, crate::procfs::START_TIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        assert_eq!(start_time(stat), Some(987654));
    }

    #[test]
    fn same_process_has_same_identity() {
        assert_eq!(Identity::current(), Identity::current());
        assert!(Identity::current().start_time.is_some());
    }
}
