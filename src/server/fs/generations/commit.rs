//! Making a generation of a finished dump and committing it: the one step
//! after which `DIR/latest` names it. Until then `latest` names the
//! previous generation, whatever happens (a failed dump, a full disk, the
//! service or CRIU killed, a power cut).
//!
//! It starts from a directory CRIU has finished writing (its fd, whoever
//! owns it) and the caller's credentials: [`seal`] makes the generation
//! directory, [`Sealed::commit`] names it and switches `latest`.
//!
//! # The commit order
//!
//! Each step names the test hold that follows it (`test_hold.rs`).
//!
//! 1. `dumped`: CRIU's files are complete in its directory (CRIU exited;
//!    with "exit after dump", at its `post-dump` notification, before it
//!    ends the tree).
//! 2. `filled`: a [`RootSubdir`] `G` is made in `DIR` (root's, 0700,
//!    locked) and filled: every file is opened once (`O_NOFOLLOW`), hard
//!    linked into `G` from its fd (copied when someone else than root could
//!    write it, and the copy used), hashed, handed to the caller (owner,
//!    0600); the signed manifest is written last.
//! 3. `synced`: `G` is given to the caller, then `syncfs` (one started
//!    after this point; commits that end together share it:
//!    `shared_sync.rs`): every file's data, owner and name in `G`, and `G`
//!    itself, are on disk.
//! 4. `renamed`: `G` is renamed to its generation's name, as the caller,
//!    without replacing anything.
//! 5. `named`: `fsync(DIR)`: the name is on disk.
//! 6. `linked`: a symlink `.selfdump-latest-<random>` to that name is made
//!    in `DIR`, as the caller.
//! 7. `switched`: it is renamed over `latest`, as the caller: the commit
//!    (`rename` replaces atomically).
//! 8. `committed`: `fsync(DIR)`: the switch is on disk. Only now is
//!    success reported; then older generations go (`retention.rs`).
//!
//! `G` stays locked (`flock`) from step 2 until after step 8, so that no
//! retention removes it before `latest` names it and no leftover sweep
//! takes it for a dead service's.
//!
//! # What a crash at each step leaves
//!
//! | killed (or power cut) after | `latest` names | also left in `DIR`                    | cleaned up by |
//! |-----------------------------|----------------|---------------------------------------|---------------|
//! | (CRIU still dumping)        | the previous   | the staging dir (root's)              | the next checkpoint into `DIR` |
//! | 1 `dumped`                  | the previous   | the staging dir                       | the next checkpoint |
//! | 2 `filled`                  | the previous   | the staging dir, `G` (root's)         | the next checkpoint |
//! | 3 `synced`                  | the previous   | the staging dir, `G` (the caller's)   | the next checkpoint of its owner |
//! | 4 `renamed`, 5 `named`      | the previous   | a whole generation no `latest` names (after a power cut before 5, maybe `G` instead) | retention, oldest first |
//! | 6 `linked`                  | the previous   | that generation and the temporary symlink | the next checkpoint (its target is unlocked) |
//! | 7 `switched`                | the new one (after a power cut before 8: either, both whole) | the staging dir | the next checkpoint |
//! | 8 `committed`               | the new one    | the staging dir until it is removed   | the next checkpoint |
//!
//! A power cut cannot leave `latest` naming a generation whose files are
//! not on disk: they and `G` were synced (3) before `G` got its name (4),
//! and the name was synced (5) before `latest` could name it (7). The
//! caller is told success only after 8; killed earlier, it learns the
//! outcome is unknown, and `latest` names a whole generation either way.
//!
//! # The filesystem rule
//!
//! Root writes only through fds of `G` while it is root's (linking files
//! from fds it opened itself). Every name operation in `DIR` (the rename,
//! the symlink, the switch, removals) is done with the caller's
//! credentials (`as_caller.rs`), after `G` is the caller's: what a caller
//! swaps in between two calls gets it nothing it could not do itself. The
//! directory CRIU writes into is never given to the caller while CRIU may
//! still write there by name (its log and statistics, with "exit after
//! dump"): a generation is always a directory of its own.

use crate::proto::JobId;
use crate::server::caller::credentials::Credentials;
use crate::server::fs::generations::LATEST;
use crate::server::fs::generations::adopt;
use crate::server::fs::generations::files::{Source, hand_over, open_written, place};
use crate::server::fs::root_subdir::{RootSubdir, remove_dir_as};
use crate::server::fs::shared_sync::{self, Member};
use crate::server::fs::test_hold::hold;
use crate::server::images::criu_entries;
use crate::server::images::format::{
    ImageMeta, Published, dump_stats, entries, entry_names, read_image,
};
use crate::server::images::manifest::{
    FileDigest, Key, MANIFEST_FILE, Manifest, create_file, hash_file, hash_file_by_reading,
    unsigned_extra,
};
use prost::Message;
use rustix::fs::{AtFlags, RenameFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A generation made and filled, not yet named: `G` of the module docs,
/// after step 2. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub(crate) struct Sealed {
    subdir: Option<RootSubdir>,
    /// Its place among the commits syncing its filesystem (step 3).
    sync: Member,
    /// What was published so far (bytes, CRIU's statistics, tasks).
    pub(crate) published: Published,
    /// What the manifest says.
    pub(crate) meta: ImageMeta,
}

