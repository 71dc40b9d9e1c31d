//! Verified images: what CRIU reads on a restore is what the service
//! signed, not what the owner of the images directory could change.
//!
//! The verified bytes and the bytes CRIU reads are kept the same this way:
//! each image file is opened once (`O_NOFOLLOW`), and its bytes are
//! hashed from that open file and placed in a [`RootSubdir`] of root's
//! (0700, in the images directory, on the same filesystem), which is the
//! only directory CRIU is given:
//!
//! - a file only root can write (root's own checkpoints) is hard-linked
//!   from its fd (`linkat(AT_EMPTY_PATH)`): nobody but root can change that
//!   inode, so no copy is needed;
//! - a file its owner can write (images are the caller's, and an owner can
//!   rewrite its file through any fd it opened earlier) is copied into the
//!   private directory first and the *copy* is hashed: CRIU reads the copy,
//!   which only root can change.
//!
//! Files are placed and hashed on several threads at once (`place.rs`).
//! A root checkpoint's memory pages, when large, are placed here but
//! hashed while CRIU restores, and the restored tree is held until they
//! match (`gate.rs` says why that proves as much).
//!
//! Then the credentials of every task and thread (`core-*.img`) must be the
//! recorded owner's, and a non-root owner's tasks must hold no capability.

use super::gate::Unhashed;
use super::settings::{RestoreError, RestoreSettings};
use crate::server::caller::credentials::Credentials;
use crate::server::engine::host;
use crate::server::fs::generations::{LATEST, Resolved, is_generation_name};
use crate::server::fs::root_subdir::RootSubdir;
use crate::server::images::criu_entries::{CoreEntry, PstreeEntry};
use crate::server::images::format::ImageMeta;
use crate::server::images::format::plain_name;
use crate::server::images::format::{
    entries, entry_names, first_entry, only_root_writes, read_image,
};
use crate::server::images::manifest::{
    FileDigest, MANIFEST_FILE, Manifest, ManifestError, unsigned_extra,
};
use crate::server::images::trust::Trust;
use prost::Message;
use rustix::fs::{AtFlags, FileType};
use std::os::fd::{AsFd, OwnedFd};

/// Images checked and placed where only root can change them.
#[derive(Debug)]
pub struct Verified {
    pub(crate) subdir: RootSubdir,
    /// What the manifest says (or, unsigned, what could be guessed).
    pub meta: ImageMeta,
    /// The tasks of the images.
    pub tree: Vec<PstreeEntry>,
    /// The key that signed them (`None`: trusted unsigned).
    pub key_id: Option<String>,
    /// Their generation (`None`: images directly in the directory given).
    pub generation: Option<String>,
    /// Bytes hashed (or copied and hashed).
    pub bytes: u64,
    /// Each file placed in the private directory and its size, as
    /// verified (what [`Verified::recheck`] compares with).
    pub(crate) placed: Vec<(String, u64)>,
    /// Pages files placed but left for the restore to hash while CRIU runs
    /// (`gate.rs`); empty unless [`verify`] was asked to defer them.
    pub(crate) unhashed: Vec<Unhashed>,
}

impl Drop for Verified {
    fn drop(&mut self) {
        self.subdir.empty();
        self.subdir.remove(true);
    }
}

/// Verifies the images in `images` (an open directory, resolved from what
/// the restorer named, and held) with the keys `settings` trust, or, with
/// `settings.trust_unsigned`, takes images without a manifest as they are.
/// `creds` makes and removes the private directory (the directory owner's
/// or the requester's: see [`RootSubdir`]); `may_restore` sees the
/// signed facts first (the owner, to compare with the requester).
/// With `defer_pages`, a root checkpoint's large pages files are placed
/// but not hashed: they are left in [`Verified::unhashed`] for the
/// restore to hash while CRIU runs, behind its gate (`gate.rs`).
pub(crate) fn verify(
    images: Resolved,
    settings: &RestoreSettings,
    creds: Credentials,
    defer_pages: bool,
    may_restore: impl FnOnce(&ImageMeta) -> Result<(), RestoreError>,
) -> Result<Verified, RestoreError> {
    let started = std::time::Instant::now();
    let Resolved {
        dir: images,
        generation,
    } = images;
    let manifest = signed_manifest(&images, settings.trust().as_ref(), settings.trust_unsigned)?;
    let checked = started.elapsed();
    if let Some(m) = &manifest {
        check_names(m)?;
        // CRIU's version is compared just before it runs (after the ids
        // are checked), since learning it runs CRIU
        host::check(m.meta.needs.as_ref(), None).map_err(RestoreError::Refused)?;
        may_restore(&m.meta)?;
    }
    let wanted = wanted(&images, manifest.as_ref())?;
    let subdir = RootSubdir::create(images, ".selfdump-restore-", creds, |_| {})
        .map_err(|e| RestoreError::Refused(format!("cannot make a private directory: {e}")))?;
    let mut verified = Verified {
        subdir,
        meta: ImageMeta::default(),
        tree: Vec::new(),
        key_id: manifest.as_ref().map(|m| m.key_id.clone()),
        generation,
        bytes: 0,
        placed: Vec::with_capacity(wanted.len()),
        unhashed: Vec::new(),
    };
    let made = started.elapsed();
    verified.place_all(&wanted, manifest.as_ref(), defer_pages)?;
    let placed = started.elapsed();
    verified.read_tree(manifest)?;
    log::debug!(
        "restore: verified in {:?}: manifest {checked:?}, private directory {:?}, {} files \
         ({} bytes, {} left to hash during the restore) placed and hashed {:?}, tree and \
         credentials {:?}",
        started.elapsed(),
        made - checked,
        verified.placed.len(),
        verified.bytes,
        verified.unhashed.len(),
        placed - made,
        started.elapsed() - placed
    );
    Ok(verified)
}

