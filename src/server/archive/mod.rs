//! One-file archives of a checkpoint (feature `archive`), for people who
//! move files by hand: `selfdump export DIR FILE` writes the generation
//! `DIR/latest` names (or the images in `DIR`) as a tar archive compressed
//! with zstd, the signed manifest first, then every signed file; `selfdump
//! import FILE DIR` checks it as a restore would (the signature with the
//! keys this host trusts, then every entry: its name, type, size and hash
//! against the manifest, nothing else) before `DIR/latest` names it.
//!
//! Standard tools read the archive (`tar --zstd -xf FILE`), and plain
//! CRIU restores what they unpack; `import` is what checks it.

mod generation;

pub(crate) use generation::Generation;

use crate::server::fs::generations::{lock_shared, read_latest};
use crate::server::images::manifest::{MANIFEST_FILE, Manifest};
use crate::server::images::trust::Trust;
use rustix::fs::{Mode, OFlags};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// zstd's level for archives: compact, still fast.
const LEVEL: i32 = 3;
/// The largest manifest an archive may start with.
const MAX_MANIFEST: u64 = 4 << 20;

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The generation exported (`None`: images directly in the directory).
    pub generation: Option<String>,
    /// Bytes of its files.
    pub bytes: u64,
    /// Bytes of the archive.
    pub archive_bytes: u64,
}