/// A committed generation, still locked until dropped.
#[derive(Debug)]
pub(crate) struct Committed {
    /// Its name in the images directory.
    pub(crate) name: String,
    dir: OwnedFd,
    /// What was published.
    pub(crate) published: Published,
}

/// Makes the generation directory of a dump whose files are in `source`
/// (steps 1 and 2 of the module docs): every file of `source` but, unless
/// `with_extras`, CRIU's log and statistics (still being written).
pub(crate) fn seal(
    parent: &OwnedFd,
    source: Source<'_>,
    job: JobId,
    creds: &Credentials,
    key: &Key,
    meta: &ImageMeta,
    with_extras: bool,
) -> io::Result<Sealed> {
    hold("dumped");
    let sync = shared_sync::join(parent)?; // before `G` is made: see shared_sync.rs
    let dir_written = source.dir;
    let subdir = RootSubdir::create(
        parent.try_clone()?,
        &format!(".selfdump-{job}-"),
        creds.clone(),
        |_| {},
    )?;
    let mut sealed = Sealed {
        published: Published {
            stats: dump_stats(&dir_written),
            processes: read_image(&dir_written, "pstree.img")
                .map(|b| entries(&b).count() as u32)
                .unwrap_or(0),
            ..Default::default()
        },
        meta: complete(meta, &dir_written),
        subdir: Some(subdir),
        sync,
    };
    let dir = sealed.subdir.as_ref().expect("made").dir.try_clone()?;
    let files = fill(&mut sealed.published, source, &dir, creds, with_extras)?;
    let manifest = Manifest {
        key_id: key.id(),
        meta: sealed.meta.clone(),
        files,
    };
    let signed = manifest.sign(key);
    let file = create_file(&dir, MANIFEST_FILE, &signed)?;
    hand_over(&file, creds)?;
    sealed.published.bytes += signed.len() as u64;
    hold("filled");
    Ok(sealed)
}

/// Step 2's files: each file of `source` (but CRIU's log and statistics,
/// unless `with_extras`) placed in `dir`, hashed, handed to the caller;
/// the digests for the manifest.
fn fill(
    published: &mut Published,
    source: Source<'_>,
    dir: &OwnedFd,
    creds: &Credentials,
    with_extras: bool,
) -> io::Result<Vec<FileDigest>> {
    let mut names = entry_names(&source.dir)?;
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let extra = unsigned_extra(&name);
        if name == MANIFEST_FILE || extra && !with_extras {
            continue;
        }
        let (file, size, mappable) = place(source, &name, dir, creds)?;
        published.bytes += size;
        if !extra {
            let hash = match mappable {
                true => hash_file(&file, size)?,
                false => hash_file_by_reading(&file, size)?,
            };
            files.push(FileDigest { name, size, hash });
        }
        hand_over(&file, creds)?;
    }
    Ok(files)
}

impl Sealed {
    /// Names the generation `name` and switches `latest` to it (steps 3 to
    /// 8 of the module docs). On an error before the switch, the
    /// generation is removed and `latest` still names the previous one.
    pub(crate) fn commit(mut self, name: &str) -> io::Result<Committed> {
        let subdir = self.subdir.take().expect("committed once");
        if let Err(e) = subdir.give_back() {
            subdir.empty();
            subdir.remove(true);
            return Err(e.into());
        }
        let syncing = std::time::Instant::now();
        let adopted = name_it(&subdir, &self.sync, name)?;
        let RootSubdir {
            parent, dir, creds, ..
        } = subdir;
        if let Err(e) = switch_latest(&parent, &creds, name) {
            gone_as_caller(&creds, &parent, name, &dir);
            return Err(e);
        }
        hold("switched");
        rustix::fs::fsync(&parent).map_err(|e| {
            io::Error::other(format!(
                "{LATEST} now names {name}, but syncing the images directory failed ({e}): it \
                 may not survive a power cut"
            ))
        })?;
        self.published.sync_us = syncing.elapsed().as_micros() as u64;
        log::debug!(
            "{name}: synced, named and switched in {:?}",
            syncing.elapsed()
        );
        hold("committed");
        if let Some(adopted) = adopted {
            adopted.finish(&parent, &creds);
        }
        Ok(Committed {
            name: name.to_owned(),
            dir,
            published: std::mem::take(&mut self.published),
        })
    }
}

