//! The store's format: chunks and checkpoint objects, and the checks a
//! checkpoint object passes before anything it names is fetched.
//!
//! Under a store's root URL:
//!
//! - `chunks/<hash>`: up to [`MAX_CHUNK`] bytes of an image file (about
//!   4.5 MiB on average), zstd-compressed, named by the BLAKE3 hash of the
//!   uncompressed bytes. Files are cut on page boundaries chosen by content
//!   (`chunker.rs`), so a region of memory that did not change between two
//!   checkpoints keeps its chunks, stored once.
//! - `checkpoints/<id>`: [`MAGIC`], the length (u32, little-endian) and
//!   bytes of the checkpoint's signed manifest (`selfdump-manifest`,
//!   verbatim), then a MessagePack index: for each signed file, its
//!   chunks. `<id>` is the BLAKE3 hash of the whole object, and the
//!   checkpoint's URL names it: the URL certifies the object, whoever wrote
//!   it. Nothing in it is trusted before that: the signed manifest then
//!   says which files there are and what each hashes to; the index only
//!   says where to find their bytes, and every chunk is checked against its
//!   name when fetched, every file against its signed hash when assembled.

use crate::server::images::format::plain_name;
use crate::server::images::manifest::Manifest;
use serde::{Deserialize, Serialize};

/// Every checkpoint object starts so.
pub const MAGIC: &[u8; 8] = b"SDSTORE1";
pub use super::chunker::MAX_CHUNK;
/// The largest checkpoint object read (its index grows by about 90 bytes
/// per chunk: 64 MiB indexes some 2.8 TiB).
pub const MAX_OBJECT: u64 = 64 << 20;
/// The largest image file accepted (1 TiB).
pub const MAX_FILE: u64 = 1 << 40;
/// The most chunks one checkpoint may have.
pub const MAX_CHUNKS: usize = 1 << 20;

/// One chunk of a file, as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The BLAKE3 hash of its uncompressed bytes, 64 lowercase hex digits:
    /// its object's name under `chunks/`.
    pub hash: String,
    /// Its uncompressed length.
    pub len: u32,
    /// Its compressed length as pushed (informative).
    pub stored: u32,
}

/// One image file and its chunks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Its name in the images directory (as signed).
    pub name: String,
    /// Its size (as signed).
    pub size: u64,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// The index of a checkpoint object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Index {
    files: Vec<StoredFile>,
}

/// The hex form of a hash.
pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a hash as the store names things: 64 lowercase hex digits.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// A checkpoint object's bytes, and its id.
pub fn encode(signed: &[u8], files: &[StoredFile]) -> (Vec<u8>, String) {
    let index = rmp_serde::to_vec_named(&Index {
        files: files.to_vec(),
    })
    .expect("an index serialises");
    let len = u32::try_from(signed.len()).expect("a manifest is small");
    let object = [&MAGIC[..], &len.to_le_bytes(), signed, &index].concat();
    let id = hex(blake3::hash(&object).as_bytes());
    (object, id)
}

/// Splits a checkpoint object named `id` into its signed manifest and its
/// index, after checking that it is the object its id names.
pub fn decode<'a>(id: &str, object: &'a [u8]) -> Result<(&'a [u8], Vec<StoredFile>), String> {
    let bad = |why: &str| format!("checkpoint {id}: {why}");
    if hex(blake3::hash(object).as_bytes()) != id {
        return Err(bad(
            "the object stored under this name is not the checkpoint it names (its hash \
             differs: replaced, overwritten or damaged after the push)",
        ));
    }
    let rest = object
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a selfdump checkpoint object"))?;
    let len = u32::from_le_bytes(
        rest.get(..4)
            .ok_or_else(|| bad("truncated"))?
            .try_into()
            .expect("4"),
    );
    let signed = rest
        .get(4..4 + len as usize)
        .ok_or_else(|| bad("truncated"))?;
    let index = &rest[4 + len as usize..];
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(index));
    de.set_max_depth(8);
    let parsed: Index = Deserialize::deserialize(&mut de).map_err(|e| bad(&e.to_string()))?;
    if de.position() as usize != index.len() {
        return Err(bad("trailing bytes"));
    }
    Ok((signed, parsed.files))
}

