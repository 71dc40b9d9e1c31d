//! Signed images. At the end of a dump the service writes a manifest into
//! the images: every image file's name, size and BLAKE3 hash, and the
//! dump's facts ([`ImageMeta`]), authenticated with BLAKE3 in keyed mode
//! under a key only the service can read. A restore checks it before CRIU
//! reads anything.
//!
//! Why BLAKE3: one crate gives both the per-file hashes and the keyed MAC
//! (its keyed mode is a PRF, no HMAC construction needed), it hashes at
//! several GB/s per core, and it parallelises one large file over all
//! cores (`rayon`), which the pages of a GiB-sized dump need.

pub use super::key::Key;
use super::key::TAG_LEN;
use crate::server::images::format::{ImageMeta, write_all};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

/// The manifest's name inside the images directory.
pub const MANIFEST_FILE: &str = "selfdump-manifest";

/// Where `selfdump serve` and `selfdump restore` keep the key unless told
/// otherwise (`--key-file`).
pub const DEFAULT_KEY_FILE: &str = "/var/lib/selfdump/signing.key";

/// Files in an images directory that are not part of the images: CRIU's
/// logs and statistics. They are neither signed nor given to CRIU on a
/// restore.
pub fn unsigned_extra(name: &str) -> bool {
    name.ends_with(".log") || name == "stats-dump" || name == "stats-restore"
}

const MAGIC: &[u8; 8] = b"SDMANIF1";
/// Manifests are small (a few hundred bytes per image file).
const MAX_MANIFEST: usize = 4 << 20;

/// One signed image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Its name in the images directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its BLAKE3 hash.
    pub hash: [u8; 32],
}

/// What a manifest says: the dump's facts and every image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Which key signed it ([`Key::id`]); informative until verified.
    pub key_id: String,
    /// The dump's facts.
    pub meta: ImageMeta,
    /// Every image file, sorted by name.
    pub files: Vec<FileDigest>,
}

/// Why a manifest was not accepted.
#[derive(Debug)]
pub enum ManifestError {
    /// There is none: the images were not made by a selfdump service.
    Missing,
    /// It cannot be read or parsed.
    Malformed(String),
    /// Its signature does not verify with this key.
    BadSignature {
        /// The key it was checked with.
        ours: String,
        /// The key it claims.
        theirs: String,
    },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(f, "no {MANIFEST_FILE}: these images are not signed"),
            Self::Malformed(why) => write!(f, "{MANIFEST_FILE} is malformed: {why}"),
            Self::BadSignature { ours, theirs } if ours != theirs => write!(
                f,
                "{MANIFEST_FILE} is signed by key {theirs}, not by this service's key {ours}"
            ),
            Self::BadSignature { ours, .. } => write!(
                f,
                "{MANIFEST_FILE} does not verify with key {ours}: it was changed after the dump"
            ),
        }
    }
}

