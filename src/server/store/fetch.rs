//! Fetching from a store: a checkpoint object, checked against its id,
//! its signed manifest verified, its index validated; and chunks, each
//! checked against its hash.

use super::format::{self, ChunkRef, MAX_OBJECT, StoredFile};
use super::runtime::{blocking, on_runtime};
use super::{Error, Store, split_checkpoint_url};
use crate::server::images::manifest::Manifest;
use crate::server::images::trust::Trust;

/// A checkpoint in a store, as its object describes it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its URL.
    pub url: String,
    /// Its id.
    pub id: String,
    /// Its manifest (verified, unless [`Checkpoint::signature`] says why not).
    pub manifest: Manifest,
    /// `Ok` when the manifest verified with the keys given; else why not.
    pub signature: Result<(), String>,
    /// Its files and their chunks.
    pub files: Vec<StoredFile>,
    /// The signed manifest, verbatim (the images' `selfdump-manifest`).
    pub signed: Vec<u8>,
}

impl Checkpoint {
    /// Bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Bytes its chunks take in the store, as pushed.
    pub fn stored(&self) -> u64 {
        self.chunks().map(|c| u64::from(c.stored)).sum()
    }

    /// Its chunks, in order (a chunk two files share appears twice).
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.files.iter().flat_map(|f| &f.chunks)
    }
}

/// Fetches and describes the checkpoint at `url`, verifying its signature
/// with `trust` (a signature that does not verify is reported in
/// [`Checkpoint::signature`], not an error; a damaged or mismatched object
/// is an error). For `selfdump inspect URL`.
pub async fn inspect(url: &str, trust: Option<&Trust>) -> Result<Checkpoint, Error> {
    let (url, trust) = (url.to_owned(), trust.cloned());
    on_runtime(async move {
        let (_, checkpoint) = fetch(&url, trust.as_ref()).await?;
        Ok(checkpoint)
    })
    .await
}

/// The checkpoint at `url` and its store; the signature checked with
/// `trust` (`None`: not checked) and the index validated either way.
pub(crate) async fn fetch(url: &str, trust: Option<&Trust>) -> Result<(Store, Checkpoint), Error> {
    let (root, id) = split_checkpoint_url(url)?;
    let store = Store::open(root, false)?;
    let object = store.get(&format!("checkpoints/{id}"), MAX_OBJECT).await?;
    let (signed, files) = format::decode(id, &object).map_err(Error::Refused)?;
    let refused = |e: &dyn std::fmt::Display| Error::Refused(format!("checkpoint {id}: {e}"));
    let (manifest, ..) = Manifest::parse_unverified(signed).map_err(|e| refused(&e))?;
    let signature = match trust {
        None => Err("not checked: no key to check it with".to_owned()),
        Some(trust) => Manifest::verify_trusted(signed, trust)
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    format::validate(id, &manifest, &files).map_err(Error::Refused)?;
    let checkpoint = Checkpoint {
        url: url.to_owned(),
        id: id.to_owned(),
        manifest,
        signature,
        files,
        signed: signed.to_vec(),
    };
    Ok((store, checkpoint))
}

/// [`fetch`], refusing a checkpoint whose signature does not verify.
pub(crate) async fn fetch_verified(url: &str, trust: &Trust) -> Result<(Store, Checkpoint), Error> {
    let (store, checkpoint) = fetch(url, Some(trust)).await?;
    if let Err(e) = &checkpoint.signature {
        return Err(Error::Refused(format!("checkpoint {}: {e}", checkpoint.id)));
    }
    Ok((store, checkpoint))
}

/// The most bytes a chunk of `len` bytes can take compressed (zstd's bound,
/// rounded up generously).
fn stored_bound(len: u32) -> u64 {
    u64::from(len) + u64::from(len) / 128 + 4096
}

/// Chunk `chunk` from the store, decompressed and checked against its
/// hash (`what` names it in errors: its file and number).
pub(crate) async fn fetch_chunk(
    store: &Store,
    chunk: &ChunkRef,
    what: String,
) -> Result<Vec<u8>, Error> {
    let name = format!("chunks/{}", chunk.hash);
    let compressed = store.get(&name, stored_bound(chunk.len)).await?;
    let (len, hash, object) = (chunk.len as usize, chunk.hash.clone(), store.url.clone());
    blocking(move || {
        let refused = |why: &str| {
            Error::Refused(format!(
                "{object}/{name} ({what}) {why}: damaged or overwritten in the store after the \
                 push; nothing of it was used or cached"
            ))
        };
        let data = zstd::bulk::decompress(&compressed, len)
            .map_err(|_| refused("does not decompress to the length listed"))?;
        if data.len() != len {
            return Err(refused("does not decompress to the length listed"));
        }
        if format::hex(blake3::hash(&data).as_bytes()) != hash {
            return Err(refused("does not hash to its name"));
        }
        Ok(data)
    })
    .await
}
