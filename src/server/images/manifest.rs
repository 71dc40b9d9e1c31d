//! Signed images. At the end of a dump the service writes a manifest into
//! the images: every image file's name, size and BLAKE3 hash, and the
//! dump's facts ([`ImageMeta`]), signed with the service's Ed25519 key. A
//! restore checks it before CRIU reads anything, with the keys the host
//! trusts ([`Trust`](super::trust::Trust): its own, and those of its trust
//! directory).
//!
//! Why BLAKE3 for the files: it hashes at several GB/s per core, and it
//! parallelises one large file over all cores (`rayon`), which the pages of
//! a GiB-sized dump need. Why Ed25519 for the manifest: a host that can
//! check a signature cannot make one, so a fleet can restore a service's
//! checkpoints without holding its secret.
//!
//! The signing key is derived from the service's 32-byte secret ([`Key`],
//! unchanged since manifests were signed with BLAKE3 in keyed mode).
//! Manifests signed that old way ([`MAGIC_V1`]) still verify on the host
//! that holds the secret, and only there: a keyed hash can be checked only
//! by whoever could also have made it. Signing and verifying are
//! `signature.rs`'s.

pub use super::key::Key;
use super::key::TAG_LEN;
use super::trust::DEFAULT_TRUST_DIR;
use crate::server::images::format::{ImageMeta, write_all};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

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

/// Manifests signed with the service's secret as a BLAKE3 key (before
/// Ed25519): magic, 32-byte tag, body.
pub const MAGIC_V1: &[u8; 8] = b"SDMANIF1";
/// Manifests signed with Ed25519: magic, 64-byte signature, body.
pub const MAGIC_V2: &[u8; 8] = b"SDMANIF2";
/// Length of an Ed25519 signature.
pub(super) const SIGNATURE_LEN: usize = 64;
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
    /// It is signed by a key this host does not trust.
    Untrusted {
        /// The key it names.
        theirs: String,
        /// This host's own key, if it has one.
        ours: Option<String>,
        /// The trust directory that was read, if any.
        dir: Option<PathBuf>,
    },
    /// It is signed the old way (a keyed hash), which only the host whose
    /// secret made it can check, and this host does not hold that secret.
    Legacy {
        /// The key it names.
        theirs: String,
        /// This host's key (in the old scheme's naming), if it has one.
        ours: Option<String>,
    },
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
            Self::Untrusted { theirs, ours, dir } => {
                match ours {
                    Some(ours) => write!(
                        f,
                        "{MANIFEST_FILE} is signed by key {theirs}, not by this service's key \
                         {ours}"
                    )?,
                    None => write!(f, "{MANIFEST_FILE} is signed by key {theirs}")?,
                }
                let dir = dir.as_deref().unwrap_or(Path::new(DEFAULT_TRUST_DIR));
                write!(
                    f,
                    " nor by a key trusted here: key {theirs} is not trusted on this host; to \
                     trust it, put its public key (`selfdump key public` on its host) in {}",
                    dir.display()
                )
            }
            Self::Legacy { theirs, ours } => write!(
                f,
                "{MANIFEST_FILE} is signed the old way (a keyed hash, key {theirs}), which only \
                 the host holding that key can check{}: restore it there, or take a new \
                 checkpoint",
                ours.as_ref()
                    .map_or(String::new(), |o| format!(" (this host's key is {o})"))
            ),
            Self::BadSignature { ours, .. } => write!(
                f,
                "{MANIFEST_FILE} does not verify with key {ours}: it was changed after the dump"
            ),
        }
    }
}

impl Manifest {
    /// Parses a manifest file without checking its signature (for
    /// `selfdump inspect`, which says whether it verifies separately).
    /// Returns the manifest, its signature (or keyed hash) and its body.
    pub fn parse_unverified(bytes: &[u8]) -> Result<(Self, &[u8], &[u8]), ManifestError> {
        let malformed = |why: &str| ManifestError::Malformed(why.into());
        let (rest, seal_len) = match bytes.get(..MAGIC_V1.len()) {
            Some(m) if m == MAGIC_V1 => (&bytes[MAGIC_V1.len()..], TAG_LEN),
            Some(m) if m == MAGIC_V2 => (&bytes[MAGIC_V2.len()..], SIGNATURE_LEN),
            _ => return Err(malformed("bad magic")),
        };
        if bytes.len() > MAX_MANIFEST {
            return Err(malformed("too large"));
        }
        if rest.len() < seal_len {
            return Err(malformed("truncated"));
        }
        let (seal, body) = rest.split_at(seal_len);
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
        de.set_max_depth(16);
        let manifest: Self = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if de.position() as usize != body.len() {
            return Err(malformed("trailing bytes"));
        }
        Ok((manifest, seal, body))
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
/// a private mapping (small files are simply read), on all cores from
/// 16 MiB (`ALL_CORES_FROM`).
pub fn hash_file(file: &OwnedFd, size: u64) -> io::Result<[u8; 32]> {
    HASHED.with(|h| h.set(h.get() + size));
    if (1 << 20..ALL_CORES_FROM).contains(&size) {
        return hash_file_on_one_core(file, size);
    }
    let mut hasher = blake3::Hasher::new();
    if size < 1 << 20 {
        hasher.update(&read_capped(file, size as usize + 1)?);
    } else {
        let file = std::fs::File::from(file.try_clone()?);
        hasher.update_mmap_rayon(&file_path_of(&file)?)?;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Files of this size and more are hashed on all cores (rayon's pool).
/// Below, one core hashes them in a few milliseconds, and a process that
/// restores once (`selfdump restore`) would spend as long starting the
/// pool: a 2 MiB checkpoint's files were placed and hashed in 5.2 ms with
/// the pool, 2.7 ms without (medians of 20 restores).
pub(crate) const ALL_CORES_FROM: u64 = 16 << 20;

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

pub(crate) fn read_capped(file: &impl AsFd, cap: usize) -> io::Result<Vec<u8>> {
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
