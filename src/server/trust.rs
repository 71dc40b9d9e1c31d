//! Whose signatures a host accepts: its own service key, and the public
//! keys in a trust directory ([`DEFAULT_TRUST_DIR`]).
//!
//! A service signs manifests with Ed25519. Its signing key is derived from
//! the 32-byte secret it always had ([`Key`]: `signing.key`), so no key file
//! changes and no migration is needed; its public key is what other hosts
//! trust. `selfdump key public` prints it in minisign's public-key file
//! format (two lines: an untrusted comment, then base64 of `Ed`, an 8-byte
//! key number and the 32-byte key), which is exactly what a file of the
//! trust directory holds, and which minisign's own tools read.
//!
//! The trust directory is checked like the key file, because whoever can
//! add a file there can make this host restore anything as root: it must
//! be a directory of root's that nobody else can write (nor any directory
//! above it, but for sticky ones of root's such as `/tmp`), and each
//! `*.pub` file in it a regular file of root's that nobody else can write
//! (not followed through a symlink). A file that breaks these rules, or is
//! not a public key, is an error naming it, never silently skipped.

use super::manifest::Key;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustix::fs::{FileType, Mode, OFlags};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where `selfdump restore`, `inspect` and `pull` look for trusted public
/// keys unless told otherwise (`--trust-dir`).
pub const DEFAULT_TRUST_DIR: &str = "/etc/selfdump/trusted.d";

/// Public key files are a few dozen bytes.
const MAX_KEY_FILE: usize = 4096;

/// An Ed25519 public key a host may trust.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    pub(crate) fn from_verifying(key: ed25519_dalek::VerifyingKey) -> Self {
        Self(key)
    }

    /// Its key number: the first 8 bytes of a hash of the key (what
    /// minisign calls the key id).
    fn number(&self) -> [u8; 8] {
        let hash = blake3::derive_key("selfdump ed25519 key id v1", self.0.as_bytes());
        hash[..8].try_into().expect("8 bytes")
    }

    /// The key's id, as manifests name their signer: 16 lowercase hex
    /// digits (minisign shows the same number in upper case).
    pub fn id(&self) -> String {
        format!("{:016x}", u64::from_le_bytes(self.number()))
    }

    /// The key in minisign's public-key file format (ends with a newline).
    pub fn to_file(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.number());
        raw.extend_from_slice(self.0.as_bytes());
        format!(
            "untrusted comment: minisign public key {:016X} (selfdump service)\n{}\n",
            u64::from_le_bytes(self.number()),
            BASE64.encode(raw)
        )
    }

    /// Parses a public key file (minisign's format: an optional
    /// `untrusted comment:` line, then the base64 key line).
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or("no key line")?;
        let raw = BASE64
            .decode(line)
            .map_err(|e| format!("the key line is not base64: {e}"))?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            return Err("not an Ed25519 public key in minisign's format".into());
        }
        let bytes: [u8; 32] = raw[10..].try_into().expect("32 bytes");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "not a valid Ed25519 public key")?;
        let key = Self(key);
        if raw[2..10] != key.number() {
            return Err(format!(
                "its key number is not the one of its key ({}): not a selfdump service key",
                key.id()
            ));
        }
        Ok(key)
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

/// The keys a host accepts manifests from: its own service key (when it
/// can read it) and the public keys of its trust directory.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// This host's own key: its public half is trusted, and it also checks
    /// manifests signed the old way (a keyed hash), which only this key can.
    pub own: Option<Key>,
    /// Other services' public keys.
    pub keys: Vec<PublicKey>,
    /// Where they were read from, for messages.
    pub dir: Option<PathBuf>,
}

impl Trust {
    /// Trusts `own` alone.
    pub fn own(key: Key) -> Self {
        Self {
            own: Some(key),
            ..Self::default()
        }
    }

