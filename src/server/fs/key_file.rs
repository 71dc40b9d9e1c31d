//! Where the signing key is kept: a file of root's, mode 0600, in a
//! directory of the service's own, never followed through a symlink; its
//! public key beside it ([`public_key_file`]), for users who cannot read
//! the key itself.

use crate::server::fs::service_dir::ServiceDir;
use crate::server::images::format::write_all;
use crate::server::images::manifest::Key;
use rustix::fs::{Mode, OFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Where [`Key::load_or_create`] writes the public key of the key at
/// `key_file`: beside it, `.pub` instead of `.key`
/// (`/var/lib/selfdump/signing.pub`).
pub fn public_key_file(key_file: &Path) -> PathBuf {
    key_file.with_extension("pub")
}

impl Key {
    /// Reads the key at `path`, which must be a regular file of root's that
    /// nobody else can read (not followed through a symlink).
    pub fn load(path: &Path) -> io::Result<Self> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named(e.into()))?;
        let stat = rustix::fs::fstat(&file).map_err(|e| named(e.into()))?;
        if stat.st_uid != 0 || stat.st_mode & 0o077 != 0 || stat.st_size != 32 {
            return Err(named(io::Error::other(format!(
                "a key must be 32 bytes, root's, mode 0600 (found owner {}, mode {:o}, {} bytes)",
                stat.st_uid,
                stat.st_mode & 0o7777,
                stat.st_size
            ))));
        }
        let mut key = [0u8; 32];
        let mut got = 0;
        while got < 32 {
            match rustix::io::read(&file, &mut key[got..]).map_err(|e| named(e.into()))? {
                0 => return Err(named(io::Error::other("short key file"))),
                n => got += n,
            }
        }
        Ok(Self::from_bytes(key))
    }

    /// Loads the key at `path`, or makes one there (and its directory,
    /// root's, 0700) if there is none yet; either way its public key is
    /// written beside it ([`public_key_file`]).
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let key = Self::load_or_make(path)?;
        if let Err(e) = key.write_public(&public_key_file(path)) {
            log::warn!("cannot write {}: {e}", public_key_file(path).display());
        }
        Ok(key)
    }

    /// Writes the public key to `path` (root's, 0644), unless it is there.
    fn write_public(&self, path: &Path) -> io::Result<()> {
        let text = self.public().to_file();
        if std::fs::read(path).is_ok_and(|t| t == text.as_bytes()) {
            return Ok(());
        }
        let tmp = PathBuf::from(format!("{}.new-{}", path.display(), Self::generate()?.id()));
        let file = rustix::fs::open(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))?;
        write_all(&file, text.as_bytes())?;
        rustix::fs::fsync(&file)?;
        rustix::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = rustix::fs::unlink(&tmp);
        })?;
        Ok(())
    }

    fn load_or_make(path: &Path) -> io::Result<Self> {
        match Self::load(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        if let Some(dir) = path.parent() {
            ServiceDir::open_or_create(dir)?;
        }
        let key = Self::generate()?;
        // a name of its own per attempt (threads of one process race too)
        let tmp = PathBuf::from(format!("{}.new-{}", path.display(), Self::generate()?.id()));
        let file = rustix::fs::open(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        write_all(&file, key.bytes())?;
        rustix::fs::fsync(&file)?;
        // another service may have made one meanwhile: keep the first
        match rustix::fs::link(&tmp, path) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = rustix::fs::unlink(&tmp);
        log::info!("made a new signing key {}", path.display());
        Self::load(path)
    }
}
