//! The key that signs the images: made once, kept by root.

use super::format::write_all;
use rustix::fs::{Mode, OFlags};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Length of a manifest's tag (a BLAKE3 keyed hash).
pub(super) const TAG_LEN: usize = 32;

/// The service's signing key: 32 random bytes, root's, mode 0600.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> io::Result<Self> {
        let mut key = [0u8; 32];
        rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty())?;
        Ok(Self(key))
    }

    /// A short public name of the key (a hash of it), shown in manifests
    /// and by `selfdump inspect`.
    pub fn id(&self) -> String {
        let id = blake3::derive_key("selfdump signing key id v1", &self.0);
        id[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

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
        Ok(Self(key))
    }

    /// Loads the key at `path`, or makes one there (and its directory,
    /// root's, 0700) if there is none yet.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match Self::load(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        if let Some(dir) = path.parent() {
            crate::server::fs::service_dir::ServiceDir::open_or_create(dir)?;
        }
        let key = Self::generate()?;
        // a name of its own per attempt (threads of one process race too)
        let tmp = PathBuf::from(format!("{}.new-{}", path.display(), Self::generate()?.id()));
        let file = rustix::fs::open(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        write_all(&file, &key.0)?;
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

    pub(super) fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        *blake3::keyed_hash(&self.0, body).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_differ_and_hide_the_key() {
        let key = Key::generate().unwrap();
        assert_ne!(key.id(), Key::generate().unwrap().id());
        assert_eq!(key.id().len(), 16);
        assert!(!format!("{key:?}").contains(&format!("{:02x}", key.0[0]).repeat(2)));
    }
}