    /// `own` and the keys of the trust directory `dir` (see the module
    /// docs for the rules it and its files must meet; a missing directory
    /// holds no keys).
    pub fn load(own: Option<Key>, dir: &Path) -> io::Result<Self> {
        Ok(Self {
            own,
            keys: load_dir(dir)?,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// This host's key read from `key_file` (or, when it cannot be read,
    /// as a user who is not root, its public key from beside it:
    /// [`public_key_file`](super::manifest::public_key_file)), and the keys
    /// of the trust directory `dir`.
    pub fn load_host(key_file: &Path, dir: &Path) -> io::Result<Self> {
        let own = Key::load(key_file).ok();
        let mut trust = Self::load(own, dir)?;
        if trust.own.is_none() {
            let public = super::manifest::public_key_file(key_file);
            match read_key_file(&public) {
                Ok(key) => trust.keys.push(key),
                Err(e) => log::debug!("{e}"),
            }
        }
        Ok(trust)
    }

    /// Whether it holds any key at all.
    pub fn is_empty(&self) -> bool {
        self.own.is_none() && self.keys.is_empty()
    }

    /// The trusted public key with this id.
    pub fn find(&self, id: &str) -> Option<PublicKey> {
        let own = self.own.as_ref().map(Key::public);
        own.into_iter()
            .chain(self.keys.iter().cloned())
            .find(|k| k.id().eq_ignore_ascii_case(id))
    }

    /// The ids trusted, for messages.
    pub fn ids(&self) -> Vec<String> {
        let own = self.own.as_ref().map(Key::id);
        own.into_iter()
            .chain(self.keys.iter().map(PublicKey::id))
            .collect()
    }
}

fn named(path: &Path, e: impl fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {e}", path.display()))
}

/// Reads the `*.pub` files of a trust directory.
fn load_dir(dir: &Path) -> io::Result<Vec<PublicKey>> {
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Err(rustix::io::Errno::NOENT) => return Ok(Vec::new()),
        other => other.map_err(|e| named(dir, e))?,
    };
    only_root_changes(dir)?;
    let mut names = super::images::entry_names(&fd)?;
    names.sort();
    let mut keys = Vec::new();
    for name in names.iter().filter(|n| n.ends_with(".pub")) {
        let file = rustix::fs::openat(
            &fd,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        );
        keys.push(parse_key_file(&dir.join(name), file)?);
    }
    Ok(keys)
}

/// Reads one public key file, by path (the one beside the key file).
fn read_key_file(path: &Path) -> io::Result<PublicKey> {
    let file = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    );
    parse_key_file(path, file)
}

/// Checks and parses an opened public key file (see the module docs).
fn parse_key_file(path: &Path, file: rustix::io::Result<OwnedFd>) -> io::Result<PublicKey> {
    let file =
        file.map_err(|e| named(path, format!("{e} (a trusted key must be a plain file)")))?;
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
        || stat.st_uid != 0
        || stat.st_mode & 0o022 != 0
        || stat.st_size as usize > MAX_KEY_FILE
    {
        return Err(named(
            path,
            format!(
                "a trusted key must be a small regular file of root's that nobody else can \
                 write (found owner {}, mode {:o}, {} bytes); fix or remove it",
                stat.st_uid,
                stat.st_mode & 0o7777,
                stat.st_size
            ),
        ));
    }
    let text = super::manifest::read_capped(&file, MAX_KEY_FILE).map_err(|e| named(path, e))?;
    PublicKey::parse(&String::from_utf8_lossy(&text))
        .map_err(|e| named(path, format!("{e}; fix or remove it")))
}

/// `path` and every directory above it are root's and writable by nobody
/// else (a sticky directory of root's, such as `/tmp`, may be: nobody but
/// root can replace what root made there).
fn only_root_changes(path: &Path) -> io::Result<()> {
    const STICKY: u32 = 0o1000;
    let absolute = std::path::absolute(path)?;
    for dir in absolute.ancestors() {
        let stat = rustix::fs::lstat(dir).map_err(|e| named(dir, e))?;
        let others_write = stat.st_mode & 0o022 != 0;
        let sticky_roots = stat.st_mode & STICKY != 0 && dir != absolute;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory
            || stat.st_uid != 0
            || others_write && !sticky_roots
        {
            return Err(named(
                dir,
                format!(
                    "the trust directory {} must be root's, and it and every directory above \
                     it writable by root alone (found owner {}, mode {:o})",
                    absolute.display(),
                    stat.st_uid,
                    stat.st_mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_file_parses_back_to_its_key() {
        let key = Key::generate().unwrap().public();
        let file = key.to_file();
        assert!(file.starts_with("untrusted comment: minisign public key "));
        assert_eq!(PublicKey::parse(&file).unwrap(), key);
        assert_eq!(PublicKey::parse(file.lines().nth(1).unwrap()).unwrap(), key);
        let mut other_number = file.clone().into_bytes();
        let at = file.find('\n').unwrap() + 5;
        other_number[at] = if other_number[at] == b'A' { b'B' } else { b'A' };
        assert!(PublicKey::parse(&String::from_utf8(other_number).unwrap()).is_err());
        assert!(PublicKey::parse("untrusted comment: x\n").is_err());
        assert!(PublicKey::parse("RWQ=\n").is_err());
    }

    #[test]
    fn a_trust_directory_is_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("trusted.d");
        assert!(load_dir(&dir).unwrap().is_empty(), "a missing one is empty");
        std::fs::create_dir(&dir).unwrap();
        let key = Key::generate().unwrap().public();
        std::fs::write(dir.join("a.pub"), key.to_file()).unwrap();
        std::fs::write(dir.join("README"), "ignored").unwrap();
        if !rustix::process::geteuid().is_root() {
            return; // the ownership rules need root's files
        }
        assert_eq!(load_dir(&dir).unwrap(), vec![key]);
        let set = |p: &Path, mode| std::fs::set_permissions(p, PermissionsExt::from_mode(mode));
        set(&dir.join("a.pub"), 0o666).unwrap();
        let e = load_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("a.pub") && e.contains("mode 666"), "{e}");
        set(&dir.join("a.pub"), 0o644).unwrap();
        set(&dir, 0o777).unwrap();
        let e = load_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("writable by root alone"), "{e}");
        set(&dir, 0o755).unwrap();
        std::fs::write(dir.join("b.pub"), "garbage").unwrap();
        let e = load_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("b.pub") && e.contains("fix or remove"), "{e}");
        std::fs::remove_file(dir.join("b.pub")).unwrap();
        std::os::unix::fs::symlink(dir.join("a.pub"), dir.join("c.pub")).unwrap();
        let e = load_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("c.pub") && e.contains("plain file"), "{e}");
    }
}
