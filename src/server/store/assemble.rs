//! Assembling a checkpoint's images in a directory: whole files from the
//! cache's verified files where it has them; the others from chunks, each
//! from the cache or fetched (in parallel) and checked against its hash
//! before it is used or cached; then the signed manifest, verbatim.

use super::cache::Cache;
use super::fetch::{Checkpoint, fetch_chunk};
use super::runtime::{blocking, bounded};
use super::{Error, Store};
use crate::server::images::manifest::MANIFEST_FILE;
use rustix::fs::{AtFlags, Mode, OFlags};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// What an assembly took from where.
#[derive(Debug, Clone, Default)]
pub struct Assembled {
    /// Whole files linked from the cache.
    pub files_cached: usize,
    /// Chunks copied from the cache.
    pub chunks_cached: usize,
    /// Chunks fetched from the store.
    pub chunks_fetched: usize,
    /// Bytes fetched (compressed).
    pub bytes_fetched: u64,
    /// The files assembled from chunks (name, signed hash, fd), which a
    /// verified restore may keep in the cache.
    pub(crate) made: Vec<(String, String, Arc<OwnedFd>)>,
}

/// Where one chunk goes: a file and an offset.
type Target = (Arc<OwnedFd>, u64);

/// Each chunk wanted, once, whatever number of places it goes to: its
/// length, what it is (for messages), where it goes.
type Wanted = HashMap<String, (u32, String, Vec<Target>)>;

/// Assembles `checkpoint` in the directory `dir` (empty, of whoever
/// assembles), with `cache` if there is one.
pub(crate) async fn assemble(
    store: &Store,
    checkpoint: &Checkpoint,
    dir: Arc<OwnedFd>,
    cache: Option<Arc<Cache>>,
) -> Result<Assembled, Error> {
    let (mut done, wanted) = plan(checkpoint, &dir, cache.as_deref())?;
    let (mut cached, mut fetched, mut bytes) = (0, 0, 0);
    let start = |(hash, (len, what, targets)): (String, (u32, String, Vec<Target>))| {
        let (store, cache) = (store.clone(), cache.clone());
        async move { place(&store, cache, hash, len, what, targets).await }
    };
    bounded(wanted, start, |placed| match placed {
        None => cached += 1,
        Some(n) => {
            fetched += 1;
            bytes += n;
        }
    })
    .await?;
    (done.chunks_cached, done.chunks_fetched, done.bytes_fetched) = (cached, fetched, bytes);
    let manifest = rustix::fs::openat(
        &*dir,
        MANIFEST_FILE,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(|e| local(MANIFEST_FILE, &e))?;
    super::cache::write_all(&manifest, &checkpoint.signed).map_err(|e| local(MANIFEST_FILE, &e))?;
    Ok(done)
}

fn local(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Local(format!("{what}: {e}"))
}

/// Links the files the cache holds whole into `dir`, creates the others
/// (sized), and lists the chunks they need.
fn plan(
    checkpoint: &Checkpoint,
    dir: &OwnedFd,
    cache: Option<&Cache>,
) -> Result<(Assembled, Wanted), Error> {
    let mut done = Assembled::default();
    let mut wanted = Wanted::new();
    for (stored, signed) in checkpoint.files.iter().zip(&checkpoint.manifest.files) {
        let hash = super::format::hex(&signed.hash);
        if let Some(held) = cache.and_then(|c| c.file(&hash, signed.size)) {
            rustix::fs::linkat(&held, "", dir, stored.name.as_str(), AtFlags::EMPTY_PATH)
                .map_err(|e| local(&stored.name, &e))?;
            done.files_cached += 1;
            continue;
        }
        let file = rustix::fs::openat(
            dir,
            stored.name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| local(&stored.name, &e))?;
        rustix::fs::ftruncate(&file, stored.size).map_err(|e| local(&stored.name, &e))?;
        let file = Arc::new(file);
        let mut offset = 0;
        for (i, chunk) in stored.chunks.iter().enumerate() {
            let what = format!("{} chunk {i}", stored.name);
            wanted
                .entry(chunk.hash.clone())
                .or_insert_with(|| (chunk.len, what, Vec::new()))
                .2
                .push((file.clone(), offset));
            offset += u64::from(chunk.len);
        }
        done.made.push((stored.name.clone(), hash, file));
    }
    Ok((done, wanted))
}

/// One chunk into its places: copied from the cache, or fetched, checked,
/// cached (if there is a cache) and written. Returns the bytes fetched
/// (`None`: it came from the cache).
async fn place(
    store: &Store,
    cache: Option<Arc<Cache>>,
    hash: String,
    len: u32,
    what: String,
    targets: Vec<Target>,
) -> Result<Option<u64>, Error> {
    if let Some(held) = cache.as_ref().and_then(|c| c.chunk(&hash, u64::from(len))) {
        return blocking(move || {
            for (file, offset) in &targets {
                copy_range(&held, file, *offset, len as usize)
                    .map_err(|e| Error::Local(format!("copying chunk {hash}: {e}")))?;
            }
            Ok(None)
        })
        .await;
    }
    let data = fetch_chunk(
        store,
        &super::format::ChunkRef {
            hash: hash.clone(),
            len,
            stored: 0,
        },
        what.clone(),
    )
    .await?;
    let fetched = data.len() as u64;
    blocking(move || {
        let local = |e: &dyn std::fmt::Display| Error::Local(format!("{what}: {e}"));
        if let Some(cache) = &cache {
            cache.insert_chunk(&hash, &data).map_err(|e| local(&e))?;
        }
        for (file, offset) in &targets {
            write_at(file, &data, *offset).map_err(|e| local(&e))?;
        }
        Ok(Some(fetched))
    })
    .await
}

fn write_at(file: &OwnedFd, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(file, data, offset) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "short write",
                ));
            }
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies `len` bytes of `src` (from its start) into `dst` at `offset`,
/// in the kernel.
fn copy_range(src: &OwnedFd, dst: &OwnedFd, offset: u64, len: usize) -> std::io::Result<()> {
    let (mut from, mut to, mut left) = (0u64, offset, len);
    while left > 0 {
        let n = rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), left)?;
        if n == 0 {
            return Err(std::io::Error::other("a cached chunk shrank"));
        }
        left -= n;
    }
    Ok(())
}
