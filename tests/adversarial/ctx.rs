//! What an attack leaves for the checks that follow it, and those checks:
//! the service still serves, holds no fd it did not hold before (by
//! identity), keeps its warm workers, has no zombie child, and nothing of
//! root's is left where a caller can write.

use crate::common::*;
use crate::fds::{self, Fd};
use crate::support::{self, args, outcome, poll_until};
use selfdump::server::Builder;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One attack's service, the steps it reached and its skips.
pub struct Ctx {
    socket: Option<PathBuf>,
    /// Keeps the attacked service alive until the checks are done.
    guard: Option<Box<dyn std::any::Any>>,
    /// The process that serves: this one, or a `selfdump serve` child.
    service_pid: i32,
    /// Its warm workers, waiting, when it is idle.
    workers: usize,
    /// Its open fds once it was up, before the attack.
    baseline: Vec<Fd>,
    /// Whatever else must outlive the checks (files the service uses, the
    /// caller's directories to look into).
    pub keep: Vec<Box<dyn std::any::Any>>,
    /// When the attack began (less a second: ctimes are whole seconds).
    pub started: SystemTime,
    /// The steps the attack reached, as it says (its verdict names them).
    pub reached: Vec<String>,
    /// What it could not check, and the machine limit why (already
    /// recorded by [`skip`]).
    pub skipped: Vec<(Limit, String)>,
}

impl Default for Ctx {
    fn default() -> Self {
        Self {
            socket: None,
            guard: None,
            service_pid: std::process::id() as i32,
            workers: 0,
            baseline: Vec::new(),
            keep: Vec::new(),
            started: SystemTime::now() - Duration::from_secs(1),
            reached: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

impl Ctx {
    /// Starts the service to attack in this process (default limits,
    /// `configure`d, one warm CRIU worker).
    pub fn service(&mut self, configure: impl FnOnce(Builder) -> Builder) -> PathBuf {
        self.start(configure, 1)
    }

    /// Starts the service to attack with no warm CRIU worker (each dump
    /// starts its own CRIU).
    pub fn service_cold(&mut self, configure: impl FnOnce(Builder) -> Builder) -> PathBuf {
        self.start(|b| configure(b).warm_workers(0), 0)
    }

    fn start(&mut self, configure: impl FnOnce(Builder) -> Builder, workers: usize) -> PathBuf {
        self.guard = None;
        let service = Service::start_with(configure);
        let socket = service.socket.clone();
        self.adopt(socket.clone(), Box::new(service), workers);
        socket
    }

    /// Takes over a service in this process started by the attack itself,
    /// with `workers` warm CRIU workers.
    pub fn adopt(&mut self, socket: PathBuf, guard: Box<dyn std::any::Any>, workers: usize) {
        self.adopt_process(socket, guard, std::process::id() as i32, workers);
    }

    /// Takes over a service running as process `pid` (this one, or a
    /// `selfdump serve`), with `workers` warm CRIU workers: its fds and
    /// children are what the checks after the attack look at.
    pub fn adopt_process(
        &mut self,
        socket: PathBuf,
        guard: Box<dyn std::any::Any>,
        pid: i32,
        workers: usize,
    ) {
        self.socket = Some(socket.clone());
        self.guard = Some(guard);
        self.service_pid = pid;
        self.workers = workers;
        // it has answered something (what it opens lazily is open), and
        // its warm workers wait: waited for however slow the machine, never
        // guessed (an earlier service's worker must have gone, or it would
        // be counted instead)
        let _ = support::refusal(support::exchange(
            &socket,
            &support::frame_with_body(b"x"),
            &[],
        ));
        poll_until(Duration::from_secs(60), Duration::from_millis(10), || {
            let waiting = fds::waiting_workers_of(pid);
            match waiting.len() == workers {
                true => Ok(()),
                false => Err(format!(
                    "expected {workers} warm CRIU worker(s) of the service (pid {pid}), \
                     found {waiting:?}"
                )),
            }
        });
        self.baseline = fds::fds_of(pid);
    }

    /// Records a step the attack reached (its verdict names each).
    pub fn reached(&mut self, step: impl Into<String>) {
        self.reached.push(step.into());
    }

    /// Skips what the attack cannot check here because of `limit` (loud,
    /// counted, listed at the end of the run); returns the verdict text.
    #[track_caller]
    pub fn skip(&mut self, limit: Limit, what: &str) -> String {
        skip(limit, what);
        self.skipped.push((limit, what.to_owned()));
        format!("not checked here [{}]: {what}", limit.name())
    }
}

/// A normal checkpoint through the service still works.
pub fn assert_still_serves(socket: &Path) {
    let images = images_dir();
    let mut program = Program::start_on(
        socket,
        images.path(),
        &args("--at 1 --until 2 --interval-ms 20"),
        None,
    );
    let line = outcome(&program);
    assert!(
        line.starts_with("checkpoint continued"),
        "service stopped serving: {line}"
    );
    assert!(program.wait().success());
}

/// After an attack: still serving, no fd that was not there before (by
/// identity: number and target), its warm workers waiting, no zombie,
/// nothing of root's left in a caller's directory, nothing written through
/// a planted symlink.
pub fn after_attack(ctx: &mut Ctx) {
    let socket = ctx.socket.clone().expect("the attack started a service");
    assert_still_serves(&socket);
    let written: Vec<_> = std::fs::read_dir(support::victim_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        written.is_empty(),
        "root wrote outside the images directory: {written:?}"
    );
    support::wait_no_criu_of(ctx.service_pid);
    // once no CRIU runs, no staging directory of root's is left where a
    // caller can write (a dump still running has one, rightly)
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let left = support::roots_entries_in_callers_dirs(ctx.started);
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "root's entries left in callers' directories: {left:?}"
            )),
        }
    });
    let pid = ctx.service_pid;
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let now = fds::fds_of(pid);
        let new = fds::new_fds(&ctx.baseline, &now);
        let zombies: Vec<_> = crate::common::children_of(pid)
            .into_iter()
            .filter(|(_, state, _)| *state == 'Z')
            .collect();
        let workers = fds::waiting_workers_of(pid);
        if new.is_empty() && zombies.is_empty() && workers.len() == ctx.workers {
            return Ok(());
        }
        Err(format!(
            "after the attack, the service (pid {pid}) holds fds it did not before: {new:?} \
             (before: {:?}); zombies {zombies:?}; {} warm worker(s) waiting, {} before",
            ctx.baseline,
            workers.len(),
            ctx.workers
        ))
    });
    ctx.guard = None;
    ctx.keep.clear();
}
