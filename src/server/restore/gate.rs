//! Hashing a root checkpoint's pages while CRIU restores, with the
//! restored tree held until they are verified.
//!
//! A restore verifies every image file before CRIU starts (`verify.rs`),
//! but the raw memory pages (`pages-*.img`, most of a large checkpoint's
//! bytes) may instead be hashed while CRIU runs, when three things hold:
//!
//! - **the bytes cannot change meanwhile.** The pages CRIU reads are the
//!   ones placed in the private directory before it started (`verify.rs`):
//!   a hard link to an inode only root can write, or root's own copy, in a
//!   directory of root's (0700). Their size was checked against the
//!   manifest before CRIU started; only root could change them since, and
//!   nothing of the service does. (So the hash taken while CRIU reads them
//!   is the hash of the bytes it reads.)
//! - **CRIU does not interpret them.** Every other image file (the page
//!   maps that say where each page goes, the memory layout, files, creds,
//!   namespaces) is hashed before CRIU starts, as before. A pages file is
//!   raw memory copied into the private and anonymous shared mappings of
//!   the tree being restored; no decision of CRIU's depends on its
//!   contents, and it reaches nothing outside that tree.
//! - **the restored tree runs none of it until it is verified.** CRIU runs
//!   its `post-restore` action script after every task is rebuilt and
//!   before any task is given its credentials or resumed; a script that
//!   fails aborts the restore and CRIU kills the whole tree (CRIU's
//!   `restore_root_task`: "Aborting restore due to post-restore script").
//!   The script here waits for the service's verdict in a FIFO of root's
//!   (in the service's own directory), and passes only on the line
//!   `verified`, written once every pages file's hash matched the signed
//!   manifest; on any failure the line is `refused`.
//!
//! So a tampered pages file can never run: at worst CRIU copies its bytes
//! into a tree that is killed before its first instruction, and the
//! restore fails with the verification's error. This applies only where
//! CRIU runs as root for a root checkpoint (`selfdump restore` as root);
//! the owner's own CRIU (a non-root checkpoint) could be stopped or traced
//! by the owner, and lazy copies read their pages after the tree runs:
//! those verify every file first, as does a restore where the service's
//! directory is on a `noexec` filesystem (CRIU could not run the script).

use super::settings::RestoreError;
use crate::server::fs::service_dir::{LOG_DIR, ServiceDir};
use crate::server::images::manifest::hash_file_on_one_core;
use rustix::fs::{FileType, Mode, OFlags};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;

/// Pages files are hashed while CRIU runs when they hold at least this
/// many bytes in all. Below, hashing them first costs less than the gate:
/// CRIU runs the script at each of its seven restore actions, a fork and
/// an exec of `sh` each, 1.3–1.5 ms apiece here (its log's timestamps),
/// while 32 MiB hash in about 10 ms on one core.
pub(super) const DEFER_AT_LEAST: u64 = 32 << 20;