/// The images' manifest, its signature checked with the keys of `trust`;
/// `None` only for unsigned images restored on purpose (`trust_unsigned`).
fn signed_manifest(
    images: &OwnedFd,
    trust: Option<&Trust>,
    trust_unsigned: bool,
) -> Result<Option<Manifest>, RestoreError> {
    let manifest = match (Manifest::read(images), trust) {
        (Ok(bytes), Some(trust)) => {
            Some(Manifest::verify_trusted(&bytes, trust).map_err(RestoreError::refused)?)
        }
        (Ok(_), None) => None, // unsigned by choice: --trust-unsigned without a key
        (Err(ManifestError::Missing), _) if trust_unsigned => None,
        (Err(ManifestError::Missing), _) => return Err(RestoreError::Refused(unsigned(images))),
        (Err(e), _) => return Err(RestoreError::refused(e)),
    };
    if manifest.is_none() && !trust_unsigned {
        return Err(RestoreError::Refused(
            "no key to verify the images with".into(),
        ));
    }
    Ok(manifest)
}

/// Every file the manifest names is a plain name of the images directory.
fn check_names(m: &Manifest) -> Result<(), RestoreError> {
    match m.files.iter().find(|f| !plain_name(&f.name)) {
        None => Ok(()),
        Some(f) => Err(RestoreError::Refused(format!(
            "{MANIFEST_FILE} names a file {:?}, which is not a plain file name",
            f.name
        ))),
    }
}

/// Why images without a manifest are refused: not a checkpoint at all
/// (no CRIU images either), or images made by plain CRIU.
fn unsigned(images: &impl AsFd) -> String {
    let criu_made = rustix::fs::statat(images, "inventory.img", AtFlags::SYMLINK_NOFOLLOW).is_ok();
    if criu_made {
        format!(
            "no {MANIFEST_FILE}: these CRIU images are not signed (not made by a selfdump \
             service); `selfdump restore --trust-unsigned` restores them unchecked (root only)"
        )
    } else {
        "not a checkpoint: no generation named `latest`, no CRIU images (inventory.img) and \
         no selfdump manifest here (`selfdump inspect DIR` shows what a directory holds)"
            .into()
    }
}

/// The files to place: the manifest's (a file it does not list is
/// ignored, with a warning naming it: nobody can tell when or by whom it
/// was put there, and CRIU never sees it); without a manifest, every file
/// but logs and statistics.
fn wanted(images: &OwnedFd, manifest: Option<&Manifest>) -> Result<Vec<FileDigest>, RestoreError> {
    let present = list(images)?;
    let Some(m) = manifest else {
        return Ok(present
            .iter()
            .filter(|n| !unsigned_extra(n) && !n.starts_with("selfdump-"))
            .map(|n| FileDigest {
                name: n.clone(),
                size: 0,
                hash: [0; 32],
            })
            .collect());
    };
    for name in &present {
        if m.file(name).is_none() && !unsigned_extra(name) && name != MANIFEST_FILE {
            log::warn!(
                "{name} is not part of the signed images: ignored (the restore never gives it \
                 to CRIU)"
            );
        }
    }
    Ok(m.files.clone())
}

impl Verified {
    /// The tasks of the placed images, and their facts: the manifest's,
    /// every task's credentials checked against them (unsigned images: the
    /// little the tree tells).
    fn read_tree(&mut self, manifest: Option<Manifest>) -> Result<(), RestoreError> {
        let pstree = read_image(&self.subdir.dir, "pstree.img")
            .ok_or_else(|| RestoreError::Refused("no pstree.img".into()))?;
        self.tree = entries(&pstree)
            .map(PstreeEntry::decode)
            .collect::<Result<_, _>>()
            .map_err(|e| RestoreError::Refused(format!("pstree.img: {e}")))?;
        match manifest {
            Some(m) => {
                self.check_credentials(&m.meta)?;
                self.meta = m.meta;
            }
            None => {
                let root = self.tree.first();
                self.meta.shell_job = root.is_some_and(|r| r.sid != r.pid);
                self.meta.pid = root.map_or(0, |r| r.pid as i32);
            }
        }
        Ok(())
    }

