//! Pushing a checkpoint: its files cut into chunks, each compressed and
//! uploaded unless the store has it, in parallel; the checkpoint object
//! last. Run by the checkpoint's owner, with the owner's credentials.

use super::chunker::Chunker;
use super::format::{self, ChunkRef, StoredFile};
use super::runtime::{blocking, bounded, on_runtime};
use super::{Error, Store};
use crate::server::images::manifest::Manifest;
use rustix::fs::{FileType, Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// zstd's level: its fastest that still finds the long runs of zeros and
/// repeated pages that memory is full of.
const LEVEL: i32 = 1;

/// What [`push`] did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The checkpoint's URL, for `selfdump restore URL` and `pull`.
    pub url: String,
    /// Its id (the hash of its checkpoint object).
    pub id: String,
    /// The generation pushed (`None`: images directly in the directory).
    pub generation: Option<String>,
    /// Bytes of its files.
    pub bytes: u64,
    /// Its chunks.
    pub chunks: usize,
    /// Chunks uploaded (the others were in the store already).
    pub uploaded_chunks: usize,
    /// Bytes uploaded (compressed chunks and the checkpoint object).
    pub uploaded_bytes: u64,
    /// How long the push took.
    pub elapsed: Duration,
}

/// Pushes the checkpoint in `dir` (the generation `latest` names, or the
/// images in `dir` itself) to the store at `store_url`, and returns its
/// URL. Runs on the store's own runtime; await it from any executor.
pub async fn push(dir: &Path, store_url: &str) -> Result<Pushed, Error> {
    let (dir, url) = (dir.to_path_buf(), store_url.to_owned());
    on_runtime(async move { push_on_runtime(dir, url).await }).await
}

async fn push_on_runtime(dir: PathBuf, url: String) -> Result<Pushed, Error> {
    let started = Instant::now();
    let store = Store::open(&url, true)?;
    let (images, generation) = blocking(move || {
        crate::server::archive::open_checkpoint(&dir).map_err(|e| Error::Local(e.to_string()))
    })
    .await?;
    let images = Arc::new(images);
    let signed = Manifest::read(&*images).map_err(|e| Error::Local(e.to_string()))?;
    let (manifest, ..) =
        Manifest::parse_unverified(&signed).map_err(|e| Error::Local(e.to_string()))?;
    let mut sources = Vec::new();
    let mut files = Vec::new();
    for file in &manifest.files {
        sources.push(Arc::new(open_file(&images, &file.name, file.size)?));
        files.push(StoredFile {
            name: file.name.clone(),
            size: file.size,
            chunks: Vec::new(),
        });
    }
    // read in order, cut where the content says, uploaded in parallel
    let work = sources.into_iter().enumerate().flat_map(|(index, fd)| {
        let size = files_size(&manifest, index);
        Chunker::new(fd, size)
            .enumerate()
            .map(move |(chunk, data)| (index, chunk, data))
    });
    let (chunks, uploaded_chunks, mut uploaded_bytes) =
        upload_all(&store, &mut files, work).await?;
    let (object, id) = format::encode(&signed, &files);
    uploaded_bytes += object.len() as u64;
    store.put(&format!("checkpoints/{id}"), object).await?;
    Ok(Pushed {
        url: store.checkpoint_url(&id),
        id,
        generation,
        bytes: files.iter().map(|f| f.size).sum(),
        chunks,
        uploaded_chunks,
        uploaded_bytes,
        elapsed: started.elapsed(),
    })
}

/// A chunk to push: its file's index, its number, its bytes (as read).
type Job = (usize, usize, Result<Vec<u8>, Error>);

/// Uploads the chunks of `work` the store lacks and fills in each file's
/// list; returns the chunks, and the chunks and bytes uploaded.
async fn upload_all(
    store: &Store,
    files: &mut [StoredFile],
    work: impl Iterator<Item = Job>,
) -> Result<(usize, usize, u64), Error> {
    let mut done: Vec<Vec<Option<ChunkRef>>> = vec![Vec::new(); files.len()];
    let (mut all, mut chunks, mut bytes) = (0, 0, 0);
    let start = |(file, chunk, data): Job| {
        let store = store.clone();
        async move {
            let (entry, up) = upload(&store, data?).await?;
            Ok((file, chunk, entry, up))
        }
    };
    bounded(work, start, |(file, chunk, entry, up)| {
        all += 1;
        if up > 0 {
            chunks += 1;
            bytes += up;
        }
        let listed = &mut done[file];
        if listed.len() <= chunk {
            listed.resize(chunk + 1, None);
        }
        listed[chunk] = Some(entry);
    })
    .await?;
    for (file, listed) in files.iter_mut().zip(done) {
        file.chunks = listed
            .into_iter()
            .map(|c| c.expect("every chunk done"))
            .collect();
    }
    Ok((all, chunks, bytes))
}

fn files_size(manifest: &Manifest, index: usize) -> u64 {
    manifest.files[index].size
}

/// One chunk: hashed, and uploaded compressed unless the store has it.
/// Returns its entry and the bytes uploaded (0: it was there).
async fn upload(store: &Store, data: Vec<u8>) -> Result<(ChunkRef, u64), Error> {
    let len = data.len() as u64;
    let (data, hash) = blocking(move || {
        let hash = format::hex(blake3::hash(&data).as_bytes());
        Ok((data, hash))
    })
    .await?;
    let name = format!("chunks/{hash}");
    let entry = |stored: u64| ChunkRef {
        hash: hash.clone(),
        len: len as u32,
        stored: stored.min(u64::from(u32::MAX)) as u32,
    };
    if let Some(size) = store.size(&name).await? {
        return Ok((entry(size), 0));
    }
    let compressed = blocking(move || {
        zstd::bulk::compress(&data, LEVEL).map_err(|e| Error::Local(format!("zstd: {e}")))
    })
    .await?;
    let stored = compressed.len() as u64;
    store.put(&name, compressed).await?;
    Ok((entry(stored), stored))
}

/// An image file of the checkpoint, which must still be the size signed.
pub(crate) fn open_file(dir: &OwnedFd, name: &str, size: u64) -> Result<OwnedFd, Error> {
    let local = |why: String| Error::Local(format!("{name}: {why}"));
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| local(e.to_string()))?;
    let stat = rustix::fs::fstat(&file).map_err(|e| local(e.to_string()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(local("not a regular file".into()));
    }
    if stat.st_size as u64 != size {
        return Err(local(format!(
            "{} bytes, signed {size}: changed since the dump",
            stat.st_size
        )));
    }
    Ok(file)
}
