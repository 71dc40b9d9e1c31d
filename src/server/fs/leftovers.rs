//! Staging directories left behind by a service that died mid-dump (killed
//! with SIGKILL, or crashed): its `Drop` cleanup never ran, so a root-owned
//! `.selfdump-<job>` directory with partial images stays in the caller's
//! directory. The next checkpoint into the same directory removes it.
//!
//! A live staging directory is `flock`ed by the service writing into it for
//! as long as the dump runs (`Staging::create`), and the kernel drops that
//! lock when the service dies. So a
//! `.selfdump-*` entry that is a directory of root's, mode 0700, and that
//! can be locked, belongs to no running dump. Callers cannot open such a
//! directory, so they cannot hold its lock, and they cannot create one.
//! Only its direct entries are removed, and those of the caller's directory
//! a CRIU running as the caller wrote into (`root_subdir::CALLERS_DIR`, files
//! only), through the directories' fds: nothing is looked up by path below
//! the caller's directory. Any other subdirectory means it is not a staging
//! directory, and it is left alone, whole (it is looked at before anything
//! in it is removed).
//!
//! The directory itself is then removed by name, as root, and stays root's
//! until then: the CRIU of the dead service may still be writing into it
//! (it notices its service is gone only at its next step), so it is not
//! given back to the caller as a finished dump's is. Removing by name obeys
//! the filesystem rule all the same: `rmdir` takes only an empty
//! directory, and to put one under this name the caller must have had the
//! right to remove it.
//!
//! Two more kinds of leftover, of the caller's own, go the same way but
//! with the caller's credentials, and only when the next checkpoint is the
//! same uid's: a generation directory given to the caller but not named
//! yet (`commit.rs`, killed after step 3), and the temporary symlink of a
//! switch of `latest` (killed after step 6), stale once the generation it
//! names is unlocked (its committer holds the lock until the switch).

use crate::server::caller::credentials::Credentials;
use crate::server::fs::root_subdir::{CALLERS_DIR, remove_dir_as};
use rustix::fs::{AtFlags, Dir, FileType, FlockOperation, Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Removes the stale leftovers in `parent` (see the module docs), except
/// those named after jobs of `own_service` (this service's own are live
/// or cleaned up by their `Drop`). `creds` are the caller's. Returns the
/// names removed.
pub(crate) fn remove_stale(
    parent: impl AsFd,
    own_service: Option<&str>,
    creds: &Credentials,
) -> Vec<String> {
    let parent = parent.as_fd();
    let Ok(entries) = Dir::read_from(parent) else {
        return Vec::new();
    };
    let own = own_service.map(|s| format!(".selfdump-{s}-"));
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".selfdump-") || own.as_ref().is_some_and(|o| name.starts_with(o)) {
            continue;
        }
        let gone = if name.starts_with(".selfdump-latest-") {
            remove_if_stale_symlink(parent, &name, creds)
        } else {
            remove_if_stale(parent, &name, creds)
        };
        match gone {
            Ok(true) => {
                log::warn!("removed {name}, left by a selfdump service or restore that died");
                removed.push(name);
            }
            Ok(false) => {}
            Err(e) => log::warn!("cannot remove the stale {name}: {e}"),
        }
    }
    removed
}

fn remove_if_stale(parent: impl AsFd, name: &str, creds: &Credentials) -> io::Result<bool> {
    let parent = parent.as_fd();
    let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let roots = stat.st_uid == 0 && stat.st_mode & 0o7777 == 0o700;
    let callers = stat.st_uid == creds.uid && creds.uid != 0;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory || !(roots || callers) {
        return Ok(false);
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?;
    if rustix::fs::fstat(&dir)?.st_ino != stat.st_ino {
        return Ok(false); // swapped since the look
    }
    if rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(false); // a running dump's
    }
    if callers {
        remove_dir_as(creds, &parent, name, &dir)?;
        return Ok(true);
    }
    if !empty_staging(&dir)? {
        return Ok(false);
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(true)
}

/// The entries of a directory (but `.` and `..`) with their types.
/// Empties a dead service's staging directory `dir`, through its fd, if
/// it is one: files, and at most the caller's CRIU's directory of files
/// ([`CALLERS_DIR`]). Anything else is left as it was (whether it was
/// emptied). Everything is looked at before anything goes.
fn empty_staging(dir: &OwnedFd) -> io::Result<bool> {
    let entries = typed_entries(dir)?;
    let is_dir = |t: &FileType| *t == FileType::Directory;
    if entries.iter().any(|(n, t)| is_dir(t) && n != CALLERS_DIR) {
        return Ok(false);
    }
    let nested = match entries.iter().any(|(n, t)| is_dir(t) && n == CALLERS_DIR) {
        false => None,
        true => {
            let inner = rustix::fs::openat(
                dir,
                CALLERS_DIR,
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
                Mode::empty(),
            )?;
            let files = typed_entries(&inner)?;
            if files.iter().any(|(_, t)| is_dir(t)) {
                return Ok(false);
            }
            Some((inner, files))
        }
    };
    if let Some((inner, files)) = nested {
        for (file, _) in files {
            rustix::fs::unlinkat(&inner, file.as_str(), AtFlags::empty())?;
        }
        rustix::fs::unlinkat(dir, CALLERS_DIR, AtFlags::REMOVEDIR)?;
    }
    for (file, kind) in entries {
        if !is_dir(&kind) {
            rustix::fs::unlinkat(dir, file.as_str(), AtFlags::empty())?;
        }
    }
    Ok(true)
}

fn typed_entries(dir: &impl AsFd) -> io::Result<Vec<(String, FileType)>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push((name, entry.file_type()));
        }
    }
    Ok(out)
}

