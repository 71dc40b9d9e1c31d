//! Starting one copy: its work directory, its page daemon (lazy), then
//! its `criu restore` with its copy record in the copy slot.

use crate::copy_record;
use crate::server::engine::Criu;
use crate::server::fs::service_dir::ServiceDir;
use crate::server::images::format::ImageMeta;
use crate::server::restore::RestoreError;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// One copy on its way: its work directory and its `criu restore`.
pub(super) struct Pending {
    pub(super) work: ServiceDir,
    pub(super) restore: Child,
    pub(super) restore_id: Option<u128>,
}

/// Every page daemon first, then each restore once its daemon listens (the
/// daemons start in parallel). Returns the restores started, the daemons
/// (by copy number) and the first failure.
pub(super) fn start_all(
    criu: &Criu,
    dir: &Path,
    meta: &ImageMeta,
    copies: u32,
    lazy: bool,
    base: &ServiceDir,
) -> (Vec<Pending>, Vec<(usize, Child)>, Option<RestoreError>) {
    let (mut pending, mut daemons, mut failed) = (Vec::new(), Vec::new(), None);
    let mut prepared = Vec::new();
    for number in 0..copies {
        match prepare_copy(criu, dir, number, lazy, base) {
            Ok(p) => prepared.push(p),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for p in prepared {
        let number = p.number;
        if failed.is_some() {
            if let Some((mut child, _)) = p.daemon {
                let _ = child.kill();
                let _ = child.wait();
            }
            continue;
        }
        match launch_copy(criu, dir, meta, p) {
            Ok((p, daemon)) => {
                if let Some(child) = daemon {
                    daemons.push((number as usize, child));
                }
                pending.push(p);
            }
            Err(e) => failed = Some(e),
        }
    }
    (pending, daemons, failed)
}

/// A copy's work directory and its page daemon (lazy), started.
struct Prepared {
    number: u32,
    work: ServiceDir,
    /// The daemon and the pipe on which it says it listens.
    daemon: Option<(Child, std::fs::File)>,
}

fn copy_error(
    number: u32,
    work: &ServiceDir,
    what: &str,
    e: &dyn std::fmt::Display,
    log: &str,
) -> RestoreError {
    RestoreError::Criu {
        message: format!("copy {number}: {what}: {e}"),
        log: work.shown().join(log),
    }
}

/// Makes copy `number`'s work directory and, for a lazy copy, starts its
/// page daemon (not waited for).
fn prepare_copy(
    criu: &Criu,
    dir: &Path,
    number: u32,
    lazy: bool,
    base: &ServiceDir,
) -> Result<Prepared, RestoreError> {
    let work = ServiceDir::create_in(base.shown(), "copy-").map_err(|e| RestoreError::Criu {
        message: format!("copy {number}: no work directory: {e}"),
        log: base.shown().to_path_buf(),
    })?;
    let daemon = if lazy {
        let (ready, status) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| copy_error(number, &work, "pipe", &e, ""))?;
        let mut cmd = criu.command();
        cmd.arg("lazy-pages")
            .arg("--images-dir")
            .arg(dir)
            .arg("--work-dir")
            .arg(work.proc_path())
            .args(["--log-file", "lazy-pages.log", "--status-fd", "1"])
            .arg(format!("-v{}", criu.log_level))
            .stdin(Stdio::null())
            .stdout(Stdio::from(status))
            .stderr(Stdio::null());
        let child = crate::server::engine::spawn(&mut cmd).map_err(|e| {
            copy_error(
                number,
                &work,
                "cannot run criu lazy-pages",
                &e,
                "lazy-pages.log",
            )
        })?;
        drop(cmd); // our copy of the status pipe's write end
        Some((child, std::fs::File::from(ready)))
    } else {
        None
    };
    Ok(Prepared {
        number,
        work,
        daemon,
    })
}

/// Starts copy `number`'s `criu restore` (not waited for), once its page
/// daemon (lazy) listens; gives the daemon back.
/// Waits for a page daemon to say it listens (one byte on its status
/// pipe; EOF if it failed first); a daemon that failed is reaped.
fn listening(mut child: Child, mut ready: impl Read) -> Result<Child, ()> {
    let mut byte = [0u8; 1];
    if ready.read(&mut byte).unwrap_or(0) == 0 {
        let _ = child.kill();
        let _ = child.wait();
        return Err(());
    }
    Ok(child)
}

fn launch_copy(
    criu: &Criu,
    dir: &Path,
    meta: &ImageMeta,
    prepared: Prepared,
) -> Result<(Pending, Option<Child>), RestoreError> {
    let Prepared {
        number,
        work,
        daemon,
    } = prepared;
    let failed =
        |what: &str, e: &dyn std::fmt::Display, log: &str| copy_error(number, &work, what, e, log);
    let lazy = daemon.is_some();
    let daemon = match daemon {
        Some((child, ready)) => Some(listening(child, ready).map_err(|()| {
            failed(
                "criu lazy-pages did not start",
                &"no ready signal",
                "lazy-pages.log",
            )
        })?),
        None => None,
    };
    let mut cmd = criu.command();
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(dir)
        .arg("--work-dir")
        .arg(work.proc_path())
        .arg("--restore-detached")
        .args(["--pidfile", "restore.pid", "--log-file", "restore.log"])
        .arg(format!("-v{}", criu.log_level))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if lazy {
        cmd.arg("--lazy-pages");
    }
    cmd.args(crate::server::engine::CriuFlags::of(meta).restore_args());
    let restore_id = match &meta.copy_slot {
        Some(slot) => {
            Some(give_record(&mut cmd, slot, number).map_err(|(what, e)| failed(what, &e, ""))?)
        }
        None => {
            cmd.stdin(Stdio::null());
            None
        }
    };
    let restore = crate::server::engine::spawn(&mut cmd)
        .map_err(|e| failed("cannot run criu restore", &e, "restore.log"))?;
    Ok((
        Pending {
            work,
            restore,
            restore_id,
        },
        daemon,
    ))
}

/// Makes `cmd` give copy `number` its record in place of the images' copy
/// slot (`slot`, `pipe:[INODE]`): a fresh pipe holding the record, its
/// write end closed, inherited as `slot`. Returns the copy's restore id.
fn give_record(
    cmd: &mut Command,
    slot: &str,
    number: u32,
) -> Result<u128, (&'static str, std::io::Error)> {
    let id = copy_record::fresh_id();
    let (read_end, fill) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| ("pipe", e.into()))?;
    std::io::Write::write_all(
        &mut std::fs::File::from(fill),
        copy_record::record(number, id).as_bytes(),
    )
    .map_err(|e| ("copy record", e))?;
    // the write end is closed: the copy reads its record, then EOF
    cmd.arg("--inherit-fd").arg(format!("fd[0]:{slot}"));
    cmd.stdin(Stdio::from(read_end));
    Ok(id)
}
