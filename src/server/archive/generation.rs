//! A local generation made from a checkpoint that came from elsewhere (a
//! store's `pull`, an archive's `import`), by whoever runs the command, in
//! a directory of its own: written in a hidden directory, every file
//! checked against the signed manifest, synced, named, and only then
//! `latest` switched to it, as a service's commit does (`commit.rs`).

use crate::server::fs::generations::{LATEST, is_generation_name, new_name};
use crate::server::images::manifest::{MANIFEST_FILE, Manifest, hash_file_by_reading};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A generation being made (removed if dropped before [`Self::commit`]).
#[derive(Debug)]
pub(crate) struct Generation {
    parent: OwnedFd,
    dir: PathBuf,
    tmp: String,
    fd: OwnedFd,
    committed: bool,
}

fn random_tag() -> io::Result<String> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    Ok(format!("{:016x}", u64::from_le_bytes(random)))
}

impl Generation {
    /// Starts one in `dir` (made if missing).
    pub(crate) fn start(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let parent = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let tmp = format!(".selfdump-incoming-{}", random_tag()?);
        rustix::fs::mkdirat(&parent, tmp.as_str(), Mode::RWXU)?;
        let fd = rustix::fs::openat(
            &parent,
            tmp.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            parent,
            dir: dir.to_path_buf(),
            tmp,
            fd,
            committed: false,
        })
    }

    /// The directory the files go in.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Every file the manifest signs is there, a regular file of its
    /// signed size and hash, and nothing else but the manifest.
    pub(crate) fn check_files(&self, manifest: &Manifest) -> Result<(), String> {
        for file in &manifest.files {
            let name = &file.name;
            let opened = rustix::fs::openat(
                &self.fd,
                name.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("{name}: {e}"))?;
            let stat = rustix::fs::fstat(&opened).map_err(|e| format!("{name}: {e}"))?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(format!("{name} is not a regular file"));
            }
            let hash =
                hash_file_by_reading(&opened, file.size).map_err(|e| format!("{name}: {e}"))?;
            if hash != file.hash {
                return Err(format!(
                    "{name} does not match its signed hash: the checkpoint was changed after \
                     the dump"
                ));
            }
        }
        let names =
            crate::server::images::format::entry_names(&self.fd).map_err(|e| e.to_string())?;
        match names
            .iter()
            .find(|n| *n != MANIFEST_FILE && manifest.file(n).is_none())
        {
            None => Ok(()),
            Some(extra) => Err(format!("{extra} is not part of the signed checkpoint")),
        }
    }

    /// Names the generation (`hint`, the name it had where it was made, if
    /// it is a generation's name not taken here; else a new one), and
    /// switches `latest` to it. Returns its name and path.
    pub(crate) fn commit(mut self, hint: Option<&str>) -> io::Result<(String, PathBuf)> {
        let name = match hint {
            Some(h)
                if is_generation_name(h)
                    && rustix::fs::statat(&self.parent, h, AtFlags::SYMLINK_NOFOLLOW).is_err() =>
            {
                h.to_owned()
            }
            _ => new_name(std::time::SystemTime::now())?,
        };
        rustix::fs::syncfs(&self.fd)?;
        rustix::fs::renameat_with(
            &self.parent,
            self.tmp.as_str(),
            &self.parent,
            name.as_str(),
            RenameFlags::NOREPLACE,
        )?;
        self.committed = true;
        rustix::fs::fsync(&self.parent)?;
        let link = format!(".selfdump-latest-{}", random_tag()?);
        rustix::fs::symlinkat(name.as_str(), &self.parent, link.as_str())?;
        let switched = rustix::fs::renameat(&self.parent, link.as_str(), &self.parent, LATEST);
        if let Err(e) = switched {
            let _ = rustix::fs::unlinkat(&self.parent, link.as_str(), AtFlags::empty());
            return Err(io::Error::other(format!(
                "{}/{LATEST} cannot be switched to {name} ({e}); the checkpoint is there, \
                 restore it by its path",
                self.dir.display()
            )));
        }
        rustix::fs::fsync(&self.parent)?;
        let path = self.dir.join(&name);
        Ok((name, path))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for name in crate::server::images::format::entry_names(&self.fd).unwrap_or_default() {
            let _ = rustix::fs::unlinkat(&self.fd, name.as_str(), AtFlags::empty());
        }
        let _ = rustix::fs::unlinkat(&self.parent, self.tmp.as_str(), AtFlags::REMOVEDIR);
    }
}
