//! What `selfdump inspect` reports, for people and for scripts (`--json`).

use crate::server::images::format::ImageMeta;
use serde::Serialize;

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
    /// signed` (not part of the images: a restore ignores it), `missing`,
    /// or `extra` (logs and statistics, which are not signed).
    pub state: String,
    /// Its size as signed, if the manifest lists it.
    pub signed_size: Option<u64>,
}

/// CRIU's own statistics of the dump (its `stats-dump` file).
#[derive(Debug, Clone, Serialize)]
pub struct CriuStats {
    /// Microseconds CRIU took to freeze the tree.
    pub freezing_us: u64,
    /// Microseconds the tree was frozen.
    pub frozen_us: u64,
    /// Microseconds CRIU took to collect the memory pages.
    pub memdump_us: u64,
    /// Microseconds CRIU took to write them out.
    pub memwrite_us: u64,
    /// Memory pages CRIU looked at.
    pub pages_scanned: u64,
    /// Memory pages it wrote.
    pub pages_written: u64,
}

/// The signature of the images.
#[derive(Debug, Clone, Serialize)]
pub struct Signature {
    /// The key the manifest names.
    pub key_id: String,
    /// Whether it verifies with the key given to [`inspect`](super::inspect) (`None`: no
    /// key was given).
    pub verifies: Option<bool>,
    /// Why not, if it does not.
    pub problem: Option<String>,
}

/// One generation of an images directory.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationInfo {
    /// Its name (a directory of the images directory).
    pub name: String,
    /// Whether `latest` names it.
    pub latest: bool,
    /// When it was made (seconds since the epoch), from its manifest.
    pub created_unix: Option<u64>,
    /// The same, readable.
    pub made: Option<String>,
    /// Bytes of its files.
    pub bytes: u64,
    /// Tasks of its tree.
    pub tasks: usize,
    /// Its root task's command and pid, as `command (pid)`.
    pub root: String,
    /// Whether it verifies: signed by the key given to [`inspect`](super::inspect) and
    /// every signed file there with its size (`None`: no key was given).
    pub verifies: Option<bool>,
    /// Why not, if it does not.
    pub problem: Option<String>,
}

/// What [`inspect`](super::inspect) found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The generations of the directory, oldest first (empty for a
    /// directory of images made before generations, or a generation's own
    /// directory).
    pub generations: Vec<GenerationInfo>,
    /// The generation inspected below: the one `latest` names (`None`:
    /// the directory itself holds the images).
    pub generation: Option<String>,
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
    /// CRIU's statistics of the dump, if it left them.
    pub stats: Option<CriuStats>,
    /// A file of the images this process could not read, and why (the
    /// images are their owner's, mode 0600).
    pub unreadable: Option<String>,
    /// Whether it restores here.
    pub verdict: Verdict,
}

/// Whether `selfdump restore` would restore the inspected checkpoint
/// here, now, in one line.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `Some(true)`: it would (as far as sizes and the signature tell: a
    /// restore also hashes every file); `Some(false)`: it would not;
    /// `None`: this user cannot tell (the key or the images are not
    /// readable here).
    pub restorable: Option<bool>,
    /// Why, or what to do, for a person.
    pub summary: String,
}
