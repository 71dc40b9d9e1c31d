//! Checkpoints made before generations: images directly in `DIR`. While
//! `DIR` has no `latest` they restore as they are. The first generation
//! committed into `DIR` adopts them, so that they are not lost and become
//! a generation like the others (listed, restorable by name, aged out by
//! retention in their turn):
//!
//! 1. before the new generation is named, the old files are hard-linked
//!    into a directory of their own, which is synced and renamed to a
//!    generation name of the old checkpoint's time (`latest` is not
//!    touched: until step 2 the old files are still whole where they were);
//! 2. once the new generation is committed, the old names in `DIR` that
//!    are links to the adopted files are removed.
//!
//! Every step is a name operation in `DIR`, so all of it runs with the
//! caller's credentials. Killed between the steps, the next commit finds
//! the adopted generation by its inodes and finishes step 2; images put
//! in `DIR` by hand once it has a `latest` are left alone.

use crate::server::caller::credentials::Credentials;
use crate::server::fs::generations;
use crate::server::images::format::entry_names;
use crate::server::images::manifest::{MANIFEST_FILE, Manifest, unsigned_extra};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, UNIX_EPOCH};

/// An adopted old checkpoint, whose old names in `DIR` go once the new
/// generation is committed ([`Adopted::finish`]).
#[derive(Debug)]
pub(crate) struct Adopted {
    name: String,
    files: Vec<String>,
}

/// Adopts the checkpoint directly in `parent`, if there is one (step 1 of
/// the module docs). A failure is logged: the old files then stay where
/// they are, untouched, and the new generation is committed all the same.
pub(crate) fn prepare(parent: &OwnedFd, creds: &Credentials) -> Option<Adopted> {
    match creds.run(|| adopt(parent)) {
        Ok(Ok(adopted)) => adopted,
        Ok(Err(e)) | Err(e) => {
            log::warn!("cannot adopt the checkpoint made before generations: {e}");
            None
        }
    }
}

impl Adopted {
    /// Removes the old names of the adopted files from `parent` (step 2),
    /// those that are still links to them.
    pub(crate) fn finish(self, parent: &OwnedFd, creds: &Credentials) {
        let removed = creds.run(|| {
            for file in &self.files {
                let inside = format!("{}/{file}", self.name);
                if same_inode(parent, file, &inside) {
                    let _ = rustix::fs::unlinkat(parent, file.as_str(), AtFlags::empty());
                }
            }
        });
        match removed {
            Ok(()) => log::info!(
                "the checkpoint made before generations is now generation {}",
                self.name
            ),
            Err(e) => log::warn!("cannot finish adopting {}: {e}", self.name),
        }
    }
}

/// Runs as the caller. See [`prepare`].
fn adopt(parent: &OwnedFd) -> io::Result<Option<Adopted>> {
    let files = old_files(parent)?;
    let Some(anchor) = [MANIFEST_FILE, "pstree.img"]
        .into_iter()
        .find(|a| files.iter().any(|f| f == a))
    else {
        return Ok(None);
    };
    for name in generations::list(parent)? {
        if same_inode(parent, anchor, &format!("{name}/{anchor}")) {
            return Ok(Some(Adopted { name, files }));
        }
    }
    if generations::read_latest(parent)?.is_some() {
        return Ok(None); // put there by hand since: not ours to move
    }
    let name = generations::name_at(made_at(parent, anchor)?, random()?);
    let temporary = format!(".selfdump-adopt-{:08x}", random()?);
    rustix::fs::mkdirat(parent, temporary.as_str(), Mode::RWXU)?;
    let linked = link_all(parent, &temporary, &files).and_then(|()| {
        rustix::fs::renameat_with(
            parent,
            temporary.as_str(),
            parent,
            name.as_str(),
            RenameFlags::NOREPLACE,
        )?;
        Ok(rustix::fs::fsync(parent)?)
    });
    if let Err(e) = linked {
        if let Ok(dir) = open_dir(parent, &temporary) {
            for file in entry_names(&dir).unwrap_or_default() {
                let _ = rustix::fs::unlinkat(&dir, file.as_str(), AtFlags::empty());
            }
        }
        let _ = rustix::fs::unlinkat(parent, temporary.as_str(), AtFlags::REMOVEDIR);
        return Err(e);
    }
    Ok(Some(Adopted { name, files }))
}

/// The files of a checkpoint directly in `parent`: its regular files that
/// are images, the manifest, CRIU's logs and statistics (not a note of
/// the user's).
fn old_files(parent: &OwnedFd) -> io::Result<Vec<String>> {
    let mut files: Vec<String> = entry_names(parent)?
        .into_iter()
        .filter(|n| n == MANIFEST_FILE || n.ends_with(".img") || unsigned_extra(n))
        .filter(|n| {
            rustix::fs::statat(parent, n.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Hard links `files` of `parent` into its subdirectory `into`, synced.
fn link_all(parent: &OwnedFd, into: &str, files: &[String]) -> io::Result<()> {
    let dir = open_dir(parent, into)?;
    for file in files {
        rustix::fs::linkat(parent, file.as_str(), &dir, file.as_str(), AtFlags::empty())?;
    }
    Ok(rustix::fs::fsync(&dir)?)
}

fn open_dir(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// When the old checkpoint was made: its manifest says, else its
/// `pstree.img`'s modification time.
fn made_at(parent: &OwnedFd, anchor: &str) -> io::Result<Duration> {
    if anchor == MANIFEST_FILE
        && let Ok(bytes) = Manifest::read(parent)
        && let Ok((manifest, ..)) = Manifest::parse_unverified(&bytes)
        && manifest.meta.created_unix > 0
    {
        return Ok(Duration::from_secs(manifest.meta.created_unix));
    }
    let stat = rustix::fs::statat(parent, anchor, AtFlags::SYMLINK_NOFOLLOW)?;
    let at = UNIX_EPOCH + Duration::new(stat.st_mtime as u64, stat.st_mtime_nsec as u32);
    Ok(at.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Whether `a` and `b` (paths below `parent`) are the same inode.
fn same_inode(parent: &OwnedFd, a: &str, b: &str) -> bool {
    let stat = |p: &str| rustix::fs::statat(parent, p, AtFlags::SYMLINK_NOFOLLOW).ok();
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino))
}

fn random() -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    Ok(u32::from_le_bytes(bytes))
}
