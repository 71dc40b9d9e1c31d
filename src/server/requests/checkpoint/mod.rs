//! One checkpoint request, by its flow: admit it (`checks.rs`), reserve
//! what the dump holds, stage a directory for CRIU, let CRIU dump with the
//! tree frozen (`frozen.rs`), conclude (`conclude.rs`: the committed
//! generation, or why it failed, `failure.rs`), and return the answer
//! with what to tidy once it is sent.

mod checks;
mod conclude;
mod failure;
mod frozen;

pub(crate) use conclude::Tidy;

use crate::proto::{DumpOptions, JobId, PROTOCOL_VERSION};
use crate::server::caller::credentials::Credentials;
use crate::server::caller::process::Process;
use crate::server::caller::status::TaskStatus;
use crate::server::conn::{Connection, Outcome, Peer, Refused, Reply};
use crate::server::engine::{CriuFlags, DumpSpec, Dumped, EngineError, Worker, host};
use crate::server::fs::generations;
use crate::server::fs::staging::Staging;
use crate::server::images::format::ImageMeta;
use crate::server::jobs::{Jobs, Running};
use crate::server::requests::admission::RunSlot;
use crate::server::shared::Shared;
use checks::Admitted;
use frozen::{Hooks, Lent};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// Serves one checkpoint request: what its caller is told (on `conn`, or,
/// once `conn` was closed at the freeze, as its job's result), and what
/// to tidy once it is (none for a request refused before its dump).
pub(crate) async fn serve(
    shared: &Shared,
    peer: &Peer,
    conn: &mut Connection,
    options: DumpOptions,
    dir: OwnedFd,
) -> (Reply, Option<Tidy>) {
    let received = Instant::now();
    let admitted = match checks::admit_request(shared, peer, &dir, options).await {
        Ok(admitted) => admitted,
        Err(refused) => return (refused.into(), None),
    };
    let caller = &admitted.caller;
    let mut reservation = match Reservation::take(shared, peer, caller) {
        Ok(reservation) => reservation,
        Err(not_started) => return (not_started.into(), None),
    };
    let job = reservation.job.id;
    let images_dir = dir.try_clone().ok();
    // admitted callers have all their ids equal
    let criu_as = shared.non_root.criu_for(&caller.credentials());
    let (staging, criu_dir) = match stage(shared, job, caller, dir, criu_as.is_some()).await {
        Ok(staged) => staged,
        Err(not_started) => {
            reservation.release_job();
            return (not_started.into(), None);
        }
    };
    let dump = Dump {
        shared,
        peer,
        admitted: &admitted,
        options,
        job,
        criu_as: criu_as.as_ref(),
        received,
        images: images_dir.as_ref().map_or_else(|| "?".into(), shown_path),
    };
    let outcome = dump.run(conn, staging, criu_dir).await;
    let keep = matches!(outcome, Outcome::Dumped(_))
        .then(|| (options.keep as usize).clamp(1, shared.config.max_keep));
    let level = match outcome {
        Outcome::Dumped(_) => log::Level::Info,
        Outcome::Failed { .. } => log::Level::Warn,
    };
    log::log!(level, "job {job}: {}", outcome.summary());
    let reply = reservation.deliver(conn.is_open(), outcome);
    let creds = caller.credentials();
    let tidy = Tidy {
        images_dir,
        job,
        creds,
        keep,
    };
    (reply, Some(tidy))
}

/// How a checkpoint ends before CRIU runs.
enum NotStarted {
    Refused(Refused),
    Failed(Outcome),
}

impl From<Refused> for NotStarted {
    fn from(refused: Refused) -> Self {
        Self::Refused(refused)
    }
}

impl From<Outcome> for NotStarted {
    fn from(failed: Outcome) -> Self {
        Self::Failed(failed)
    }
}

impl From<NotStarted> for Reply {
    fn from(not_started: NotStarted) -> Self {
        match not_started {
            NotStarted::Refused(refused) => refused.into(),
            NotStarted::Failed(failed) => failed.into(),
        }
    }
}

/// What a dump holds while it runs: a CRIU run and its job. Dropped, it
/// gives them back, and takes the job out of the table unless the answer
/// went to the job ([`Reservation::deliver`]).
struct Reservation<'a> {
    jobs: &'a Jobs,
    job: Running,
    _run: RunSlot,
    /// The job is out of the table, or holds the answer its caller
    /// collects: nothing is left for the drop to do.
    settled: bool,
}

impl<'a> Reservation<'a> {
    /// The run and the job, or why the dump does not start.
    fn take(shared: &'a Shared, peer: &Peer, caller: &TaskStatus) -> Result<Self, NotStarted> {
        let run = RunSlot::take(shared, caller.uid())?;
        let job = shared
            .jobs
            .start(peer)
            .map_err(|e| Outcome::failed(None, format!("cannot start a job: {e}")))?;
        Ok(Self {
            jobs: &shared.jobs,
            job,
            _run: run,
            settled: false,
        })
    }

    /// Takes the job out of the table now: its answer goes to the
    /// caller's connection, and no one will ask the job for it.
    fn release_job(&mut self) {
        self.jobs.remove(self.job.id);
        self.settled = true;
    }