/// Whether image file `name` is raw memory (see the module docs).
pub(super) fn is_pages(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// A placed image file whose hash is still to be checked.
#[derive(Debug)]
pub(crate) struct Unhashed {
    pub(super) name: String,
    pub(super) file: OwnedFd,
    pub(super) size: u64,
    pub(super) hash: [u8; 32],
}

/// The pages being hashed, and the gate CRIU's script waits at.
#[derive(Debug)]
pub(super) struct Gate {
    logs: ServiceDir,
    /// The script's and the verdict FIFO's names in `logs`, without suffix.
    name: String,
    /// The service's end of the FIFO, open for reading and writing until
    /// the gate is dropped, so that the verdict stays in it and the
    /// script's open never waits for a writer.
    _fifo: OwnedFd,
    hashing: Option<JoinHandle<Result<(), RestoreError>>>,
}

impl Gate {
    /// Starts hashing `unhashed` on a thread of its own, and writes the
    /// script that lets the restored tree run only on its verdict.
    pub(super) fn open(unhashed: Vec<Unhashed>) -> io::Result<Self> {
        let logs = ServiceDir::open_or_create(Path::new(LOG_DIR))?;
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = format!("restore-gate-{:016x}", u64::from_le_bytes(random));
        let fifo = make_fifo(&logs, &format!("{name}.fifo"))?;
        let mut gate = Self {
            _fifo: fifo.try_clone()?,
            name,
            logs,
            hashing: None,
        };
        write_script(&gate.logs, &gate.name)?;
        let hashing = std::thread::Builder::new()
            .name("restore-hash".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let checked = check(&unhashed);
                log::debug!(
                    "restore: {} pages file(s) hashed during the restore in {:?}",
                    unhashed.len(),
                    started.elapsed()
                );
                let verdict: &[u8] = match checked {
                    Ok(()) => b"verified\n",
                    Err(_) => b"refused\n",
                };
                let _ = rustix::io::write(&fifo, verdict);
                checked
            })?;
        gate.hashing = Some(hashing);
        Ok(gate)
    }

    /// Makes `cmd` (a root `criu restore`) run the gate's script.
    pub(super) fn hold(&self, cmd: &mut Command) {
        cmd.arg("--action-script")
            .arg(self.logs.proc_path().join(format!("{}.sh", self.name)));
    }

    /// Waits for the hashing to end: whether every pages file matched.
    pub(super) fn verdict(&mut self) -> Result<(), RestoreError> {
        match self.hashing.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(checked)) => checked,
            Some(Err(_)) => Err(RestoreError::Refused(
                "the pages could not be hashed (the hashing thread panicked)".into(),
            )),
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.verdict();
        let _ = self.logs.remove(&format!("{}.sh", self.name));
        let _ = self.logs.remove(&format!("{}.fifo", self.name));
    }
}

/// Makes the FIFO `name` in `logs` (root's, 0600) and opens it for
/// reading and writing (which never waits for the other side).
fn make_fifo(logs: &ServiceDir, name: &str) -> io::Result<OwnedFd> {
    rustix::fs::mknodat(logs, name, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)?;
    let fifo = rustix::fs::openat(
        logs,
        name,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fifo)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo || stat.st_uid != 0 {
        return Err(io::Error::other(format!(
            "{name} is not the FIFO just made"
        )));
    }
    Ok(fifo)
}

/// Whether CRIU can run a script from the service's directory ([`LOG_DIR`]
/// may be on a filesystem mounted `noexec`, where the gate cannot work).
pub(super) fn scripts_run() -> bool {
    ServiceDir::open_or_create(Path::new(LOG_DIR))
        .and_then(|logs| Ok(rustix::fs::fstatvfs(&logs)?))
        .is_ok_and(|fs| !fs.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC))
}

/// Hashes each file and compares it with its signed hash. On one core:
/// CRIU's restore runs on another meanwhile, mostly on one core itself.
pub(super) fn check(unhashed: &[Unhashed]) -> Result<(), RestoreError> {
    for u in unhashed {
        let hash = hash_file_on_one_core(&u.file, u.size)
            .map_err(|e| RestoreError::Refused(format!("{}: {e}", u.name)))?;
        if hash != u.hash {
            return Err(RestoreError::Refused(format!(
                "{} changed since the dump (its hash differs)",
                u.name
            )));
        }
    }
    Ok(())
}

/// The script CRIU runs at each of its restore actions (`NAME.sh`): it
/// passes at once but at `post-restore`, where it waits for the verdict
/// in the FIFO `NAME.fifo` beside it and passes only on `verified`.
fn write_script(logs: &ServiceDir, name: &str) -> io::Result<()> {
    let fifo = logs.proc_path().join(format!("{name}.fifo"));
    let text = format!(
        "#!/bin/sh\n\
         # selfdump: the restored tree runs only once its pages are verified\n\
         [ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0\n\
         IFS= read -r verdict < '{}' || exit 1\n\
         [ \"$verdict\" = verified ]\n",
        fifo.display()
    );
    let file = rustix::fs::openat(
        logs,
        format!("{name}.sh"),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RWXU,
    )?;
    crate::server::images::format::write_all(&file, text.as_bytes())
    // closed here: a file open for writing cannot be executed
}
