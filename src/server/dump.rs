//! One checkpoint request, from the checks to the committed generation
//! (`commit.rs`) and the answer.

use super::Shared;
use super::as_caller::CallerCreds;
use super::config::FROZEN_NOTICE_TIMEOUT;
use super::connection::send;
use super::dump_failure::failure_message;
use super::engine::run_as::RunAs;
use super::engine::{
    CriuFlags, DumpHooks, DumpSpec, Dumped, EngineError, FrozenVerdict, NonRootEngine, Worker,
    without_forks,
};
use super::generation;
use super::images::{ImageMeta, Published};
use super::jobs::{Jobs, Running};
use super::leftovers;
use super::outcome::{Outcome, Refused};
use super::peer::Peer;
use super::pidns::NsInit;
use super::policy::{Caller, check_dumpable, may_write_dir};
use super::retention;
use super::slots::UidSlot;
use super::staging::Staging;
use super::subdir::check_filesystem;
use super::tree::check_frozen_tree;
use crate::proto::{
    DumpOptions, DumpReport, FrozenNotice, JobId, PROTOCOL_VERSION, RefusalKind, Response,
    encode_frame, write_frame,
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
    peer.alive_or("you exited").map_err(not_permitted)?;
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
    // before anything is made in it: a cgroupfs "directory" makes cgroups
    check_filesystem(dir).map_err(|e| Refused::bad_directory(e.to_string()))?;
    generation::read_latest(dir)
        .map_err(|e| Refused::bad_directory(format!("in the images directory, {e}")))?;
    generation::may_switch_latest(dir, &dir_stat, caller.uid()).map_err(Refused::bad_directory)?;
    // Last, the embedder's own policy (`Builder::admit`), if it has one.
    shared
        .config
        .embedder_admits(&caller, peer)
        .map_err(not_permitted)?;
    Ok(caller)
}

/// Serves one checkpoint request, by the flow: admit it, reserve what the
/// dump holds, let CRIU dump with the tree frozen, conclude, deliver the
/// answer, tidy up.
pub(super) async fn checkpoint(
    shared: &Shared,
    peer: Peer,
    stream: Async<UnixStream>,
    options: DumpOptions,
    dir: OwnedFd,
) {
    let received = Instant::now();
    let (caller, shell_job, ns_init) = match admit_request(shared, &peer, &dir, options).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            log::info!("pid {} uid {}: checkpoint {refused}", peer.pid, peer.uid);
            return send(&stream, &refused.into()).await;
        }
    };
    let mut reservation = match Reservation::take(shared, &peer, &caller) {
        Ok(reservation) => reservation,
        Err(answer) => {
            let (level, said) = super::outcome::logged(&answer);
            log::log!(
                level,
                "pid {} uid {}: checkpoint {said}",
                peer.pid,
                peer.uid
            );
            return send(&stream, &answer).await;
        }
    };
    let job = reservation.job.id;
    let images_dir = dir.try_clone().ok();
    // admitted callers have all their ids equal
    let criu_as = (shared.non_root).criu_for(caller.uid(), caller.gids[1], &caller.groups);
    let as_caller = criu_as.is_some();
    let (staging, criu_dir) = match stage(shared, job, &caller, dir, as_caller).await {
        Ok(staged) => staged,
        Err(answer) => {
            reservation.release_job();
            let (level, said) = super::outcome::logged(&answer);
            log::log!(level, "job {job}: pid {}: {said}", peer.pid);
            return send(&stream, &answer).await;
        }
    };
    let root_pid = ns_init.as_ref().map_or(peer.pid, |init| init.peer.pid);
    log::info!(
        "job {job}: dumping pid {} (uid {}) into {}, by {}; {options}{}{}",
        peer.pid,
        caller.uid(),
        images_dir.as_ref().map_or("?".into(), shown_path),
        if as_caller {
            "a CRIU running as the caller"
        } else {
            "root's CRIU"
        },
        if shell_job { ", shell job" } else { "" },
        match &ns_init {
            Some(init) => format!(", its whole pid namespace from init pid {}", init.peer.pid),
            None => String::new(),
        }
    );
    log::debug!("job {job}: checks done at {:?}", received.elapsed());
    let mut hooks = Hooks {
        peer: &peer,
        root: ns_init.as_ref().map(|init| &init.peer),
        copy_slot_fd: options.copy_slot_fd,
        caller: &caller,
        job,
        reply: ReplyTo::Connection(stream),
        generation: staging.generation().to_owned(),
        staging: Lent(Some(staging)),
        meta: ImageMeta {
            pid: root_pid,
            pid_namespace: ns_init.is_some(),
            ..image_meta(&peer, &caller, job, options, shell_job)
        },
        save_before_exit: !options.leave_running,
        saved: None,
    };
    let spec = DumpSpec {
        pid: root_pid,
        images_dir: criu_dir.as_fd(),
        options,
        shell_job,
    };
    let dumped = freeze(shared, &spec, criu_as.as_ref(), &mut hooks).await;
    drop(criu_dir);
    log::debug!("job {job}: criu done at {:?}", received.elapsed());
    let reply = std::mem::replace(&mut hooks.reply, ReplyTo::Job);
    let outcome = conclude(hooks, dumped, job, as_caller, received).await;
    let keep = matches!(outcome, Outcome::Dumped(_))
        .then(|| (options.keep as usize).clamp(1, shared.config.max_keep));
    let level = match outcome {
        Outcome::Dumped(_) => log::Level::Info,
        Outcome::Failed { .. } => log::Level::Warn,
    };
    log::log!(level, "job {job}: {}", outcome.summary());
    deliver(&mut reservation, reply, outcome).await;
    tidy(shared, images_dir, job, CallerCreds::of(&caller), keep);
}

