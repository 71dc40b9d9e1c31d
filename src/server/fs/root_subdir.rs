//! A private directory of root's inside a caller's directory, made and
//! removed under the filesystem rule (see `as_caller.rs`): the staging
//! directory CRIU dumps into, and the directory of verified images a
//! restore gives CRIU.
//!
//! - It is created with the caller's credentials (`mkdirat` on the
//!   caller's directory fd), so the kernel decides whether the caller may
//!   create there, under a random name.
//! - It is opened by the service with `O_NOFOLLOW | O_DIRECTORY` and
//!   verified to be a directory of the caller's (a swapped-in directory of
//!   its own is as good as the one it made), locked, then made root's, mode
//!   0700, ACLs removed, and checked empty *after* that, so nothing the
//!   caller put in beforehand stays. CRIU only ever sees this fd.
//! - Once nothing of root's works in it any more and it is empty, it is
//!   given back to the caller and removed by name with the caller's
//!   credentials: if the caller moved it, what is left is the caller's own
//!   empty directory.
//! - For a CRIU that runs as the caller ([`RootSubdir::nest_callers_dir`]),
//!   the files are in a directory of the caller's, [`CALLERS_DIR`], made by
//!   root inside this one (root's, 0700: no process of the caller's reaches
//!   it by path), and removed by root through this one's fd.

use crate::server::caller::credentials::Credentials;
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Filesystems an images directory must not be on, by `statfs` magic,
/// and why. FUSE: its owner's daemon answers every lookup, symlinks
/// included. The others are not directories of files: a `mkdir` makes a
/// cgroup, a resource group or a configfs item there, and their files
/// are the kernel's knobs.
const REFUSED_FILESYSTEMS: &[(i64, &str)] = &[
    (
        0x6573_5546,
        "a FUSE filesystem, whose owner decides what root's writes reach there",
    ),
    (
        0x0027_e0eb,
        "cgroup (a pseudo filesystem: a directory there is a cgroup)",
    ),
    (
        0x6367_7270,
        "cgroup2 (a pseudo filesystem: a directory there is a cgroup)",
    ),
    (
        0x0765_5821,
        "resctrl (a pseudo filesystem: a directory there is a resource group)",
    ),
    (
        0x6265_6570,
        "configfs (a pseudo filesystem: a directory there is a kernel object)",
    ),
    (0x9fa0, "proc (a pseudo filesystem)"),
    (0x6265_6572, "sysfs (a pseudo filesystem)"),
    (0x6462_6720, "debugfs (a pseudo filesystem)"),
    (0x7472_6163, "tracefs (a pseudo filesystem)"),
    (0xcafe_4a11, "bpf (a pseudo filesystem)"),
    (0x7363_6673, "securityfs (a pseudo filesystem)"),
    (0x6165_676c, "pstore (a pseudo filesystem)"),
    (0x1cd1, "devpts (a pseudo filesystem)"),
    (0xde5e_81e4, "efivarfs (a pseudo filesystem)"),
    (0x4249_4e4d, "binfmt_misc (a pseudo filesystem)"),
    (0x6573_5543, "fusectl (a pseudo filesystem)"),
    (0x1980_0202, "mqueue (a pseudo filesystem)"),
    (0xf97c_ff8c, "selinuxfs (a pseudo filesystem)"),
    (0x4341_5d53, "smackfs (a pseudo filesystem)"),
    (0x6e66_7364, "nfsd (a pseudo filesystem)"),
    (0x6759_6969, "rpc_pipefs (a pseudo filesystem)"),
];

/// Refuses a directory on a filesystem that is not one of files
/// ([`REFUSED_FILESYSTEMS`]), with the reason, before anything is made in it.
pub(crate) fn check_filesystem(dir: &impl AsFd) -> io::Result<()> {
    let kind = rustix::fs::fstatfs(dir)?.f_type as i64;
    match REFUSED_FILESYSTEMS.iter().find(|(magic, _)| *magic == kind) {
        None => Ok(()),
        Some((_, what)) => Err(io::Error::other(format!(
            "the images directory is on {what}; use a directory on a local filesystem of \
             files (ext4, xfs, btrfs, tmpfs, ...)"
        ))),
    }
}

/// The directory of the caller's nested in a staging directory for a CRIU
/// that runs as the caller.
pub(crate) const CALLERS_DIR: &str = "criu";

/// See the module docs.
#[derive(Debug)]
pub(crate) struct RootSubdir {
    pub(crate) parent: OwnedFd,
    pub(crate) name: String,
    /// Where the files are: the directory itself, or the caller's
    /// [`CALLERS_DIR`] in it.
    pub(crate) dir: OwnedFd,
    pub(crate) creds: Credentials,
    /// The directory itself, when `dir` is the caller's nested one.
    outer: Option<OwnedFd>,
}

