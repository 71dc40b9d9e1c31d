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

use crate::server::caller::credentials::Credentials;
use crate::server::engine::kdat::{UNPRIVILEGED_DIR, UNPRIVILEGED_FILE};
use crate::server::engine::run_as::Keep;
use rustix::thread::CapabilitySet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::Command;

/// The only capabilities the owner's CRIU holds.
const CAPS: CapabilitySet = CapabilitySet::CHECKPOINT_RESTORE.union(CapabilitySet::SETPCAP);

/// Makes `cmd` run as `owner` with only [`CAPS`], ambient, keeping the
/// fds `inherit` open across the exec; it finds the kernel-feature cache
/// of unprivileged CRIUs if a service made one (see
/// [`kdat`](crate::server::engine::kdat)).
pub(super) fn run_as(cmd: &mut Command, owner: &Credentials, inherit: &[BorrowedFd<'_>]) {
    let cache = Path::new(UNPRIVILEGED_FILE).exists();
    owner.apply(
        cmd,
        Keep {
            caps: CAPS,
            // its restored tasks inherit the bounding set and no_new_privs
            confine: false,
            fds: inherit,
            runtime_dir: cache.then(|| Path::new(UNPRIVILEGED_DIR)),
        },
    );
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