fn named(what: &dyn std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Writes the checkpoint in `dir` into the archive `file` (created; it
/// must not exist). Every file is checked against its signed hash as it is
/// written, so a damaged checkpoint is not exported.
pub fn export(dir: &Path, file: &Path) -> io::Result<Exported> {
    let (images, generation) = open_checkpoint(dir)?;
    let signed = Manifest::read(&images).map_err(|e| named(&dir.display(), e))?;
    let (manifest, ..) =
        Manifest::parse_unverified(&signed).map_err(|e| named(&dir.display(), e))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| named(&file.display(), e))?;
    let mut tar = tar::Builder::new(zstd::Encoder::new(out, LEVEL)?);
    let mtime = manifest.meta.created_unix;
    append(
        &mut tar,
        MANIFEST_FILE,
        signed.len() as u64,
        mtime,
        &signed[..],
    )?;
    for f in &manifest.files {
        let fd = open_regular(&images, &f.name, f.size)?;
        let mut hashing = Hashing::new(std::fs::File::from(fd));
        append(&mut tar, &f.name, f.size, mtime, &mut hashing)?;
        if hashing.hasher.finalize().as_bytes() != &f.hash {
            let _ = std::fs::remove_file(file);
            return Err(io::Error::other(format!(
                "{}: {} does not match its signed hash (changed after the dump); nothing exported",
                dir.display(),
                f.name
            )));
        }
    }
    let out = tar.into_inner()?.finish()?;
    out.sync_all()?;
    Ok(Exported {
        generation,
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        archive_bytes: out.metadata()?.len(),
    })
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    mtime: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header.set_cksum();
    tar.append(&header, data)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// What [`import`] made.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The generation made in the directory.
    pub generation: String,
    /// Its path.
    pub path: PathBuf,
    /// Bytes of its files.
    pub bytes: u64,
}

/// Makes the checkpoint of the archive `file` a local generation of `dir`
/// (see the module docs), after checking everything in it; anything else
/// in the archive is refused, named.
pub fn import(file: &Path, dir: &Path, trust: &Trust) -> io::Result<Imported> {
    let input = std::fs::File::open(file).map_err(|e| named(&file.display(), e))?;
    let mut archive = tar::Archive::new(zstd::Decoder::new(input)?);
    let mut entries = archive.entries()?;
    let refused = |why: String| io::Error::other(format!("{}: refused: {why}", file.display()));
    let mut first = entries
        .next()
        .ok_or_else(|| refused("empty archive".into()))??;
    expect_entry(&first, MANIFEST_FILE, None).map_err(refused)?;
    if first.size() > MAX_MANIFEST {
        return Err(refused(format!("its {MANIFEST_FILE} is too large")));
    }
    let mut signed = Vec::new();
    first.read_to_end(&mut signed)?;
    let manifest = Manifest::verify_trusted(&signed, trust).map_err(|e| refused(e.to_string()))?;
    if let Some(bad) = manifest
        .files
        .iter()
        .find(|f| !crate::server::images::format::plain_name(&f.name))
    {
        return Err(refused(format!(
            "its manifest names {:?}, not a plain file name",
            bad.name
        )));
    }
    let generation = Generation::start(dir).map_err(|e| named(&dir.display(), e))?;
    crate::server::images::manifest::create_file(generation.fd(), MANIFEST_FILE, &signed)?;
    for f in &manifest.files {
        let entry = entries
            .next()
            .ok_or_else(|| refused(format!("{} is missing", f.name)))??;
        unpack(entry, f, generation.fd()).map_err(refused)?;
    }
    if let Some(extra) = entries.next() {
        let extra = extra?;
        let name = String::from_utf8_lossy(&extra.path_bytes()).into_owned();
        return Err(refused(format!(
            "{name:?} is not part of the signed checkpoint"
        )));
    }
    generation.check_files(&manifest).map_err(refused)?;
    let (name, path) = generation.commit(manifest.meta.generation.as_deref())?;
    Ok(Imported {
        generation: name,
        path,
        bytes: manifest.files.iter().map(|f| f.size).sum(),
    })
}

/// Writes the entry of the signed file `f` into `dir` (checked against
/// its name, type and size; its hash is checked once all are in).
fn unpack(
    mut entry: tar::Entry<'_, impl Read>,
    f: &crate::server::images::manifest::FileDigest,
    dir: &OwnedFd,
) -> Result<(), String> {
    expect_entry(&entry, &f.name, Some(f.size))?;
    let out = rustix::fs::openat(
        dir,
        f.name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(|e| format!("{}: {e}", f.name))?;
    let copied = io::copy(
        &mut (&mut entry).take(f.size),
        &mut std::fs::File::from(out),
    )
    .map_err(|e| format!("{}: {e}", f.name))?;
    if copied != f.size {
        return Err(format!("{} is truncated", f.name));
    }
    Ok(())
}

/// An archive entry must be a regular file named exactly `name` (and of
/// `size` bytes, if given).
fn expect_entry(
    entry: &tar::Entry<'_, impl Read>,
    name: &str,
    size: Option<u64>,
) -> Result<(), String> {
    let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if path != name {
        return Err(format!("found {path:?} where {name} belongs"));
    }
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(format!("{path} is not a regular file"));
    }
    match size {
        Some(size) if entry.size() != size => {
            Err(format!("{path} is {} bytes, signed {size}", entry.size()))
        }
        _ => Ok(()),
    }
}

/// The checkpoint in `dir`: the generation `latest` names (held), or `dir`.
pub(crate) fn open_checkpoint(dir: &Path) -> io::Result<(OwnedFd, Option<String>)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let top = rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| named(&dir.display(), e))?;
    let Some(name) = read_latest(&top)? else {
        return Ok((top, None));
    };
    let generation =
        rustix::fs::openat(&top, name.as_str(), flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| named(&name, e))?;
    lock_shared(&generation).map_err(io::Error::other)?;
    Ok((generation, Some(name)))
}

/// An image file, which must be a regular file of its signed size.
fn open_regular(dir: &OwnedFd, name: &str, size: u64) -> io::Result<OwnedFd> {
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| named(&name, e))?;
    let stat = rustix::fs::fstat(&file)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile
        || stat.st_size as u64 != size
    {
        return Err(named(
            &name,
            format!("not a regular file of its signed {size} bytes"),
        ));
    }
    Ok(file)
}
