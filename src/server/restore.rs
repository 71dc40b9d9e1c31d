//! Restoring images written by the service (`selfdump restore`).

use super::Criu;
use super::engine::first_error;
use super::engine::rpc::PstreeEntry;
use super::images::{ImageMeta, META_FILE, entries, read_image};
pub use super::private_dir::LOG_DIR;
use super::private_dir::PrivateDir;
use crate::procstat;
use prost::Message;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Why a restore did not happen.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestoreError {
    /// The directory does not hold selfdump images.
    NotImages(PathBuf, String),
    /// A pid, session or process group the images need is taken.
    IdInUse {
        /// What kind of id.
        what: &'static str,
        /// The id.
        id: u32,
        /// Who holds it (a process name or pid), if known.
        holder: String,
    },
    /// CRIU failed; its log is kept in a directory of root's
    /// ([`LOG_DIR`]), never in the images directory.
    Criu {
        /// What CRIU or the system said.
        message: String,
        /// The restore log.
        log: PathBuf,
    },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotImages(dir, why) => {
                write!(f, "{} does not hold selfdump images: {why}", dir.display())
            }
            Self::IdInUse { what, id, holder } => write!(
                f,
                "{what} {id} is in use by {holder}; the restored tree needs it free: stop that \
                 process (and reap it if it is a zombie) before restoring"
            ),
            Self::Criu { message, log } => {
                write!(f, "criu restore failed: {message}; see {}", log.display())
            }
        }
    }
}

impl std::error::Error for RestoreError {}

/// Reads the dump's description that the service stored with the images.
pub fn read_meta(dir: &Path) -> Result<ImageMeta, RestoreError> {
    let not_images = |why: String| RestoreError::NotImages(dir.to_path_buf(), why);
    let file = std::fs::File::open(dir).map_err(|e| not_images(e.to_string()))?;
    let body = read_image(&file, META_FILE).ok_or_else(|| not_images(format!("no {META_FILE}")))?;
    rmp_serde::from_slice(&body).map_err(|e| not_images(format!("{META_FILE}: {e}")))
}

/// The tasks recorded in the images.
pub fn read_tree(dir: &Path) -> Result<Vec<PstreeEntry>, RestoreError> {
    let not_images = |why: String| RestoreError::NotImages(dir.to_path_buf(), why);
    let file = std::fs::File::open(dir).map_err(|e| not_images(e.to_string()))?;
    let image =
        read_image(&file, "pstree.img").ok_or_else(|| not_images("no pstree.img".into()))?;
    entries(&image)
        .map(|e| PstreeEntry::decode(e).map_err(|e| not_images(format!("pstree.img: {e}"))))
        .collect()
}

/// Checks that every pid, session id and process group id of the images is
/// free; names the first that is not. With `shell_job`, the root's session
/// and group come from the restorer and are not checked.
pub fn check_ids_free(tree: &[PstreeEntry], shell_job: bool) -> Result<(), RestoreError> {
    let Some(root) = tree.first() else {
        return Ok(());
    };
    let pids: BTreeSet<u32> = tree
        .iter()
        .flat_map(|t| std::iter::once(t.pid).chain(t.threads.iter().copied()))
        .collect();
    for &pid in &pids {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(RestoreError::IdInUse {
                what: "pid",
                id: pid,
                holder: describe(pid),
            });
        }
    }
    // A session or group outlives its leader while a member lives (an
    // orphaned child holding the old group, say).
    for task in tree {
        for (what, id) in [("session", task.sid), ("process group", task.pgid)] {
            let inherited = shell_job && (id == root.sid || id == root.pgid);
            if inherited {
                continue;
            }
            if let Some(member) = member_of(what, id) {
                return Err(RestoreError::IdInUse {
                    what,
                    id,
                    holder: describe(member),
                });
            }
        }
    }
    Ok(())
}

/// A live process whose session or process group is `id`.
fn member_of(what: &str, id: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let field = if what == "session" {
            procstat::SESSION
        } else {
            procstat::PGRP
        };
        if procstat::field::<u32>(&stat, field) == Some(id) {
            return Some(pid);
        }
    }
    None
}

fn describe(pid: u32) -> String {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| procstat::field::<String>(&s, procstat::STATE))
        .unwrap_or_default();
    let zombie = if state == "Z" { ", a zombie" } else { "" };
    format!("process {pid} ({}{zombie})", name.trim())
}

/// Like [`check_ids_free`], but waits up to `timeout` for the ids to be
/// freed (a previous restored tree still dying, or not reaped yet), polling.
/// After the timeout, names the process still holding one.
pub fn wait_ids_free(
    tree: &[PstreeEntry],
    shell_job: bool,
    timeout: Duration,
) -> Result<(), RestoreError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        match check_ids_free(tree, shell_job) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => log::debug!("waiting: {e}"),
        }
        std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Restores the images in `dir`, detached, and returns the restored root pid.
pub fn restore(criu: &Criu, dir: &Path) -> Result<i32, RestoreError> {
    restore_waiting(criu, dir, Duration::ZERO)
}

/// Restores the images in `dir`, detached, after waiting up to `wait` for
/// every pid, session and group they need to be free (for harnesses that
/// restore the same images again and again: the previous copy may still be
/// dying). Returns the restored root pid.
pub fn restore_waiting(criu: &Criu, dir: &Path, wait: Duration) -> Result<i32, RestoreError> {
    let meta = read_meta(dir)?;
    let tree = read_tree(dir)?;
    // images of a whole pid namespace restore into a fresh one: their pids
    // are the namespace's own, never the host's
    if !meta.pid_namespace {
        wait_ids_free(&tree, meta.shell_job, wait)?;
    }
    // CRIU's own files go to a directory of root's: the images directory
    // is the caller's, and root must not create files there by name.
    let work = PrivateDir::open_or_create(Path::new(LOG_DIR)).map_err(|e| RestoreError::Criu {
        message: format!("no place for the restore log: {e}"),
        log: PathBuf::from(LOG_DIR),
    })?;
    let tag = format!("restore-{}", std::process::id());
    let (log_name, pid_name) = (format!("{tag}.log"), format!("{tag}.pid"));
    for stale in [&log_name, &pid_name] {
        let _ = work.remove(stale); // a dead restore's with our pid
    }
    let log = work.shown().join(&log_name);
    let mut cmd = Command::new(&criu.path);
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(dir)
        .arg("--work-dir")
        .arg(work.proc_path())
        .arg("--restore-detached")
        .arg("--pidfile")
        .arg(&pid_name)
        .arg("--log-file")
        .arg(&log_name)
        .arg(format!("-v{}", criu.log_level));
    for (on, flag) in [
        (meta.shell_job, "--shell-job"),
        (meta.tcp_established, "--tcp-established"),
        (meta.file_locks, "--file-locks"),
        (meta.ext_unix_sk, "--ext-unix-sk"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    let failed = |message: String| RestoreError::Criu {
        message,
        log: log.clone(),
    };
    let output = cmd
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", criu.path.display())))?;
    let pid = work
        .read(&pid_name)
        .and_then(|p| String::from_utf8_lossy(&p).trim().parse().ok());
    let _ = work.remove(&pid_name);
    match pid {
        Some(pid) if output.status.success() => {
            let _ = work.remove(&log_name);
            Ok(pid)
        }
        _ => {
            let log_error = work
                .read(&log_name)
                .and_then(|l| first_error(&String::from_utf8_lossy(&l)));
            Err(failed(log_error.unwrap_or_else(|| {
                format!("criu exited with {}", output.status)
            })))
        }
    }
}