    /// Gives the outcome to whoever waits for it: the caller on its
    /// connection, if it is still `open` (CRIU failed before the freeze,
    /// or the freeze was vetoed), else the job, whose result the caller
    /// asks for on a new connection.
    fn deliver(&mut self, open: bool, outcome: Outcome) -> Reply {
        if open {
            self.release_job();
            outcome.into()
        } else {
            self.job.finish(outcome);
            self.settled = true;
            Reply::ThroughJob
        }
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
/// the file-work threads); or why the dump does not start.
async fn stage(
    shared: &Shared,
    job: JobId,
    caller: &TaskStatus,
    dir: OwnedFd,
    as_caller: bool,
) -> Result<(Staging, OwnedFd), NotStarted> {
    let creds = caller.credentials();
    let key = shared.key.clone();
    let generation = generations::new_name(std::time::SystemTime::now())
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

/// Starts root's `criu swrk` for one dump on a file-work thread, so that
/// the executor serves the other requests meanwhile (a fork and an exec,
/// 2–4 ms here: eight requests at once were admitted one spawn apart when
/// it ran on the executor).
async fn start_root_worker(shared: &Shared) -> std::io::Result<Worker> {
    let criu = shared.config.criu.clone();
    blocking::unblock(move || Worker::start(&criu)).await
}

/// One admitted, reserved and staged dump, about to run.
struct Dump<'a> {
    shared: &'a Shared,
    peer: &'a Peer,
    admitted: &'a Admitted,
    options: DumpOptions,
    job: JobId,
    /// Who the CRIU runs as, when not root: the caller.
    criu_as: Option<&'a Credentials>,
    received: Instant,
    /// The images directory's path, for the log (never acted on).
    images: String,
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

impl Dump<'_> {
    /// CRIU dumps the tree into `criu_dir` with the hooks acting while it
    /// is frozen; the outcome, its images committed or discarded.
    async fn run(&self, conn: &mut Connection, staging: Staging, criu_dir: OwnedFd) -> Outcome {
        let Admitted {
            caller,
            shell_job,
            ns_init,
        } = self.admitted;
        let root = ns_init.as_ref().map(|init| &init.process);
        let root_pid = root.map_or(self.peer.pid(), |init| init.pid);
        self.log_start(root);
        let mut meta = self.image_meta(caller);
        CriuFlags::for_dump(&self.options, *shell_job).record(&mut meta);
        meta.pid = root_pid;
        meta.pid_namespace = root.is_some();
        let mut hooks = Hooks {
            peer: self.peer,
            root,
            copy_slot_fd: self.options.copy_slot_fd,
            caller,
            job: self.job,
            conn,
            generation: staging.generation().to_owned(),
            staging: Lent::new(staging),
            meta,
            save_before_exit: !self.options.leave_running,
            saved: None,
        };
        let spec = DumpSpec {
            pid: root_pid,
            images_dir: criu_dir.as_fd(),
            options: self.options,
            shell_job: *shell_job,
        };
        let dumped = self.freeze(&spec, &mut hooks).await;
        drop(criu_dir);
        log::debug!(
            "job {}: criu done at {:?}",
            self.job,
            self.received.elapsed()
        );
        let as_caller = self.criu_as.is_some();
        conclude::conclude(hooks, dumped, as_caller, self.received).await
    }

    /// CRIU dumps the tree, calling `hooks` while it is frozen: root's CRIU
    /// (a worker started ahead if one is ready), or one started now as
    /// the caller, inheriting the directory it dumps into.
    async fn freeze(
        &self,
        spec: &DumpSpec<'_>,
        hooks: &mut Hooks<'_>,
    ) -> Result<Dumped, EngineError> {
        let shared = self.shared;
        let worker = match self.criu_as {
            None => match shared.workers.take_ready() {
                Some(worker) => Ok(worker),
                None => start_root_worker(shared).await,
            },
            // started here: it inherits the directory at the number the
            // dump names (`spec.images_dir`, borrowed)
            Some(user) => Worker::start_as(
                &shared.config.criu,
                user,
                Some(spec.images_dir),
                shared.non_root.runtime_dir(),
            ),
        };
        match worker {
            Ok(worker) => {
                worker
                    .dump(spec, shared.config.criu_run_timeout, hooks)
                    .await
            }
            Err(e) => Err(EngineError::Io(e)),
        }
    }

    /// What the images record about the dump, besides its flags and root.
    fn image_meta(&self, caller: &TaskStatus) -> ImageMeta {
        ImageMeta {
            protocol: PROTOCOL_VERSION,
            job: self.job,
            pid: self.peer.pid(),
            uid: caller.uid(),
            gid: caller.gid(),
            groups: caller.groups.clone(),
            needs: Some(host::this_host(&self.shared.config.criu.path)),
            ..ImageMeta::default()
        }
    }

    fn log_start(&self, root: Option<&Process>) {
        let (job, peer) = (self.job, self.peer);
        log::info!(
            "job {job}: dumping pid {} (uid {}) into {}, by {}; {}{}{}",
            peer.pid(),
            self.admitted.caller.uid(),
            self.images,
            match self.criu_as {
                Some(_) => "a CRIU running as the caller",
                None => "root's CRIU",
            },
            self.options,
            if self.admitted.shell_job {
                ", shell job"
            } else {
                ""
            },
            match root {
                Some(init) => format!(", its whole pid namespace from init pid {}", init.pid),
                None => String::new(),
            }
        );
        log::debug!("job {job}: checks done at {:?}", self.received.elapsed());
    }
}
