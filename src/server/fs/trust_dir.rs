//! Reading a host's trust directory (the rules it and its files must meet
//! are [`Trust`]'s module docs'): a directory of root's that nobody else
//! can write, nor any directory above it, holding `*.pub` files of root's
//! that nobody else can write. A file that breaks a rule is an error
//! naming it, never skipped.

use crate::server::images::format::entry_names;
use crate::server::images::manifest::read_capped;
use crate::server::images::trust::{Key, PublicKey, Trust};
use rustix::fs::{FileType, Mode, OFlags};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Public key files are a few dozen bytes.
const MAX_KEY_FILE: usize = 4096;

impl Trust {
    /// `own` and the keys of the trust directory `dir` (a missing
    /// directory holds no keys).
    pub fn load(own: Option<Key>, dir: &Path) -> io::Result<Self> {
        Ok(Self {
            own,
            keys: load_dir(dir)?,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// This host's key read from `key_file` (or, when it cannot be read,
    /// as a user who is not root, its public key from beside it:
    /// [`public_key_file`](super::key_file::public_key_file)), and the keys
    /// of the trust directory `dir`.
    pub fn load_host(key_file: &Path, dir: &Path) -> io::Result<Self> {
        let own = Key::load(key_file).ok();
        let mut trust = Self::load(own, dir)?;
        if trust.own.is_none() {
            let public = super::key_file::public_key_file(key_file);
            match read_key_file(&public) {
                Ok(key) => trust.keys.push(key),
                Err(e) => log::debug!("{e}"),
            }
        }
        Ok(trust)
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
    let mut names = entry_names(&fd)?;
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
    let text = read_capped(&file, MAX_KEY_FILE).map_err(|e| named(path, e))?;
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