    /// Checks, without hashing, that the private directory still holds
    /// exactly what was verified, for a verified set restored again (a
    /// harness's rounds, `copies::VerifiedImages`): the same names, each
    /// still a regular file of the verified size that only root can write
    /// ([`only_root_writes`]), and the directory itself still root's, 0700.
    ///
    /// Why no hash is needed: every file in it is either a copy made by
    /// root (root's, 0600, in a directory of root's, 0700, that nobody
    /// else can enter) or a hard link to an inode that only root could
    /// write when it was hashed (root's checkpoints). Its bytes can then
    /// change only through root. What root could do by mistake that would
    /// let someone else write them later (a `chmod o+w` or a `chown` of the
    /// original file, which is the same inode as the link here) shows in
    /// the inode's owner and mode, which this checks; a file added or
    /// removed (by root: nobody else can) shows in the names.
    pub(crate) fn recheck(&self) -> Result<(), RestoreError> {
        let changed = |name: &str, why: String| {
            RestoreError::Refused(format!(
                "{name} changed since the images were verified; verify them again ({why})"
            ))
        };
        let dir = rustix::fs::fstat(&self.subdir.dir).map_err(RestoreError::refused)?;
        if dir.st_uid != 0 || dir.st_mode & 0o7777 != 0o700 {
            return Err(changed(
                &self.subdir.name,
                format!(
                    "the private directory is now uid {}, mode {:o}",
                    dir.st_uid,
                    dir.st_mode & 0o7777
                ),
            ));
        }
        for (name, size) in &self.placed {
            let stat = match rustix::fs::statat(
                &self.subdir.dir,
                name.as_str(),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(stat) => stat,
                Err(rustix::io::Errno::NOENT) => return Err(changed(name, "removed".into())),
                Err(e) => return Err(changed(name, e.to_string())),
            };
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(changed(name, "no longer a regular file".into()));
            }
            if stat.st_size as u64 != *size {
                return Err(changed(
                    name,
                    format!("{} bytes, verified {size}", stat.st_size),
                ));
            }
            if !only_root_writes(&stat) {
                return Err(changed(
                    name,
                    format!(
                        "now uid {}, mode {:o}: not only root can write it",
                        stat.st_uid,
                        stat.st_mode & 0o7777
                    ),
                ));
            }
        }
        let names = self.subdir.names().map_err(RestoreError::refused)?;
        if let Some(added) = names
            .iter()
            .find(|n| !self.placed.iter().any(|(p, _)| p == *n))
        {
            return Err(changed(added, "added".into()));
        }
        Ok(())
    }

    /// Every task's and thread's credentials are the recorded owner's.
    fn check_credentials(&self, meta: &ImageMeta) -> Result<(), RestoreError> {
        for name in self
            .subdir
            .names()
            .map_err(|e| RestoreError::Refused(e.to_string()))?
        {
            if !(name.starts_with("core-") && name.ends_with(".img")) {
                continue;
            }
            let refuse = |why: String| RestoreError::Refused(format!("{name}: {why}"));
            let image =
                read_image(&self.subdir.dir, &name).ok_or_else(|| refuse("unreadable".into()))?;
            let core = first_entry(&image)
                .and_then(|e| CoreEntry::decode(e).ok())
                .ok_or_else(|| refuse("not a core image".into()))?;
            let creds = core
                .thread_core
                .and_then(|t| t.creds)
                .ok_or_else(|| refuse("no credentials".into()))?;
            let uids = [creds.uid, creds.euid, creds.suid, creds.fsuid];
            let gids = [creds.gid, creds.egid, creds.sgid, creds.fsgid];
            if uids.iter().any(|&u| u != meta.uid) || gids.iter().any(|&g| g != meta.gid) {
                return Err(refuse(format!(
                    "credentials (uids {uids:?}, gids {gids:?}) differ from the recorded owner \
                     (uid {}, gid {})",
                    meta.uid, meta.gid
                )));
            }
            let caps = [&creds.cap_inh, &creds.cap_prm, &creds.cap_eff];
            if meta.uid != 0 && caps.iter().any(|set| set.iter().any(|&w| w != 0)) {
                return Err(refuse(format!(
                    "holds capabilities, which the recorded owner uid {} had not",
                    meta.uid
                )));
            }
        }
        Ok(())
    }
}

/// The names in a directory, but the service's own private directories
/// and, in a directory holding images from before generations, its
/// generations and `latest`.
fn list(dir: &impl AsFd) -> Result<Vec<String>, RestoreError> {
    let mut names = entry_names(dir).map_err(RestoreError::refused)?;
    names.retain(|name| {
        !name.starts_with(".selfdump-") && name != LATEST && !is_generation_name(name)
    });
    Ok(names)
}
