//! What a checkpoint holds, at a glance (`selfdump inspect DIR`), for
//! people and scripts (`--json`): the generations of the directory (which
//! one `latest` names, when each was made, its size and tree, whether it
//! verifies), and for the one `latest` names (or the directory itself, if
//! it holds images directly): the tree, the owner and options, sizes,
//! when and by which service it was made, CRIU's statistics of the dump,
//! whether its signature verifies and with which key, whether its pids
//! are free here; and the verdict: would `selfdump restore` restore it
//! here now, and if not, why.
//!
//! Inspecting reads the images as they are; it checks the manifest's
//! signature and each file's presence and size, but does not hash the
//! files (a restore does).
//!
//! ```no_run
//! use selfdump::server::inspect::inspect;
//! let report = inspect(std::path::Path::new("/var/lib/myapp/images"), None)?;
//! println!("{} tasks: {}", report.tree.len(), report.verdict.summary);
//! # Ok::<(), std::io::Error>(())
//! ```

mod report;
mod verdict;

use crate::server::fs::generations::{self, LATEST, read_latest};
use crate::server::images::criu_entries::{CoreEntry, PstreeEntry};
use crate::server::images::format::{dump_stats, entries, first_entry, read_image};
use crate::server::images::manifest::{Key, MANIFEST_FILE, Manifest, unsigned_extra};
use crate::server::images::trust::Trust;
use crate::server::restore::check_ids_free;
use prost::Message;
pub use report::{CriuStats, FileInfo, GenerationInfo, Inspection, Signature, Task, Verdict};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use verdict::verdict;

/// Inspects the images directory `dir`: its generations, and the
/// checkpoint `latest` names (or the images directly in `dir`); `key`
/// checks the signatures.
pub fn inspect(dir: &Path, key: Option<&Key>) -> io::Result<Inspection> {
    inspect_trusted(dir, key.cloned().map(Trust::own).as_ref())
}

/// [`inspect`], checking signatures with the keys of `trust` (this
/// host's and those of its trust directory).
pub fn inspect_trusted(dir: &Path, trust: Option<&Trust>) -> io::Result<Inspection> {
    let key = trust;
    let top = std::fs::File::open(dir)?;
    let latest = read_latest(&top)?;
    let generations = generations::list(&top)?
        .into_iter()
        .map(|name| summary(dir, &name, latest.as_deref() == Some(name.as_str()), key))
        .collect();
    let images = match &latest {
        Some(name) => dir.join(name),
        None => dir.to_path_buf(),
    };
    let mut found = Inspection {
        generations,
        generation: latest,
        ..inspect_images(&images, key)?
    };
    found.verdict = verdict(&found);
    Ok(found)
}

/// One generation at a glance.
fn summary(dir: &Path, name: &str, latest: bool, key: Option<&Trust>) -> GenerationInfo {
    let path = dir.join(name);
    let mut info = GenerationInfo {
        name: name.to_owned(),
        latest,
        created_unix: None,
        made: None,
        bytes: 0,
        tasks: 0,
        root: String::new(),
        verifies: None,
        problem: None,
    };
    let inspected = match inspect_images(&path, key) {
        Ok(inspected) => inspected,
        Err(e) => {
            info.verifies = Some(false);
            info.problem = Some(e.to_string());
            return info;
        }
    };
    info.created_unix = inspected.meta.as_ref().map(|m| m.created_unix);
    info.made = info.created_unix.map(generations::utc);
    info.bytes = inspected.bytes;
    info.tasks = inspected.tree.len();
    info.root = inspected
        .tree
        .first()
        .map(|t| format!("{} ({})", t.command, t.pid))
        .unwrap_or_default();
    let damaged = inspected
        .files
        .iter()
        .find(|f| f.state == "missing" || f.state == "size differs");
    (info.verifies, info.problem) = match (&inspected.signature, damaged) {
        (None, _) => (Some(false), Some("not signed".into())),
        (Some(s), _) if s.verifies == Some(false) => (Some(false), s.problem.clone()),
        (_, Some(f)) => (Some(false), Some(format!("{} {}", f.name, f.state))),
        (Some(s), None) => (s.verifies, None),
    };
    info
}

/// Inspects the images in `dir` itself.
fn inspect_images(dir: &Path, key: Option<&Trust>) -> io::Result<Inspection> {
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
    let unreadable = unreadable(&fd, &files);
    let meta = manifest.map(|m| m.meta);
    let shell_job = meta.as_ref().is_some_and(|m| m.shell_job);
    // a whole pid namespace restores into a fresh one: no host pid needed
    let namespace = meta.as_ref().is_some_and(|m| m.pid_namespace);
    Ok(Inspection {
        generations: Vec::new(),
        generation: None,
        meta,
        signature,
        tree,
        files,
        bytes,
        pages,
        ids_in_use: (!namespace && !pstree.is_empty())
            .then(|| check_ids_free(&pstree, shell_job).err())
            .flatten()
            .map(|e| e.to_string()),
        stats: dump_stats(&fd).map(|s| CriuStats {
            freezing_us: s.freezing_time.into(),
            frozen_us: s.frozen_time.into(),
            memdump_us: s.memdump_time.into(),
            memwrite_us: s.memwrite_time.into(),
            pages_scanned: s.pages_scanned,
            pages_written: s.pages_written,
        }),
        unreadable,
        verdict: Verdict {
            restorable: None,
            summary: String::new(),
        },
    })
}

/// The first file CRIU needs that this process cannot open, and why.
fn unreadable(dir: &impl AsFd, files: &[FileInfo]) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    let needed = [MANIFEST_FILE, "inventory.img", "pstree.img"];
    files
        .iter()
        .filter(|f| needed.contains(&f.name.as_str()) && f.state != "missing")
        .find_map(|f| {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let e = rustix::fs::openat(dir, f.name.as_str(), flags, Mode::empty()).err()?;
            Some(format!("{}: {}", f.name, std::io::Error::from(e)))
        })
}

/// The manifest, parsed, and whether it verifies with `key`.
fn signature(dir: &impl AsFd, key: Option<&Trust>) -> (Option<Signature>, Option<Manifest>) {
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
            let checked = key.map(|k| Manifest::verify_trusted(&bytes, k));
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
        if name.starts_with(".selfdump-") || name == LATEST || !meta.is_file() && !meta.is_symlink()
        {
            continue;
        }
        let size = meta.len();
        bytes += size;
        if name.starts_with("pages-") {
            pages += size / 4096;
        }
        let signed = manifest.and_then(|m| m.file(&name));
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
            signed_size: signed.map(|f| f.size),
        });
    }
    for missing in manifest.iter().flat_map(|m| &m.files) {
        if !files.iter().any(|f| f.name == missing.name) {
            files.push(FileInfo {
                name: missing.name.clone(),
                size: 0,
                state: "missing".into(),
                signed_size: Some(missing.size),
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
