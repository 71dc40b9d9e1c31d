//! One checkpoint request, from the checks to the published images.

use super::Shared;
use super::as_caller::CallerCreds;
use super::config::FROZEN_NOTICE_TIMEOUT;
use super::connection::{UidSlot, send};
use super::engine::{DumpHooks, DumpSpec, EngineError, FrozenVerdict, without_forks};
use super::images::{ImageMeta, Published};
use super::leftovers;
use super::outcome::{Outcome, Refused};
use super::peer::Peer;
use super::policy::{Caller, check_dumpable, may_write_dir};
use super::staging::Staging;
use super::tree::check_frozen_tree;
use crate::proto::{
    DumpOptions, DumpReport, JobId, PROTOCOL_VERSION, RefusalKind, Response, encode_frame,
    write_frame,
};
use async_io::{Async, Timer};
use futures_lite::FutureExt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Checks a checkpoint request; `Err` is the refusal to send.
fn admit(shared: &Shared, peer: &Peer, dir: &OwnedFd) -> Result<Caller, Refused> {
    let not_permitted = Refused::not_permitted;
    let caller =
        Caller::read(peer).map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    shared.config.policy.admit(&caller).map_err(not_permitted)?;
    // Not the `/proc/<pid>` directory: the kernel gives directories the
    // task's euid whatever its dumpability; files turn root's when it is off.
    let proc_file = rustix::fs::stat(format!("/proc/{}/stat", peer.pid))
        .map_err(|e| not_permitted(format!("cannot inspect you: {e}")))?;
    if !peer.is_alive() {
        return Err(not_permitted("you exited".into()));
    }
    // a caller whose main thread exited shows as a zombie but runs on
    // in its other threads: its dumpability is checked all the same
    let as_live = Caller {
        zombie: false,
        ..caller.clone()
    };
    check_dumpable(&as_live, &proc_file, "the caller").map_err(not_permitted)?;
    let dir_stat =
        rustix::fs::fstat(dir).map_err(|e| Refused::bad_directory(format!("images fd: {e}")))?;
    may_write_dir(&caller, &dir_stat).map_err(Refused::bad_directory)?;
    // Last, the embedder's own policy (`Builder::admit`), if it has one.
    let info = super::policy::CallerInfo {
        uid: caller.uid(),
        gid: caller.gids[1],
        pid: peer.pid,
        pidfd: peer.pidfd.as_fd(),
    };
    shared
        .config
        .embedder_admits(&info)
        .map_err(not_permitted)?;
    Ok(caller)
}