impl RootSubdir {
    /// Creates `<prefix><random>` inside `parent`, and holds an `flock` on
    /// it while it lives; `between` runs between the `mkdir` and the `open`,
    /// where a caller would swap the name (for tests).
    pub(crate) fn create(
        parent: OwnedFd,
        prefix: &str,
        creds: Credentials,
        between: impl FnOnce(&str),
    ) -> io::Result<Self> {
        check_filesystem(&parent)?;
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = format!("{prefix}{:016x}", u64::from_le_bytes(random));
        creds
            .run(|| rustix::fs::mkdirat(&parent, name.as_str(), Mode::RWXU))?
            .map_err(|e| match e {
                rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => io::Error::other(format!(
                    "uid {} may not create files in the images directory",
                    creds.uid
                )),
                e => e.into(),
            })?;
        between(&name);
        let dir = rustix::fs::openat(
            &parent,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&dir)?;
        if stat.st_uid != creds.uid {
            return Err(io::Error::other(format!(
                "{name} was replaced by a directory of uid {} while it was made",
                stat.st_uid
            )));
        }
        make_roots(&dir)?;
        let subdir = Self {
            parent,
            name,
            dir,
            creds,
            outer: None,
        };
        let entries = subdir.names()?;
        if !entries.is_empty() {
            let _ = subdir.give_back();
            return Err(io::Error::other(format!(
                "{} was filled ({}) while it was made",
                subdir.name,
                entries.join(", ")
            )));
        }
        Ok(subdir)
    }

    /// Makes [`CALLERS_DIR`] inside this (still empty) directory, owned by
    /// the caller, mode 0700, and makes it where the files are: a CRIU that
    /// runs as the caller writes there. The caller reaches it by no path
    /// (its parent is root's, mode 0700), so only that CRIU, given its fd,
    /// can write there.
    pub(crate) fn nest_callers_dir(&mut self) -> io::Result<()> {
        if self.outer.is_some() {
            return Ok(());
        }
        rustix::fs::mkdirat(&self.dir, CALLERS_DIR, Mode::RWXU)?;
        let inner = rustix::fs::openat(
            &self.dir,
            CALLERS_DIR,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        rustix::fs::fchown(
            &inner,
            Some(Uid::from_raw(self.creds.uid)),
            Some(Gid::from_raw(self.creds.gid)),
        )?;
        self.outer = Some(std::mem::replace(&mut self.dir, inner));
        Ok(())
    }

    /// Where the files are (see [`Self::nest_callers_dir`]).
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The directory named `name` in the parent.
    fn own(&self) -> BorrowedFd<'_> {
        self.outer.as_ref().unwrap_or(&self.dir).as_fd()
    }

    /// Its entries' names.
    pub(crate) fn names(&self) -> io::Result<Vec<String>> {
        crate::server::images::format::entry_names(&self.dir)
    }

    /// Removes every entry, through the directory's fd.
    pub(crate) fn empty(&self) {
        for name in self.names().unwrap_or_default() {
            if let Err(e) = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty()) {
                log::warn!("cannot remove {name} from {}: {e}", self.name);
            }
        }
    }

    /// Removes the (empty) directory. With `nothing_runs_in_it` (CRIU has
    /// exited) it is first given back to the caller and then removed with
    /// the caller's credentials, so a caller that moved it away keeps an
    /// empty directory of its own, never one of root's. While CRIU may
    /// still write into it, it stays root's and is removed by name as root:
    /// `rmdir` only takes an empty directory, and to put one under this
    /// name the caller must have been able to remove it anyway.
    pub(crate) fn remove(&self, nothing_runs_in_it: bool) {
        if let Some(outer) = &self.outer
            && let Err(e) = rustix::fs::unlinkat(outer, CALLERS_DIR, AtFlags::REMOVEDIR)
        {
            log::warn!("cannot remove {}/{CALLERS_DIR}: {e}", self.name);
        }
        let rmdir = || rustix::fs::unlinkat(&self.parent, self.name.as_str(), AtFlags::REMOVEDIR);
        let empty =
            crate::server::images::format::entry_names(&self.own()).is_ok_and(|n| n.is_empty());
        let removed = match nothing_runs_in_it && empty {
            true => self
                .give_back()
                .map_err(io::Error::from)
                .and_then(|()| self.creds.run(rmdir)?.map_err(io::Error::from)),
            false => rmdir().map_err(io::Error::from),
        };
        if let Err(e) = removed {
            log::warn!("cannot remove {}: {e}", self.name);
        }
    }

    /// Gives the directory to the caller (owner and group).
    pub(crate) fn give_back(&self) -> rustix::io::Result<()> {
        rustix::fs::fchown(
            self.own(),
            Some(Uid::from_raw(self.creds.uid)),
            Some(Gid::from_raw(self.creds.gid)),
        )
    }
}

/// Removes the directory `name` of `parent` whose fd is `dir`, with
/// `creds` (its owner's): its entries (files only: a subdirectory makes
/// the `rmdir` fail, and it stays), then itself, by name. A name the
/// owner swapped meanwhile gets the owner nothing it could not do itself.
pub(crate) fn remove_dir_as(
    creds: &Credentials,
    parent: &(impl AsFd + Sync),
    name: &str,
    dir: &(impl AsFd + Sync),
) -> io::Result<()> {
    let names = crate::server::images::format::entry_names(dir)?;
    creds.run(|| {
        for entry in &names {
            if let Err(e) = rustix::fs::unlinkat(dir, entry.as_str(), AtFlags::empty()) {
                log::warn!("cannot remove {name}/{entry}: {e}");
            }
        }
        rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
    })??;
    Ok(())
}

/// Locks a directory, then makes it root's, mode 0700, without ACLs. The
/// lock comes first: an unlocked root-owned staging directory is a dead
/// service's, for `leftovers` to remove.
fn make_roots(dir: &OwnedFd) -> io::Result<()> {
    rustix::fs::flock(dir, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    rustix::fs::fchown(dir, Some(Uid::ROOT), Some(Gid::ROOT))?;
    rustix::fs::fchmod(dir, Mode::RWXU)?;
    for acl in ["system.posix_acl_access", "system.posix_acl_default"] {
        match rustix::fs::fremovexattr(dir, acl) {
            Ok(()) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