/// Steps 3 to 5 of the module docs for `G` (the caller's by now): synced
/// (a `syncfs` started after this call, maybe shared with other commits:
/// `shared_sync.rs`), named `name`, the name synced; an old checkpoint
/// directly in the directory adopted meanwhile. On an error `G` is removed.
fn name_it(g: &RootSubdir, sync: &Member, name: &str) -> io::Result<Option<adopt::Adopted>> {
    let (parent, creds) = (&g.parent, &g.creds);
    let syncing = std::time::Instant::now();
    if let Err(e) = sync.sync() {
        gone_as_caller(creds, parent, &g.name, &g.dir);
        return Err(e);
    }
    log::debug!("{}: syncfs in {:?}", g.name, syncing.elapsed());
    hold("synced");
    let adopted = adopt::prepare(parent, creds);
    let renamed = creds.run(|| {
        rustix::fs::renameat_with(
            parent,
            g.name.as_str(),
            parent,
            name,
            RenameFlags::NOREPLACE,
        )
    });
    if let Err(e) = flatten(renamed) {
        gone_as_caller(creds, parent, &g.name, &g.dir);
        let why = format!("cannot name the generation {name}: {e}");
        return Err(io::Error::new(e.kind(), why));
    }
    hold("renamed");
    let naming = std::time::Instant::now();
    if let Err(e) = rustix::fs::fsync(parent) {
        gone_as_caller(creds, parent, name, &g.dir);
        return Err(e.into());
    }
    log::debug!(
        "{name}: named, its directory synced in {:?}",
        naming.elapsed()
    );
    hold("named");
    Ok(adopted)
}

/// Removes the uncommitted generation `named` (the caller's), as the caller.
fn gone_as_caller(creds: &Credentials, parent: &OwnedFd, named: &str, dir: &OwnedFd) {
    if let Err(e) = remove_dir_as(creds, parent, named, dir) {
        log::warn!("cannot remove the uncommitted generation {named}: {e}");
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if let Some(subdir) = self.subdir.take() {
            // still root's: nothing of it is the caller's yet
            subdir.empty();
            subdir.remove(true);
        }
    }
}

/// Steps 6 and 7: a fresh symlink to `name`, renamed over `latest`, both
/// as the caller. The symlink is removed again if the switch fails.
fn switch_latest(parent: &OwnedFd, creds: &Credentials, name: &str) -> io::Result<()> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let temporary = format!(".selfdump-latest-{:016x}", u64::from_le_bytes(random));
    flatten(creds.run(|| rustix::fs::symlinkat(name, parent, temporary.as_str())))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot make a symlink to {name}: {e}")))?;
    hold("linked");
    let switched =
        flatten(creds.run(|| rustix::fs::renameat(parent, temporary.as_str(), parent, LATEST)));
    if let Err(e) = switched {
        let _ = creds.run(|| rustix::fs::unlinkat(parent, temporary.as_str(), AtFlags::empty()));
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot switch {LATEST} to {name} (uid {} may not replace it?): {e}",
                creds.uid
            ),
        ));
    }
    Ok(())
}

fn flatten<T>(r: io::Result<rustix::io::Result<T>>) -> io::Result<T> {
    r?.map_err(io::Error::from)
}

impl Committed {
    /// Adds CRIU's log and statistics, written after the generation was
    /// committed (with "exit after dump"), from `source`: handed to the
    /// caller through their fds, then linked into the generation as the
    /// caller. What fails is logged; the generation is whole without them.
    /// Returns the bytes added.
    pub(crate) fn add_extras(&self, source: Source<'_>, creds: &Credentials) -> u64 {
        let mut bytes = 0;
        for name in entry_names(&source.dir).unwrap_or_default() {
            if !unsigned_extra(&name) {
                continue;
            }
            let added = open_written(source, &name, creds).and_then(|(file, size)| {
                hand_over(&file, creds)?;
                let path = crate::procfs::self_fd(file.as_raw_fd());
                flatten(creds.run(|| {
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        &path,
                        &self.dir,
                        name.as_str(),
                        AtFlags::SYMLINK_FOLLOW,
                    )
                }))?;
                Ok(size)
            });
            match added {
                Ok(size) => bytes += size,
                Err(e) => log::warn!("{}: cannot add {name}: {e}", self.name),
            }
        }
        bytes
    }
}

/// The facts only known once CRIU is done: the tree's pids, the time, the
/// host.
fn complete(meta: &ImageMeta, source: &impl AsFd) -> ImageMeta {
    let pids = read_image(source, "pstree.img")
        .map(|b| {
            entries(&b)
                .filter_map(|e| criu_entries::PstreeEntry::decode(e).ok())
                .map(|e| e.pid as i32)
                .collect()
        })
        .unwrap_or_default();
    ImageMeta {
        pids,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        boot_id: crate::procfs::PROC
            .read_file("sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        ..meta.clone()
    }
}

#[cfg(test)]
#[path = "commit_tests.rs"]
mod tests;