pub(super) async fn checkpoint(
    shared: &Shared,
    peer: Peer,
    stream: Async<UnixStream>,
    options: DumpOptions,
    dir: OwnedFd,
) {
    let received = Instant::now();
    let caller = match admit(shared, &peer, &dir) {
        Ok(caller) => caller,
        Err(refused) => {
            log::info!("pid {} uid {}: refused: {refused:?}", peer.pid, peer.uid);
            return send(&stream, &refused.into()).await;
        }
    };
    let shell_job = match peer.session_id() {
        Ok(0) => {
            let m = "your session leader is outside the service's pid namespace, and CRIU \
                     cannot dump such a process; start the program in a session of its own \
                     (`setsid`)";
            return send(&stream, &Refused::new(RefusalKind::Unsupported, m).into()).await;
        }
        Ok(sid) => sid != peer.pid,
        Err(e) => {
            let m = format!("cannot read your process state: {e}");
            return send(&stream, &Refused::not_permitted(m).into()).await;
        }
    };
    if options.pre_dump {
        let refused = Refused::new(RefusalKind::Unsupported, pre_dump_refusal(shared).await);
        return send(&stream, &refused.into()).await;
    }
    let Some(_permit) = shared.dumps.try_acquire_arc() else {
        let m = format!(
            "{} dumps are already running; retry later",
            shared.config.max_dumps
        );
        return send(&stream, &Refused::busy(m).into()).await;
    };
    let per_uid = shared.config.max_dumps_per_uid;
    let Some(_uid_slot) = UidSlot::take(&shared.dumps_per_uid, caller.uid(), per_uid) else {
        let m = format!(
            "uid {} already has {} dumps running (the per-uid limit); retry later",
            caller.uid(),
            shared.config.max_dumps_per_uid
        );
        return send(&stream, &Refused::busy(m).into()).await;
    };
    let job = match shared.jobs.start(&peer) {
        Ok(job) => job,
        Err(e) => {
            let failed = Outcome::failed(None, format!("cannot start a job: {e}"));
            return send(&stream, &failed.into()).await;
        }
    };
    let images_dir = dir.try_clone().ok();
    let creds = CallerCreds::of(&caller);
    let job_id = job.id;
    let key = shared.key.clone();
    let staging = match blocking::unblock(move || Staging::create(dir, job_id, creds, key)).await {
        Ok(staging) => staging,
        Err(e) => {
            shared.jobs.remove(job.id);
            let m = format!("cannot create a directory in the images directory: {e}");
            return send(&stream, &Refused::bad_directory(m).into()).await;
        }
    };
    // CRIU reaches the staging directory through this fd while `staging`
    // moves in and out of the file-work threads.
    let criu_dir = match staging.dir().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            shared.jobs.remove(job.id);
            let failed = Outcome::failed(Some(job.id), format!("cannot start a job: {e}"));
            return send(&stream, &failed.into()).await;
        }
    };
    let spec = DumpSpec {
        pid: peer.pid,
        images_dir: criu_dir.as_fd(),
        options,
        shell_job,
    };
    log::info!(
        "job {}: dumping pid {} (uid {}) {options:?} shell_job={shell_job}",
        job.id,
        peer.pid,
        caller.uid()
    );
    log::debug!("job {}: checks done at {:?}", job.id, received.elapsed());
    let mut hooks = Hooks {
        peer: &peer,
        caller: &caller,
        job: job.id,
        connection: Some(stream),
        staging: Some(staging),
        meta: ImageMeta {
            protocol: PROTOCOL_VERSION,
            job: job.id,
            pid: peer.pid,
            uid: caller.uid(),
            shell_job,
            tcp_established: options.tcp_established,
            file_locks: options.file_locks,
            ext_unix_sk: options.ext_unix_sk,
            gid: caller.gids[1],
            groups: caller.groups.clone(),
            ..ImageMeta::default()
        },
        save_before_exit: !options.leave_running,
        saved: None,
    };
    let dumped = match shared.workers.take() {
        Ok(worker) => {
            worker
                .dump(&spec, shared.config.dump_timeout, &mut hooks)
                .await
        }
        Err(e) => Err(EngineError::Io(e)),
    };
    drop(criu_dir);
    log::debug!("job {}: criu done at {:?}", job.id, received.elapsed());

    let Hooks {
        connection,
        staging,
        meta,
        saved,
        ..
    } = hooks;
    let staging = staging.expect("the hooks give the staging directory back");
    let answer = match dumped {
        Ok(dumped) => {
            let published = blocking::unblock(move || staging.publish(&meta)).await;
            log::debug!(
                "job {}: images published at {:?}",
                job.id,
                received.elapsed()
            );
            match published {
                Ok(published) => {
                    let published = saved.unwrap_or_default().and(published);
                    let stats = published.stats.clone().unwrap_or_default();
                    Outcome::Dumped(DumpReport {
                        job: job.id,
                        frozen_us: stats.frozen_time.into(),
                        freezing_us: stats.freezing_time.into(),
                        memdump_us: stats.memdump_time.into(),
                        total_us: received.elapsed().as_micros() as u64,
                        sync_us: published.sync_us,
                        service_frozen_us: dumped.service_frozen.as_micros() as u64,
                        pages_written: stats.pages_written,
                        bytes_written: published.bytes,
                        processes: published.processes,
                    })
                }
                Err(e) => Outcome::failed(
                    Some(job.id),
                    format!("dump succeeded but saving the images failed: {e}"),
                ),
            }
        }
        Err(e) => {
            let (log_file, logged) = blocking::unblock(move || staging.discard()).await;
            let message = match (&e, logged) {
                // a capability the service lacks is named first
                (EngineError::Failed(errmsg), logged) => format!(
                    "criu dump failed: {}",
                    super::caps::explain_dump_failure(
                        logged
                            .as_deref()
                            .or(errmsg.as_deref())
                            .unwrap_or("no error logged"),
                        caller.uid()
                    )
                ),
                _ => e.to_string(),
            };
            Outcome::Failed {
                job: Some(job.id),
                message,
                log_file,
            }
        }
    };
    log::info!("job {}: {}", job.id, answer.summary());
    match connection {
        // CRIU failed before the freeze: the caller still waits on this connection.
        Some(stream) => {
            shared.jobs.remove(job.id);
            send(&stream, &answer.into()).await;
        }
        None => job.finish(answer),
    }
    // after the answer: the next dump finds a worker ready, and what a
    // service that died left in this directory goes
    shared.workers.refill();
    if let Some(images_dir) = images_dir {
        let own = format!("{:016x}", job.id.service);
        blocking::unblock(move || leftovers::remove_stale_staging(&images_dir, &own)).detach();
    }
}

