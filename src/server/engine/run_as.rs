//! Starting CRIU as a user other than root: with that user's ids and
//! groups, a capability or two kept as ambient capabilities, the fds it
//! needs inherited and the service's environment left behind. The dump of
//! a non-root caller ([`Worker::start_as`](super::Worker::start_as)) and
//! the restore of a non-root checkpoint (`restore/as_owner.rs`) both start
//! their CRIU this way.

use crate::server::caller::credentials::Credentials;
use rustix::process::{Gid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets};
use std::os::fd::{BorrowedFd, RawFd};
use std::process::Command;

/// The only capability a dumping CRIU that runs as its caller holds.
pub(crate) const DUMP_CAPS: CapabilitySet = CapabilitySet::CHECKPOINT_RESTORE;

/// `PATH` of a CRIU started as a user (it runs no other program on the
/// paths selfdump uses, but a helper it might start finds the usual ones).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a CRIU started as a user ([`Credentials::apply`]) keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep<'a> {
    /// Its capabilities: effective, permitted, inheritable and ambient.
    pub(crate) caps: CapabilitySet,
    /// Nothing it executes can gain a privilege: its bounding set is cut
    /// down to `caps` and `no_new_privs` is set (a dump; a restore keeps
    /// both as they are, since its restored tasks inherit them).
    pub(crate) confine: bool,
    /// Fds it inherits, at the same numbers (it reaches directories as
    /// `/proc/self/fd/N`: a root service's own `/proc` entries are closed to it).
    pub(crate) fds: &'a [BorrowedFd<'a>],
    /// `XDG_RUNTIME_DIR`, where an unprivileged CRIU looks for its
    /// kernel-feature cache (see [`kdat`](super::kdat)).
    pub(crate) runtime_dir: Option<&'a std::path::Path>,
}

impl Credentials {
    /// Makes `cmd` run as this user, keeping `keep`. The environment is
    /// cleared (the service's may hold secrets, and `HOME` would make CRIU
    /// read the user's own CRIU configuration file) but for `PATH` and
    /// [`QUIET_TLS`](super::criu::QUIET_TLS).
    pub(crate) fn apply(&self, cmd: &mut Command, keep: Keep<'_>) {
        use std::os::unix::process::CommandExt;
        let quiet = super::criu::QUIET_TLS;
        cmd.env_clear().env("PATH", PATH).env(quiet.0, quiet.1);
        if let Some(dir) = keep.runtime_dir {
            cmd.env("XDG_RUNTIME_DIR", dir);
        }
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        let inherit: Vec<RawFd> = keep.fds.iter().map(|fd| raw(*fd)).collect();
        let (caps, confine) = (keep.caps, keep.confine);
        let last_cap = last_capability();
        // SAFETY: between fork and exec only raw system calls run (rustix
        // makes them directly), on fds that exist in the child; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    let fd = BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                if confine {
                    cut_bounding_set(caps, last_cap)?;
                    rustix::thread::set_no_new_privs(true)?;
                }
                become_user(&groups, uid, gid, caps)
            });
        }
    }
}

fn raw(fd: BorrowedFd<'_>) -> RawFd {
    std::os::fd::AsRawFd::as_raw_fd(&fd)
}

/// Switches every id of the calling (single-threaded, forked) process to
/// the user's, keeping `caps` as its only capabilities, ambient so that
/// they survive the exec.
fn become_user(groups: &[Gid], uid: Uid, gid: Gid, caps: CapabilitySet) -> std::io::Result<()> {
    rustix::thread::set_thread_groups(groups)?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_keep_capabilities(true)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: caps,
            permitted: caps,
            inheritable: caps,
        },
    )?;
    for bit in 0..64 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if caps.contains(cap) {
            rustix::thread::configure_capability_in_ambient_set(cap, true)?;
        }
    }
    rustix::thread::set_keep_capabilities(false)?;
    Ok(())
}

/// Drops every capability but `caps` from the bounding set (needs
/// `CAP_SETPCAP`, which root holds until it changes uid).
fn cut_bounding_set(caps: CapabilitySet, last_cap: u32) -> std::io::Result<()> {
    for bit in 0..=last_cap {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if !caps.contains(cap) {
            rustix::thread::remove_capability_from_bounding_set(cap)?;
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    crate::procfs::PROC
        .read_file("sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// Why this service cannot start a CRIU as another user with `caps`, if
/// it cannot: the kernel does not know a capability (`CAP_CHECKPOINT_RESTORE`
/// came with Linux 5.9), or the service's bounding or permitted set lacks it
/// or the capabilities the switch of ids needs.
pub(crate) fn cannot_grant(caps: CapabilitySet) -> Option<String> {
    const NEEDED: CapabilitySet = CapabilitySet::SETUID
        .union(CapabilitySet::SETGID)
        .union(CapabilitySet::SETPCAP);
    for bit in 0..64 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if !caps.contains(cap) {
            continue;
        }
        match rustix::thread::capability_is_in_bounding_set(cap) {
            Err(rustix::io::Errno::INVAL) => {
                return Some(format!(
                    "this kernel has no capability {bit} ({}; Linux 5.9 or newer has it)",
                    cap_name(bit)
                ));
            }
            Ok(false) => {
                return Some(format!(
                    "the service's capability bounding set lacks {} (a container, or \
                     systemd's CapabilityBoundingSet=, took it away)",
                    cap_name(bit)
                ));
            }
            _ => {}
        }
    }
    let permitted = rustix::thread::capabilities(None).ok()?.permitted;
    let missing = (caps | NEEDED) - permitted;
    let names: Vec<&str> = (0..64)
        .filter(|bit| missing.contains(CapabilitySet::from_bits_retain(1 << bit)))
        .map(cap_name)
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "the service lacks {}, which it needs to start CRIU as another user",
            names.join(", ")
        )
    })
}

fn cap_name(bit: u32) -> &'static str {
    match bit {
        6 => "CAP_SETGID",
        7 => "CAP_SETUID",
        8 => "CAP_SETPCAP",
        40 => "CAP_CHECKPOINT_RESTORE",
        _ => "a capability",
    }
}