impl Manifest {
    /// The signed bytes of the manifest, for the file [`MANIFEST_FILE`].
    pub fn sign(&self, key: &Key) -> Vec<u8> {
        let body = rmp_serde::to_vec_named(self).expect("a manifest serialises");
        let mut out = Vec::with_capacity(MAGIC.len() + TAG_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key.tag(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Parses a manifest file without checking its signature (for
    /// `selfdump inspect`, which says whether it verifies separately).
    pub fn parse_unverified(bytes: &[u8]) -> Result<(Self, [u8; TAG_LEN], &[u8]), ManifestError> {
        let malformed = |why: &str| ManifestError::Malformed(why.into());
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| malformed("bad magic"))?;
        if rest.len() < TAG_LEN {
            return Err(malformed("truncated"));
        }
        let (tag, body) = rest.split_at(TAG_LEN);
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
        de.set_max_depth(16);
        let manifest: Self = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if de.position() as usize != body.len() {
            return Err(malformed("trailing bytes"));
        }
        Ok((manifest, tag.try_into().expect("32 bytes"), body))
    }

    /// Parses and verifies a manifest file.
    pub fn verify(bytes: &[u8], key: &Key) -> Result<Self, ManifestError> {
        let (manifest, tag, body) = Self::parse_unverified(bytes)?;
        // constant time: blake3's Hash compares in constant time
        if blake3::Hash::from(tag) != blake3::Hash::from(key.tag(body)) {
            return Err(ManifestError::BadSignature {
                ours: key.id(),
                theirs: manifest.key_id,
            });
        }
        Ok(manifest)
    }

    /// Reads the manifest of the images directory `dir`.
    pub fn read(dir: &impl AsFd) -> Result<Vec<u8>, ManifestError> {
        match rustix::fs::openat(
            dir,
            MANIFEST_FILE,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Err(rustix::io::Errno::NOENT) => Err(ManifestError::Missing),
            Err(e) => Err(ManifestError::Malformed(e.to_string())),
            Ok(file) => read_capped(&file, MAX_MANIFEST)
                .map_err(|e| ManifestError::Malformed(e.to_string())),
        }
    }

    /// The entry for `name`.
    pub fn file(&self, name: &str) -> Option<&FileDigest> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// The BLAKE3 hash of an open regular file of `size` bytes, read through
/// a private mapping on all cores (small files are simply read).
pub fn hash_file(file: &OwnedFd, size: u64) -> io::Result<[u8; 32]> {
    HASHED.with(|h| h.set(h.get() + size));
    let mut hasher = blake3::Hasher::new();
    if size < 1 << 20 {
        hasher.update(&read_capped(file, size as usize + 1)?);
    } else {
        let file = std::fs::File::from(file.try_clone()?);
        hasher.update_mmap_rayon(&file_path_of(&file)?)?;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// [`hash_file`] on the calling thread alone, for a file only root can
/// change (it is read through a mapping).
pub(crate) fn hash_file_on_one_core(file: &OwnedFd, size: u64) -> io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::from(file.try_clone()?);
    if file.metadata()?.len() != size {
        return Err(io::Error::other("file not of the size verified"));
    }
    hasher.update_mmap(file_path_of(&file)?)?;
    Ok(*hasher.finalize().as_bytes())
}

/// The BLAKE3 hash of an open regular file of `size` bytes, read with
/// `pread` (no mapping: a file someone else may truncate meanwhile would
/// kill a mapping's reader with `SIGBUS`), hashed on all cores a chunk at
/// a time. A file that is not `size` bytes long any more is an error.
pub(crate) fn hash_file_by_reading(file: &OwnedFd, size: u64) -> io::Result<[u8; 32]> {
    const CHUNK: usize = 4 << 20;
    HASHED.with(|h| h.set(h.get() + size));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK.min(size as usize + 1)];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match rustix::io::pread(file, &mut buf[filled..], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        offset += filled as u64;
        if offset > size {
            return Err(io::Error::other("file larger than expected"));
        }
        hasher.update_rayon(&buf[..filled]);
        if filled < buf.len() {
            break;
        }
    }
    if offset != size {
        return Err(io::Error::other("file shorter than expected"));
    }
    Ok(*hasher.finalize().as_bytes())
}

thread_local! {
    /// Bytes [`hash_file`] was asked to hash on this thread.
    static HASHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes [`hash_file`] has hashed on the calling thread so far: a restore
/// verifies on its caller's thread, so the difference across one call is
/// what that call hashed (`copies::Copies::hashed`), whatever other threads
/// (the service's dumps) hash meanwhile.
pub(crate) fn hashed_on_this_thread() -> u64 {
    HASHED.with(std::cell::Cell::get)
}

/// Adds `bytes` hashed by helper threads on behalf of the calling one.
pub(crate) fn count_hashed_on_this_thread(bytes: u64) {
    HASHED.with(|h| h.set(h.get() + bytes));
}

/// `/proc/self/fd/N`: blake3's mmap helper takes a path; this one names
/// the open file itself, whatever happens to its name.
fn file_path_of(file: &std::fs::File) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    Ok(crate::procfs::self_fd(file.as_raw_fd()))
}

fn read_capped(file: &impl AsFd, cap: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match rustix::io::pread(file, &mut buf, out.len() as u64)? {
            0 => return Ok(out),
            n => out.extend_from_slice(&buf[..n]),
        }
        if out.len() > cap {
            return Err(io::Error::other("file larger than expected"));
        }
    }
}

/// Writes `bytes` as a new file `name` (mode 0600) in `dir`.
pub(crate) fn create_file(dir: &impl AsFd, name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    write_all(&file, bytes)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::JobId;

    fn manifest() -> Manifest {
        Manifest {
            key_id: "k".into(),
            meta: ImageMeta {
                protocol: 1,
                job: JobId { service: 1, seq: 2 },
                pid: 42,
                uid: 1000,
                ..ImageMeta::default()
            },
            files: vec![FileDigest {
                name: "pstree.img".into(),
                size: 3,
                hash: [7; 32],
            }],
        }
    }

    #[test]
    fn a_manifest_verifies_with_its_key_only() {
        let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
        let signed = manifest().sign(&key);
        assert_eq!(Manifest::verify(&signed, &key).unwrap(), manifest());
        assert!(matches!(
            Manifest::verify(&signed, &other),
            Err(ManifestError::BadSignature { .. })
        ));
        for at in [0, 9, 40, signed.len() - 1] {
            let mut flipped = signed.clone();
            flipped[at] ^= 1;
            assert!(
                Manifest::verify(&flipped, &key).is_err(),
                "byte {at} flipped"
            );
        }
        let mut longer = signed.clone();
        longer.push(0);
        assert!(Manifest::verify(&longer, &key).is_err());
    }
}