/// A `.selfdump-latest-*` symlink of the caller's whose generation is not
/// locked (or gone): its switch of `latest` died half way. Removed as the
/// caller.
fn remove_if_stale_symlink(parent: impl AsFd, name: &str, creds: &Credentials) -> io::Result<bool> {
    let parent = parent.as_fd();
    let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink || stat.st_uid != creds.uid {
        return Ok(false);
    }
    let target = rustix::fs::readlinkat(parent, name, Vec::new())?;
    let target = target.to_string_lossy().into_owned();
    if !crate::server::fs::generations::is_generation_name(&target) {
        return Ok(false);
    }
    match rustix::fs::openat(
        parent,
        target.as_str(),
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    ) {
        Ok(dir) if !crate::server::fs::generations::try_lock_exclusive(dir.as_fd()) => {
            return Ok(false);
        }
        Ok(_) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    creds.run(|| rustix::fs::unlinkat(parent, name, AtFlags::empty()))??;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    fn staging_like(parent: &std::path::Path, name: &str) -> std::path::PathBuf {
        let dir = parent.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        std::fs::write(dir.join("pages-1.img"), b"partial").unwrap();
        dir
    }

    #[test]
    fn only_unlocked_root_staging_directories_of_other_services_go() {
        if !rustix::process::geteuid().is_root() {
            return crate::test_skip::skip(
                crate::test_skip::Limit::NotRoot,
                "staging directories are root's",
            );
        }
        let parent = tempfile::tempdir().unwrap();
        let stale = staging_like(parent.path(), ".selfdump-aaaa-1");
        let live = staging_like(parent.path(), ".selfdump-bbbb-1");
        let own = staging_like(parent.path(), ".selfdump-cccc-7");
        let foreign = staging_like(parent.path(), ".selfdump-dddd-1");
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
        let loose = staging_like(parent.path(), ".selfdump-eeee-1");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nested = staging_like(parent.path(), ".selfdump-abab-1");
        std::fs::create_dir(nested.join("criu")).unwrap();
        std::fs::write(nested.join("criu/pages-1.img"), b"partial").unwrap();
        std::os::unix::fs::chown(nested.join("criu"), Some(65534), Some(65534)).unwrap();
        let other_subdir = staging_like(parent.path(), ".selfdump-acac-1");
        std::fs::create_dir(other_subdir.join("other")).unwrap();
        let target = staging_like(parent.path(), "elsewhere");
        std::os::unix::fs::symlink(&target, parent.path().join(".selfdump-ffff-1")).unwrap();
        let held = std::fs::File::open(&live).unwrap();
        rustix::fs::flock(&held, FlockOperation::LockExclusive).unwrap();

        let dir = std::fs::File::open(parent.path()).unwrap();
        let root = Credentials {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        let mut removed = remove_stale(&dir, Some("cccc"), &root);
        removed.sort();
        assert_eq!(
            removed,
            vec![
                ".selfdump-aaaa-1".to_string(),
                ".selfdump-abab-1".to_string()
            ]
        );
        assert!(!stale.exists() && !nested.exists());
        for kept in [&live, &own, &foreign, &loose, &target, &other_subdir] {
            assert!(kept.join("pages-1.img").exists(), "{kept:?} must stay");
        }

        drop(held); // its service died
        assert_eq!(
            remove_stale(&dir, Some("cccc"), &root),
            vec![".selfdump-bbbb-1".to_string()]
        );
    }
}
