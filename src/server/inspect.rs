//! What a checkpoint holds, at a glance (`selfdump inspect DIR`), for
//! people and scripts (`--json`): the tree, the owner and options, sizes,
//! when and by which service it was made, whether its signature verifies
//! and with which key, and whether its pids are free here.
//!
//! Inspecting reads the images as they are; it checks the manifest's
//! signature and each file's presence and size, but does not hash the
//! files (a restore does).
//!
//! ```no_run
//! use selfdump::server::inspect::inspect;
//! let report = inspect(std::path::Path::new("/var/lib/myapp/images"), None)?;
//! println!("{} tasks, signed: {:?}", report.tree.len(), report.signature);
//! # Ok::<(), std::io::Error>(())
//! ```

use super::engine::rpc::{CoreEntry, PstreeEntry};
use super::images::{ImageMeta, entries, first_entry, read_image};
use super::manifest::{Key, MANIFEST_FILE, Manifest, unsigned_extra};
use super::restore::check_ids_free;
use prost::Message;
use serde::Serialize;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

/// One task of the checkpointed tree.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    /// Its pid (the one a restore recreates).
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its process group and session.
    pub pgid: u32,
    /// Its session.
    pub sid: u32,
    /// Its threads' ids.
    pub threads: Vec<u32>,
    /// Its command name, from its core image.
    pub command: String,
}

/// One file of the images directory.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its state against the manifest: `signed`, `size differs`, `not
    /// signed` (added after the dump), `missing`, or `extra` (logs and
    /// statistics, which are not signed).
    pub state: String,
}

/// The signature of the images.
#[derive(Debug, Clone, Serialize)]
pub struct Signature {
    /// The key the manifest names.
    pub key_id: String,
    /// Whether it verifies with the key given to [`inspect`] (`None`: no
    /// key was given).
    pub verifies: Option<bool>,
    /// Why not, if it does not.
    pub problem: Option<String>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The manifest's facts (owner, job, options, time, host), if there is
    /// a readable manifest.
    pub meta: Option<ImageMeta>,
    /// The signature, if there is a manifest.
    pub signature: Option<Signature>,
    /// The tasks.
    pub tree: Vec<Task>,
    /// The files.
    pub files: Vec<FileInfo>,
    /// Bytes of all files.
    pub bytes: u64,
    /// Memory pages stored (`pages-*.img` bytes / 4096).
    pub pages: u64,
    /// Which process holds a pid, session or group of the tree here, if
    /// one does (`None`: a restore here finds them free).
    pub ids_in_use: Option<String>,
}

/// Inspects the images in `dir`; `key` checks the signature.
pub fn inspect(dir: &Path, key: Option<&Key>) -> io::Result<Inspection> {
    let fd = std::fs::File::open(dir)?;
    let (signature, manifest) = signature(&fd, key);
    let (files, bytes, pages) = files(dir, manifest.as_ref())?;
    let pstree: Vec<PstreeEntry> = read_image(&fd, "pstree.img")
        .map(|b| {
            entries(&b)
                .filter_map(|e| PstreeEntry::decode(e).ok())
                .collect()
        })
        .unwrap_or_default();
    let tree = pstree.iter().map(|t| task(&fd, t)).collect();
    let meta = manifest.map(|m| m.meta);
    let shell_job = meta.as_ref().is_some_and(|m| m.shell_job);
    // a whole pid namespace restores into a fresh one: no host pid needed
    let namespace = meta.as_ref().is_some_and(|m| m.pid_namespace);
    Ok(Inspection {
        meta,
        signature,
        tree,
        files,
        bytes,
        pages,
        ids_in_use: (!namespace)
            .then(|| check_ids_free(&pstree, shell_job).err())
            .flatten()
            .map(|e| e.to_string()),
    })
}

/// The manifest, parsed, and whether it verifies with `key`.
fn signature(dir: &impl AsFd, key: Option<&Key>) -> (Option<Signature>, Option<Manifest>) {
    let Some(bytes) = read_image(dir, MANIFEST_FILE) else {
        return (None, None);
    };
    match Manifest::parse_unverified(&bytes) {
        Err(e) => {
            let sig = Signature {
                key_id: String::new(),
                verifies: Some(false),
                problem: Some(e.to_string()),
            };
            (Some(sig), None)
        }
        Ok((manifest, ..)) => {
            let checked = key.map(|k| Manifest::verify(&bytes, k));
            let sig = Signature {
                key_id: manifest.key_id.clone(),
                verifies: checked.as_ref().map(Result::is_ok),
                problem: checked.and_then(Result::err).map(|e| e.to_string()),
            };
            (Some(sig), Some(manifest))
        }
    }
}

/// Every file of `dir` (and those the manifest lists but `dir` lacks),
/// with its state; the bytes of all, and the pages stored.
fn files(dir: &Path, manifest: Option<&Manifest>) -> io::Result<(Vec<FileInfo>, u64, u64)> {
    let mut files = Vec::new();
    let (mut bytes, mut pages) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.path().symlink_metadata()?;
        if name.starts_with(".selfdump-") || !meta.is_file() && !meta.is_symlink() {
            continue;
        }
        let size = meta.len();
        bytes += size;
        if name.starts_with("pages-") {
            pages += size / 4096;
        }
        let state = match manifest.map(|m| m.file(&name)) {
            _ if name == MANIFEST_FILE => "manifest",
            _ if unsigned_extra(&name) => "extra",
            Some(Some(f)) if f.size == size && meta.is_file() => "signed",
            Some(Some(_)) => "size differs",
            Some(None) => "not signed",
            None => "unsigned images",
        };
        files.push(FileInfo {
            name,
            size,
            state: state.into(),
        });
    }
    for missing in manifest.iter().flat_map(|m| &m.files) {
        if !files.iter().any(|f| f.name == missing.name) {
            files.push(FileInfo {
                name: missing.name.clone(),
                size: 0,
                state: "missing".into(),
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((files, bytes, pages))
}

/// One task of the tree, with its command from its core image.
fn task(dir: &impl AsFd, t: &PstreeEntry) -> Task {
    Task {
        pid: t.pid,
        ppid: t.ppid,
        pgid: t.pgid,
        sid: t.sid,
        threads: t.threads.clone(),
        command: read_image(dir, &format!("core-{}.img", t.pid))
            .and_then(|b| CoreEntry::decode(first_entry(&b)?).ok())
            .and_then(|c| c.tc?.comm)
            .unwrap_or_default(),
    }
}