/// Checks a checkpoint request before anything is reserved for it: the
/// caller ([`admit`]), its pid namespace, its session, the options. `Ok`
/// carries the caller, whether it is a shell job (it does not lead its
/// session) and, for a caller in a pid namespace of its own, the
/// namespace's init (the whole namespace is dumped from it, `pidns.rs`).
async fn admit_request(
    shared: &Shared,
    peer: &Peer,
    dir: &OwnedFd,
    options: DumpOptions,
) -> Result<(Caller, bool, Option<NsInit>), Refused> {
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
    let ns_init = super::pidns::dump_root(peer, &caller).map_err(Refused::not_permitted)?;
    if let Some(Err(m)) = ns_init.as_ref().map(super::pidns::NsInit::check_session) {
        return Err(Refused::new(RefusalKind::Unsupported, m));
    }
    let shell_job = match peer.session_id() {
        // the namespace's init leads its session, inside the namespace
        _ if ns_init.is_some() => false,
        Ok(0) => {
            let m = "your session leader is outside the service's pid namespace, and CRIU \
                     cannot dump such a process; start the program in a session of its own \
                     (`setsid`)";
            return Err(Refused::new(RefusalKind::Unsupported, m));
        }
        Ok(sid) => sid != peer.pid,
        Err(e) => {
            let m = format!("cannot read your process state: {e}");
            return Err(Refused::not_permitted(m));
        }
    };
    if options.pre_dump {
        let m = pre_dump_refusal(shared).await;
        return Err(Refused::new(RefusalKind::Unsupported, m));
    }
    Ok((caller, shell_job, ns_init))
}

/// What a dump holds while it runs: a dump slot, one of its uid's slots
/// and its job. Dropped, it gives them back, and takes the job out of the
/// table unless the answer went to the job ([`deliver`]).
struct Reservation<'a> {
    jobs: &'a Jobs,
    job: Running,
    _permit: async_lock::SemaphoreGuardArc,
    _uid_slot: UidSlot,
    /// The job is out of the table, or holds the answer its caller
    /// collects: nothing is left for the drop to do.
    settled: bool,
}

impl<'a> Reservation<'a> {
    /// The slots and the job, or the answer to send instead.
    fn take(shared: &'a Shared, peer: &Peer, caller: &Caller) -> Result<Self, Response> {
        let Some(permit) = shared.dumps.try_acquire_arc() else {
            let m = format!(
                "{} dumps are already running; retry later",
                shared.config.max_dumps
            );
            return Err(Refused::busy(m).into());
        };
        let per_uid = shared.config.max_dumps_per_uid;
        let Some(uid_slot) = UidSlot::take(&shared.dumps_per_uid, caller.uid(), per_uid) else {
            let m = format!(
                "uid {} already has {} dumps running (the per-uid limit); retry later",
                caller.uid(),
                shared.config.max_dumps_per_uid
            );
            return Err(Refused::busy(m).into());
        };
        let job = shared
            .jobs
            .start(peer)
            .map_err(|e| Outcome::failed(None, format!("cannot start a job: {e}")))?;
        Ok(Self {
            jobs: &shared.jobs,
            job,
            _permit: permit,
            _uid_slot: uid_slot,
            settled: false,
        })
    }

    /// Takes the job out of the table now: its answer goes to the
    /// caller's connection, and no one will ask the job for it.
    fn release_job(&mut self) {
        self.jobs.remove(self.job.id);
        self.settled = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.jobs.remove(self.job.id);
        }
    }
}

