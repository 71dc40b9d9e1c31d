//! Restoring from a store (root, with the host's cache) and pulling into a
//! local checkpoint (anyone, without it).

use super::assemble::{Assembled, assemble};
use super::cache::{Cache, WorkDir};
use super::fetch::{Checkpoint, fetch_verified};
use super::runtime::on_runtime;
use super::{Error, Store};
use crate::server::archive::Generation;
use crate::server::images::trust::Trust;
use crate::server::restore::copies::{self, Copies};
use crate::server::restore::{RestoreError, RestoreSettings, Restored, restore_path};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fetches, verifies and assembles the checkpoint at `url` in a work
/// directory of `cache`: refused before any chunk is fetched if its
/// signature does not verify with `settings`' keys, if this host lacks
/// what it needs, or if `check` refuses its facts.
fn prepare(
    url: &str,
    settings: &RestoreSettings,
    cache: &Arc<Cache>,
    check: impl FnOnce(&Checkpoint) -> Result<(), RestoreError>,
) -> Result<(Checkpoint, Assembled, WorkDir), Error> {
    let trust = settings.trust().ok_or_else(|| {
        Error::Refused(
            "no key to verify the checkpoint with (this host's key or its trust directory)".into(),
        )
    })?;
    let (url_owned, criu) = (url.to_owned(), settings.criu.path.clone());
    let (store, checkpoint) = async_io::block_on(on_runtime(async move {
        let (store, checkpoint) = fetch_verified(&url_owned, &trust).await?;
        crate::server::engine::host::check(checkpoint.manifest.meta.needs.as_ref(), Some(&criu))
            .map_err(|e| Error::Refused(format!("checkpoint {}: {e}", checkpoint.id)))?;
        Ok((store, checkpoint))
    }))?;
    check(&checkpoint)?;
    crate::server::fs::test_hold::hold("store-verified");
    let work = cache.work_dir().map_err(|e| {
        Error::Local(format!(
            "{}: no work directory: {e}",
            cache.path().display()
        ))
    })?;
    let dir = Arc::new(
        work.fd
            .try_clone()
            .map_err(|e| Error::Local(e.to_string()))?,
    );
    let (cp, cache) = (checkpoint.clone(), cache.clone());
    let assembled = async_io::block_on(on_runtime(async move {
        assemble(&store, &cp, dir, Some(cache)).await
    }))?;
    Ok((checkpoint, assembled, work))
}

/// `settings`, but images from a store are always signed ones.
fn signed_only(settings: &RestoreSettings) -> RestoreSettings {
    RestoreSettings {
        trust_unsigned: false,
        ..settings.clone()
    }
}

/// Keeps the assembled files in the cache once a restore verified them:
/// only after it succeeded (a restore may fail before it has hashed every
/// file: the pages of a root checkpoint are hashed while CRIU runs, and a
/// pid in use is found before that), so that the cache never holds a file
/// that was not checked against its signed hash.
fn keep_verified(cache: &Cache, assembled: &Assembled) {
    for (name, hash, file) in &assembled.made {
        if let Err(e) = cache.keep_file(hash, file) {
            log::warn!("cannot keep {name} in {}: {e}", cache.path().display());
        }
    }
    let trimmed = cache.trim();
    if trimmed > 0 {
        log::info!(
            "cache {}: {trimmed} bytes of least recently used chunks removed",
            cache.path().display()
        );
    }
}

/// Restores the checkpoint at `url`, detached, as root: fetched and
/// verified (see the module docs of `store`), assembled with `cache`, then
/// restored by the verified restore path (which checks every file's hash,
/// the credentials, and this host, again). Returns the restore and what
/// the assembly fetched.
pub fn restore_url(
    url: &str,
    settings: &RestoreSettings,
    cache: &Arc<Cache>,
) -> Result<(Restored, Assembled), Error> {
    let (_, assembled, work) = prepare(url, settings, cache, |_| Ok(()))?;
    let restored = restore_path(&work.path, &signed_only(settings));
    if restored.is_ok() {
        keep_verified(cache, &assembled);
    }
    Ok((restored?, assembled))
}

/// Restores `n` copies of the checkpoint at `url` at once (root's images
/// of a whole pid namespace, as [`copies::restore_copies`]), `lazy` with
/// CRIU's lazy pages; the images are fetched once for all copies.
pub fn restore_url_copies(
    url: &str,
    settings: &RestoreSettings,
    cache: &Arc<Cache>,
    n: u32,
    lazy: bool,
) -> Result<(Copies, Assembled), Error> {
    copies::check_count(n)?;
    let shown = PathBuf::from(url);
    let (_, assembled, work) = prepare(url, settings, cache, |c| {
        copies::copyable(&c.manifest.meta, &shown)
    })?;
    let restored = copies::restore_copies(&signed_only(settings), &work.path, n, lazy);
    if restored.is_ok() {
        keep_verified(cache, &assembled);
    }
    // the verified images stay (held by the copies) while `work` goes
    Ok((restored?, assembled))
}

/// What [`pull`] made.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The generation made in the directory.
    pub generation: String,
    /// Its path.
    pub path: PathBuf,
    /// What was fetched.
    pub assembled: Assembled,
}

/// Makes the checkpoint at `url` a local one in `dir`: a generation that
/// `latest` names, which plain CRIU restores (`criu restore -D
/// DIR/latest`) and `selfdump restore DIR` verifies and restores. Checked
/// as a restore checks (the signature with `trust`, the index, every chunk,
/// then every file against its signed hash) before `latest` names it. Made
/// by the caller, with its own rights, without the root cache.
pub fn pull(url: &str, dir: &Path, trust: &Trust) -> Result<Pulled, Error> {
    let (url, trust, dir) = (url.to_owned(), trust.clone(), dir.to_path_buf());
    async_io::block_on(on_runtime(async move {
        let (store, checkpoint) = fetch_verified(&url, &trust).await?;
        pull_into(&store, &checkpoint, &dir).await
    }))
}

async fn pull_into(store: &Store, checkpoint: &Checkpoint, dir: &Path) -> Result<Pulled, Error> {
    let generation =
        Generation::start(dir).map_err(|e| Error::Local(format!("{}: {e}", dir.display())))?;
    let target = Arc::new(
        generation
            .fd()
            .try_clone()
            .map_err(|e| Error::Local(e.to_string()))?,
    );
    let assembled = assemble(store, checkpoint, target, None).await?;
    let manifest = checkpoint.manifest.clone();
    let (name, path) = super::runtime::blocking(move || {
        generation.check_files(&manifest).map_err(Error::Refused)?;
        generation
            .commit(manifest.meta.generation.as_deref())
            .map_err(|e| Error::Local(e.to_string()))
    })
    .await?;
    Ok(Pulled {
        generation: name,
        path,
        assembled,
    })
}
