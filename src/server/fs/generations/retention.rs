//! Retention: once a generation is committed, older ones go, so that an
//! images directory checkpointed into every few minutes keeps the newest
//! `keep` (the caller's [`DumpOptions::keep`](crate::proto::DumpOptions),
//! capped by the operator's [`Builder::max_keep`](crate::server::Builder::max_keep)).
//!
//! - Newest means the greatest name (names sort as their times,
//!   `generations/mod.rs`). Beyond the newest `keep`, a generation is removed
//!   unless `latest` names it (two programs committing into one directory
//!   at once may leave `latest` on the older of their two) or it cannot be
//!   locked.
//! - Locks: a generation being committed is locked exclusively by its
//!   service until `latest` names it; one being restored (or verified for
//!   rounds of copies) is locked shared by the restore. Retention takes an
//!   exclusive lock without waiting and skips what it cannot lock, then
//!   reads `latest` again under the lock: only a commit holding the
//!   generation's lock can make `latest` name it, so what `latest` names
//!   after the lock is taken stays so while it is removed.
//! - Everything is done with the caller's credentials (the generation's
//!   files and its name in `DIR` are the caller's): a directory the caller
//!   swapped in under a generation's name is emptied only as far as the
//!   caller could itself. A restore that was killed leaves its private
//!   directory of root's inside a generation; it goes first, as any dead
//!   service's leftover does (`leftovers.rs`).
//! - A generation is first renamed out of the generations' names, then
//!   emptied and removed: cut short, the removal leaves a `.selfdump-gone-*`
//!   directory for the caller's next checkpoint to sweep, never a
//!   generation with files missing.
//! - It runs after the caller has its answer (`requests/checkpoint/conclude.rs`'s `Tidy`): a
//!   commit's answer does not wait for old generations to be unlinked.

use crate::server::caller::credentials::Credentials;
use crate::server::fs::generations;
use crate::server::fs::leftovers;
use crate::server::fs::root_subdir::remove_dir_as;
use crate::server::images::format::entry_names;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use std::io;
use std::os::fd::OwnedFd;

/// Removes the generations of `parent` beyond the newest `keep` (at least
/// one is kept), as the module docs say; returns the names removed.
pub(crate) fn retain(parent: &OwnedFd, creds: &Credentials, keep: usize) -> Vec<String> {
    let mut names = match creds.run(|| generations::list(parent)) {
        Ok(Ok(names)) => names,
        Ok(Err(e)) | Err(e) => {
            log::warn!("retention: cannot list the generations: {e}");
            return Vec::new();
        }
    };
    names.reverse(); // newest first
    let mut removed = Vec::new();
    for name in names.into_iter().skip(keep.max(1)) {
        match remove_if_free(parent, creds, &name) {
            Ok(true) => removed.push(name),
            Ok(false) => {}
            Err(e) => log::warn!("retention: cannot remove {name}: {e}"),
        }
    }
    if !removed.is_empty() {
        log::info!("retention: removed {}", removed.join(", "));
    }
    removed
}

/// Removes generation `name` unless it is locked or `latest` names it.
fn remove_if_free(parent: &OwnedFd, creds: &Credentials, name: &str) -> io::Result<bool> {
    let dir = creds.run(|| {
        rustix::fs::openat(
            parent,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })??;
    if !generations::try_lock_exclusive(std::os::fd::AsFd::as_fd(&dir)) {
        log::debug!("retention: {name} is being committed or restored: kept");
        return Ok(false);
    }
    if generations::read_latest(parent)?.as_deref() == Some(name) {
        return Ok(false);
    }
    leftovers::remove_stale(&dir, None, creds);
    // a directory in it (a restore's that is not stale) would make the
    // removal stop half way: the generation is left whole instead
    if let Some(inner) = entry_names(&dir)?.into_iter().find(|n| {
        rustix::fs::statat(&dir, n.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
    }) {
        log::warn!("retention: {name} holds the directory {inner}: kept");
        return Ok(false);
    }
    // out of the generations' names first: a removal cut short leaves a
    // `.selfdump-gone-*` directory (the caller's next checkpoint sweeps
    // it), never a generation with files missing
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let gone = format!(".selfdump-gone-{:016x}", u64::from_le_bytes(random));
    creds.run(|| {
        rustix::fs::renameat_with(parent, name, parent, gone.as_str(), RenameFlags::NOREPLACE)
    })??;
    remove_dir_as(creds, parent, &gone, &dir)?;
    Ok(true)
}