/// The job's staging directory in the caller's images directory, and the
/// fd through which CRIU reaches it (while `Staging` moves in and out of
/// the file-work threads); or the answer to send instead.
async fn stage(
    shared: &Shared,
    job: JobId,
    caller: &Caller,
    dir: OwnedFd,
    as_caller: bool,
) -> Result<(Staging, OwnedFd), Response> {
    let creds = CallerCreds::of(caller);
    let key = shared.key.clone();
    let generation = generation::new_name(std::time::SystemTime::now())
        .map_err(|e| Outcome::failed(Some(job), format!("cannot name a generation: {e}")))?;
    let staging = blocking::unblock(move || {
        let mut staging = Staging::create(dir, job, creds, key, generation)?;
        if as_caller {
            staging.for_criu_as_caller()?;
        }
        Ok::<_, std::io::Error>(staging)
    })
    .await
    .map_err(|e| {
        Refused::bad_directory(format!(
            "cannot create a directory in the images directory: {e}"
        ))
    })?;
    let criu_dir = staging
        .dir()
        .try_clone_to_owned()
        .map_err(|e| Outcome::failed(Some(job), format!("cannot start a job: {e}")))?;
    Ok((staging, criu_dir))
}

/// What the images record about the dump.
fn image_meta(
    peer: &Peer,
    caller: &Caller,
    job: JobId,
    options: DumpOptions,
    shell_job: bool,
) -> ImageMeta {
    let mut meta = ImageMeta {
        protocol: PROTOCOL_VERSION,
        job,
        pid: peer.pid,
        uid: caller.uid(),
        gid: caller.gids[1],
        groups: caller.groups.clone(),
        ..ImageMeta::default()
    };
    CriuFlags::for_dump(&options, shell_job).record(&mut meta);
    meta
}

/// CRIU dumps the tree, calling `hooks` while it is frozen: root's CRIU
/// (a worker started ahead if one is ready), or one started now as
/// `criu_as`, inheriting the directory it dumps into.
async fn freeze(
    shared: &Shared,
    spec: &DumpSpec<'_>,
    criu_as: Option<&RunAs>,
    hooks: &mut Hooks<'_>,
) -> Result<Dumped, EngineError> {
    let worker = match criu_as {
        None => shared.workers.take(),
        Some(user) => Worker::start_as(
            &shared.config.criu,
            user,
            Some(spec.images_dir),
            shared.non_root.runtime_dir(),
        ),
    };
    match worker {
        Ok(worker) => worker.dump(spec, shared.config.dump_timeout, hooks).await,
        Err(e) => Err(EngineError::Io(e)),
    }
}

/// Commits the images of a dump that succeeded as a generation, or
/// discards what a failed one left (keeping CRIU's log for the caller):
/// the outcome.
async fn conclude(
    hooks: Hooks<'_>,
    dumped: Result<Dumped, EngineError>,
    job: JobId,
    as_caller: bool,
    received: Instant,
) -> Outcome {
    let Hooks {
        staging,
        meta,
        saved,
        peer,
        root,
        caller,
        generation,
        ..
    } = hooks;
    let staging = staging.into_inner();
    let dumped = match dumped {
        Ok(dumped) => dumped,
        Err(e) => {
            let committed = staging.is_committed();
            let (log_file, logged) = blocking::unblock(move || staging.discard()).await;
            let tree = as_caller.then(|| root.unwrap_or(peer));
            let mut message = failure_message(&e, logged, caller, tree);
            if committed {
                message.push_str(&format!(
                    " (after the images were committed as generation {generation}, which \
                     latest names)"
                ));
            }
            return Outcome::Failed {
                job: Some(job),
                message,
                log_file,
            };
        }
    };
    let published = blocking::unblock(move || staging.publish(&meta)).await;
    log::debug!(
        "job {job}: generation {generation} committed at {:?}",
        received.elapsed()
    );
    match published {
        Ok(published) => {
            let published = saved.unwrap_or_default().and(published);
            let stats = published.stats.clone().unwrap_or_default();
            Outcome::Dumped(DumpReport {
                job,
                generation,
                frozen_us: stats.frozen_time.into(),
                freezing_us: stats.freezing_time.into(),
                memdump_us: stats.memdump_time.into(),
                memwrite_us: stats.memwrite_time.into(),
                total_us: received.elapsed().as_micros() as u64,
                sync_us: published.sync_us,
                service_frozen_us: dumped.service_frozen.as_micros() as u64,
                pages_scanned: stats.pages_scanned,
                pages_written: stats.pages_written,
                bytes_written: published.bytes,
                processes: published.processes,
            })
        }
        Err(e) => Outcome::failed(
            Some(job),
            format!(
                "dump succeeded but committing the images failed: {e}; latest still names the \
                 previous generation"
            ),
        ),
    }
}

/// The path an fd of a directory was opened at, for the service log only
/// (never acted on: the caller can rename it at any moment).
fn shown_path(dir: &OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_or_else(
        |_| "an unnamed directory".into(),
        |p| p.display().to_string(),
    )
}