/// Checks an index against its verified manifest before anything is
/// fetched: the same files, in the same order, with the same sizes; plain
/// names; sizes and counts within bounds; every chunk a hash of a length a
/// chunk may have, adding up to its file's size. Errors name the object.
pub fn validate(id: &str, manifest: &Manifest, files: &[StoredFile]) -> Result<(), String> {
    let bad = |why: String| format!("checkpoint {id}: {why}");
    if files.len() != manifest.files.len() {
        return Err(bad(format!(
            "its index lists {} files, its signed manifest {}",
            files.len(),
            manifest.files.len()
        )));
    }
    let mut chunks = 0usize;
    for (stored, signed) in files.iter().zip(&manifest.files) {
        let name = &stored.name;
        if !plain_name(name) || !plain_name(&signed.name) {
            return Err(bad(format!(
                "names a file {name:?}, which is not a plain file name"
            )));
        }
        if *name != signed.name || stored.size != signed.size {
            return Err(bad(format!(
                "its index lists {name:?} of {} bytes where the signed manifest has {:?} of {}",
                stored.size, signed.name, signed.size
            )));
        }
        if stored.size > MAX_FILE {
            return Err(bad(format!(
                "{name} claims {} bytes, more than {MAX_FILE}",
                stored.size
            )));
        }
        chunks += stored.chunks.len();
        if chunks > MAX_CHUNKS {
            return Err(bad(format!("more than {MAX_CHUNKS} chunks")));
        }
        check_chunks(stored).map_err(bad)?;
    }
    Ok(())
}

/// A file's chunks: hashes, lengths within a chunk, adding up to its size.
fn check_chunks(file: &StoredFile) -> Result<(), String> {
    let mut total = 0u64;
    for (i, chunk) in file.chunks.iter().enumerate() {
        let what = || format!("{} chunk {i}", file.name);
        if !is_hash(&chunk.hash) {
            return Err(format!(
                "{} is named {:?}, which is not a chunk's hash",
                what(),
                chunk.hash
            ));
        }
        if chunk.len == 0 || chunk.len as usize > MAX_CHUNK {
            return Err(format!(
                "{} ({}) claims {} bytes; a chunk holds 1 to {MAX_CHUNK}",
                what(),
                chunk.hash,
                chunk.len
            ));
        }
        total += u64::from(chunk.len);
    }
    if total != file.size {
        return Err(format!(
            "{}'s chunks add up to {total} bytes, not its signed {}",
            file.name, file.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::images::manifest::FileDigest;

    fn manifest(files: &[(&str, u64)]) -> Manifest {
        Manifest {
            key_id: "k".into(),
            meta: Default::default(),
            files: files
                .iter()
                .map(|(n, s)| FileDigest {
                    name: (*n).into(),
                    size: *s,
                    hash: [0; 32],
                })
                .collect(),
        }
    }

    fn chunk(len: u32) -> ChunkRef {
        ChunkRef {
            hash: hex(&[len as u8; 32]),
            len,
            stored: len,
        }
    }

    #[test]
    fn an_object_is_certified_by_its_id() {
        let files = vec![StoredFile {
            name: "pages-1.img".into(),
            size: 5,
            chunks: vec![chunk(5)],
        }];
        let (object, id) = encode(b"signed", &files);
        assert_eq!(decode(&id, &object).unwrap(), (&b"signed"[..], files));
        let mut other = object.clone();
        other[20] ^= 1;
        let e = decode(&id, &other).unwrap_err();
        assert!(
            e.contains(&id) && e.contains("not the checkpoint it names"),
            "{e}"
        );
        let (_, other_id) = encode(b"other", &[]);
        assert!(decode(&other_id, &object).is_err());
    }

    #[test]
    fn an_index_must_match_its_manifest_and_stay_within_bounds() {
        let m = manifest(&[("pages-1.img", 6)]);
        let file = |name: &str, size, chunks| StoredFile {
            name: name.into(),
            size,
            chunks,
        };
        let ok = [file("pages-1.img", 6, vec![chunk(4), chunk(2)])];
        assert!(validate("x", &m, &ok).is_ok());
        for (files, expect) in [
            (
                vec![file("../pages-1.img", 6, vec![chunk(6)])],
                "not a plain file name",
            ),
            (
                vec![file("pages-1.img", 7, vec![chunk(7)])],
                "signed manifest has",
            ),
            (vec![file("pages-1.img", 6, vec![chunk(5)])], "add up to 5"),
            (vec![], "index lists 0 files"),
        ] {
            let e = validate("x", &m, &files).unwrap_err();
            assert!(e.contains(expect), "{e}");
        }
        let mut bad = ok.clone();
        bad[0].chunks[0].hash = "../../etc/passwd".into();
        let e = validate("x", &m, &bad).unwrap_err();
        assert!(
            e.contains("pages-1.img chunk 0") && e.contains("not a chunk's hash"),
            "{e}"
        );
        let huge = manifest(&[("pages-1.img", 1 << 41)]);
        let e = validate("x", &huge, &[file("pages-1.img", 1 << 41, vec![])]).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let mut big = ok.clone();
        big[0].chunks = vec![
            chunk(1),
            ChunkRef {
                len: u32::MAX,
                ..chunk(2)
            },
        ];
        assert!(
            validate("x", &m, &big)
                .unwrap_err()
                .contains("a chunk holds")
        );
    }
}
