//! What a checkpoint request must pass before anything is reserved for
//! it: the caller (policy, dumpability), its images directory, its pid
//! namespace and session, its options, and last the embedder's say.

use crate::procfs::PROC;
use crate::proto::{DumpOptions, RefusalKind};
use crate::server::caller::pidns::{self, NsInit};
use crate::server::caller::policy::{check_dumpable, may_write_dir};
use crate::server::caller::status::TaskStatus;
use crate::server::conn::{Peer, Refused};
use crate::server::engine::NonRootEngine;
use crate::server::fs::generations;
use crate::server::fs::root_subdir::check_filesystem;
use crate::server::requests::admission;
use crate::server::shared::Shared;
use std::os::fd::OwnedFd;

/// A checkpoint request that passed every check.
pub(super) struct Admitted {
    pub(super) caller: TaskStatus,
    /// The caller does not lead its session: CRIU dumps it as a shell job.
    pub(super) shell_job: bool,
    /// For a caller in a pid namespace of its own: the namespace's init,
    /// from which the whole namespace is dumped (`caller/pidns.rs`).
    pub(super) ns_init: Option<NsInit>,
}

/// Checks a checkpoint request before anything is reserved for it: the
/// caller ([`admit`]), its pid namespace, its session, the options.
pub(super) async fn admit_request(
    shared: &Shared,
    peer: &Peer,
    dir: &OwnedFd,
    options: DumpOptions,
) -> Result<Admitted, Refused> {
    let caller = admit(shared, peer, dir)?;
    if caller.uid() != 0
        && let NonRootEngine::Refused(why) = &shared.non_root
    {
        let m = format!(
            "this service cannot run CRIU as your uid ({why}), and it is set to refuse \
             non-root checkpoints rather than have root's CRIU dump them (its operator can \
             allow that: `selfdump serve --non-root-fallback root`)"
        );
        return Err(Refused::new(RefusalKind::Unsupported, m));
    }
    let ns_init = pidns::dump_root(PROC, &peer.process, &caller).map_err(Refused::not_permitted)?;
    if let Some(Err(m)) = ns_init.as_ref().map(|init| init.check_session(PROC)) {
        return Err(Refused::new(RefusalKind::Unsupported, m));
    }
    let shell_job = shell_job(peer, ns_init.is_some())?;
    if options.pre_dump {
        let m = pre_dump_refusal(shared).await;
        return Err(Refused::new(RefusalKind::Unsupported, m));
    }
    Ok(Admitted {
        caller,
        shell_job,
        ns_init,
    })
}

/// The caller, if it may ask and be dumped into `dir`.
fn admit(shared: &Shared, peer: &Peer, dir: &OwnedFd) -> Result<TaskStatus, Refused> {
    admission::admit(shared, peer, |caller| {
        let not_permitted = Refused::not_permitted;
        // Not the `/proc/<pid>` directory: the kernel gives directories the
        // task's euid whatever its dumpability; files turn root's when it is off.
        let proc_file = PROC
            .stat(peer.pid(), "stat")
            .map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
        peer.process.alive_or("you exited").map_err(not_permitted)?;
        // a caller whose main thread exited shows as a zombie but runs on
        // in its other threads: its dumpability is checked all the same
        let as_live = TaskStatus {
            zombie: false,
            ..caller.clone()
        };
        check_dumpable(&as_live, &proc_file, "the caller").map_err(not_permitted)?;
        check_directory(caller, dir)
    })
}

/// The images directory: one the caller may write, on a filesystem of
/// files, whose `latest` (if any) the caller may switch.
fn check_directory(caller: &TaskStatus, dir: &OwnedFd) -> Result<(), Refused> {
    let dir_stat =
        rustix::fs::fstat(dir).map_err(|e| Refused::bad_directory(format!("images fd: {e}")))?;
    may_write_dir(caller, &dir_stat).map_err(Refused::bad_directory)?;
    // before anything is made in it: a cgroupfs "directory" makes cgroups
    check_filesystem(dir).map_err(|e| Refused::bad_directory(e.to_string()))?;
    generations::read_latest(dir)
        .map_err(|e| Refused::bad_directory(format!("in the images directory, {e}")))?;
    generations::may_switch_latest(dir, &dir_stat, caller.uid()).map_err(Refused::bad_directory)
}

/// Whether CRIU dumps the caller as a shell job: it does not lead its
/// session. The namespace's init of a whole-namespace dump leads its
/// session, inside the namespace.
fn shell_job(peer: &Peer, whole_namespace: bool) -> Result<bool, Refused> {
    if whole_namespace {
        return Ok(false);
    }
    match peer.process.session_id() {
        Ok(0) => {
            let m = "your session leader is outside the service's pid namespace, and CRIU \
                     cannot dump such a process; start the program in a session of its own \
                     (`setsid`)";
            Err(Refused::new(RefusalKind::Unsupported, m))
        }
        Ok(sid) => Ok(sid != peer.pid()),
        Err(e) => Err(Refused::not_permitted(format!(
            "cannot read your process state: {e}"
        ))),
    }
}

/// Why a pre-dump cannot be done here.
async fn pre_dump_refusal(shared: &Shared) -> String {
    if shared.config.criu.can_track_memory().await {
        "iterative pre-dumps are not implemented by this selfdump service; \
         checkpoint without pre_dump"
            .into()
    } else {
        "iterative pre-dumps need the kernel's soft-dirty memory tracking \
         (CONFIG_MEM_SOFT_DIRTY), which this kernel lacks (`criu check --feature \
         mem_dirty_track` fails); checkpoint without pre_dump"
            .into()
    }
}
