//! A checkpoint of a non-root process is restored by CRIU running as the
//! checkpoint's owner (`criu restore --unprivileged`), never as root.
//!
//! Why: CRIU reopens the files a checkpoint recorded (`files.img`) by
//! path. The signature proves the paths are the dumped ones, not that
//! they still lead where they led: an owner could since have put a symlink
//! to a file of root's at such a path. Run as the owner, CRIU opens them
//! with the owner's rights, and such a symlink gets it nothing.
//!
//! The owner's CRIU holds only `CAP_CHECKPOINT_RESTORE` (to choose pids
//! and restore memory maps) and `CAP_SETPCAP` (to drop bounding-set
//! capabilities the images' tasks did not have), as ambient capabilities;
//! the restored tasks end with the credentials their images hold, which
//! the verification checked are the owner's, without capabilities. It
//! reaches the verified images and its work directory only through fds it
//! inherits (`/proc/self/fd/N`): both live under directories of root's,
//! and the owner gets read access to the verified files (a POSIX ACL
//! entry for its uid alone), never write access.

use rustix::process::{Gid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::process::Command;

/// Who the owner's CRIU runs as.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) groups: Vec<u32>,
}

/// The only capabilities the owner's CRIU holds.
const CAPS: CapabilitySet = CapabilitySet::CHECKPOINT_RESTORE.union(CapabilitySet::SETPCAP);

/// Makes `cmd` run as `owner` with only [`CAPS`], ambient, keeping the
/// fds `inherit` open across the exec.
pub(super) fn run_as(cmd: &mut Command, owner: &Owner, inherit: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<Gid> = owner.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
    // SAFETY: between fork and exec only raw system calls run (rustix
    // makes them directly), on fds that exist in the child; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), rustix::io::FdFlags::empty())?;
            }
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_keep_capabilities(true)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            rustix::thread::set_capabilities(
                None,
                CapabilitySets {
                    effective: CAPS,
                    permitted: CAPS,
                    inheritable: CAPS,
                },
            )?;
            for cap in [CapabilitySet::CHECKPOINT_RESTORE, CapabilitySet::SETPCAP] {
                rustix::thread::configure_capability_in_ambient_set(cap, true)?;
            }
            rustix::thread::set_keep_capabilities(false)?;
            Ok(())
        });
    }
}

/// Lets `uid` read (and, for a directory, search) a file of root's,
/// through a POSIX ACL entry for that uid alone; nobody else gains
/// anything, and nobody but root can write.
pub(super) fn grant_read(file: &impl AsFd, uid: u32, directory: bool) -> io::Result<()> {
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED: u32 = u32::MAX;
    let (own, theirs) = if directory { (7, 5) } else { (6, 4) };
    let mut acl = 2u32.to_le_bytes().to_vec(); // POSIX_ACL_XATTR_VERSION
    for (tag, perm, id) in [
        (USER_OBJ, own, UNDEFINED),
        (USER, theirs, uid),
        (GROUP_OBJ, 0, UNDEFINED),
        (MASK, theirs, UNDEFINED),
        (OTHER, 0, UNDEFINED),
    ] {
        acl.extend_from_slice(&u16::to_le_bytes(tag));
        acl.extend_from_slice(&u16::to_le_bytes(perm));
        acl.extend_from_slice(&id.to_le_bytes());
    }
    rustix::fs::fsetxattr(
        file,
        "system.posix_acl_access",
        &acl,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot give uid {uid} read access to the verified images (POSIX ACLs: {e}); \
                 a non-root checkpoint restores only on a filesystem with ACLs"
            ),
        )
    })
}