/// Where a dump's answer goes.
enum ReplyTo {
    /// The caller still waits on its connection: CRIU failed before the
    /// freeze, or the freeze was vetoed.
    Connection(Async<UnixStream>),
    /// The connection was closed at the freeze: the caller asks for the
    /// job's result on a new one.
    Job,
}

/// Gives the answer to whoever waits for it.
async fn deliver(reservation: &mut Reservation<'_>, reply: ReplyTo, outcome: Outcome) {
    match reply {
        ReplyTo::Connection(stream) => {
            reservation.release_job();
            send(&stream, &outcome.into()).await;
        }
        ReplyTo::Job => {
            reservation.job.finish(outcome);
            reservation.settled = true;
        }
    }
}

/// After the answer (off the caller's time): the next dump finds a worker
/// ready, generations beyond the newest `keep` go once one was committed
/// (`retention.rs`), and what a service that died left in this directory
/// goes (the caller's own leftovers with its credentials, `creds`).
fn tidy(
    shared: &Shared,
    images_dir: Option<OwnedFd>,
    job: JobId,
    creds: CallerCreds,
    keep: Option<usize>,
) {
    shared.workers.refill();
    if let Some(images_dir) = images_dir {
        let own = format!("{:016x}", job.service);
        blocking::unblock(move || {
            if let Some(keep) = keep {
                retention::retain(&images_dir, &creds, keep);
            }
            leftovers::remove_stale(&images_dir, Some(&own), &creds)
        })
        .detach();
    }
}

/// A value lent to the file-work threads and given back: the staging
/// directory between CRIU's notifications.
struct Lent<T>(Option<T>);

impl<T: Send + 'static> Lent<T> {
    /// Runs `f` on the value on a file-work thread.
    async fn with<R: Send + 'static>(&mut self, f: impl FnOnce(&mut T) -> R + Send + 'static) -> R {
        let mut value = self.0.take().expect("given back after every loan");
        let (value, r) = blocking::unblock(move || {
            let r = f(&mut value);
            (value, r)
        })
        .await;
        self.0 = Some(value);
        r
    }

    fn into_inner(self) -> T {
        self.0.expect("given back after every loan")
    }
}

/// What the service does while CRIU holds the caller's tree frozen.
struct Hooks<'a> {
    peer: &'a Peer,
    /// The dump's root when it is not the caller: its namespace's init.
    root: Option<&'a Peer>,
    /// The caller's copy slot fd (`DumpOptions::copy_slot_fd`).
    copy_slot_fd: Option<i32>,
    caller: &'a Caller,
    job: JobId,
    /// Where the answer goes: the caller's connection until it is closed
    /// at the freeze (kept when the freeze is vetoed: the caller then
    /// reads the error on it), then the job.
    reply: ReplyTo,
    staging: Lent<Staging>,
    /// The generation the images become (told the caller at the freeze).
    generation: String,
    meta: ImageMeta,
    /// "Exit after dump": CRIU ends the tree after `post-dump`, so the images
    /// are saved before that, or the tree is kept alive.
    save_before_exit: bool,
    saved: Option<Published>,
}

impl DumpHooks for Hooks<'_> {
    async fn frozen(&mut self) -> FrozenVerdict {
        let ReplyTo::Connection(stream) = std::mem::replace(&mut self.reply, ReplyTo::Job) else {
            return FrozenVerdict::Veto("criu announced the freeze twice".into());
        };
        let notice = FrozenNotice {
            job: self.job,
            generation: self.generation.clone(),
        };
        match at_freeze(self.peer, self.root, self.caller, &stream, notice).await {
            Ok(()) => {
                self.meta.copy_slot = self
                    .copy_slot_fd
                    .and_then(|fd| super::pidns::copy_slot(self.peer, fd));
                without_forks(|| drop(stream));
                FrozenVerdict::Proceed
            }
            Err(why) => {
                log::warn!("job {}: vetoed at the freeze: {why}", self.job);
                self.reply = ReplyTo::Connection(stream);
                FrozenVerdict::Veto(why)
            }
        }
    }

    async fn images_written(&mut self) -> FrozenVerdict {
        if !self.save_before_exit {
            return FrozenVerdict::Proceed;
        }
        let meta = self.meta.clone();
        match self.staging.with(move |staging| staging.save(&meta)).await {
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
    root: Option<&Peer>,
    caller: &Caller,
    stream: &Async<UnixStream>,
    notice: FrozenNotice,
) -> Result<(), String> {
    // A whole namespace: every task under its init, the caller among them.
    check_frozen_tree(root.unwrap_or(peer), caller)?;
    peer.alive_or("the caller exited while its tree was checked")?;
    let frame = encode_frame(&Response::Frozen(notice));
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