/// What the service does while CRIU holds the caller's tree frozen.
struct Hooks<'a> {
    peer: &'a Peer,
    caller: &'a Caller,
    job: JobId,
    /// The caller's connection, until it is closed at the freeze (kept
    /// when the freeze is vetoed: the caller then reads the error on it).
    connection: Option<Async<UnixStream>>,
    /// Lent to the file-work threads while images are saved.
    staging: Option<Staging>,
    meta: ImageMeta,
    /// "Exit after dump": CRIU ends the tree after `post-dump`, so the images
    /// are saved before that, or the tree is kept alive.
    save_before_exit: bool,
    saved: Option<Published>,
}

impl DumpHooks for Hooks<'_> {
    async fn frozen(&mut self) -> FrozenVerdict {
        let stream = self.connection.take().expect("the freeze comes once");
        match at_freeze(self.peer, self.caller, &stream, self.job).await {
            Ok(()) => {
                without_forks(|| drop(stream));
                FrozenVerdict::Proceed
            }
            Err(why) => {
                log::warn!("job {}: vetoed at the freeze: {why}", self.job);
                self.connection = Some(stream);
                FrozenVerdict::Veto(why)
            }
        }
    }

    async fn images_written(&mut self) -> FrozenVerdict {
        if !self.save_before_exit {
            return FrozenVerdict::Proceed;
        }
        let mut staging = self.staging.take().expect("staging is home between hooks");
        let meta = self.meta.clone();
        let (staging, saved) = blocking::unblock(move || {
            let saved = staging.save(&meta);
            (staging, saved)
        })
        .await;
        self.staging = Some(staging);
        match saved {
            Ok(saved) => {
                self.saved = Some(saved);
                FrozenVerdict::Proceed
            }
            Err(e) => FrozenVerdict::Veto(format!(
                "the images could not be saved ({e}), so the process was left running"
            )),
        }
    }
}

/// Runs with the tree frozen, before CRIU collects sockets: checks the
/// caller is still the process that asked and every task of its tree may be
/// dumped for it, then queues the last frame. `Ok` means the caller's
/// connection may now be closed so CRIU records it half-closed; `Err` is
/// why the dump must not go on.
async fn at_freeze(
    peer: &Peer,
    caller: &Caller,
    stream: &Async<UnixStream>,
    job: JobId,
) -> Result<(), String> {
    check_frozen_tree(peer, caller)?;
    let frame = encode_frame(&Response::Frozen(job));
    let write = async {
        write_frame(stream, &frame, &[])
            .await
            .map_err(|e| e.to_string())
    };
    let limit = async {
        Timer::after(FROZEN_NOTICE_TIMEOUT).await;
        Err("timed out".into())
    };
    write
        .or(limit)
        .await
        .map_err(|e| format!("cannot tell the caller it is frozen: {e}"))
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
