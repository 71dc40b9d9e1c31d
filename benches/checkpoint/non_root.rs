//! Part 5, what least privilege costs: a non-root checkpoint (its CRIU runs
//! as the caller, started for the dump) against a root one of the same
//! program, through the service, in turns in one run; root's with a warm
//! worker (the service's default) and without one (started on demand, as
//! every non-root CRIU is). Then two parts of the difference, by the
//! engine alone: what starting a CRIU as the caller costs against root's
//! (the fork, the switch of ids and the exec: all a launcher started ahead
//! could save), and what the unprivileged kernel-feature cache saves.

use super::{Sample, m, median, ms, parse};
use selfdump::proto::DumpOptions;
use selfdump::server::internals::{
    Credentials, DumpHooks, DumpSpec, FrozenVerdict, Worker, kdat::UNPRIVILEGED_DIR,
};
use selfdump::server::{Criu, Policy, Server};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

/// Medians of one size, in ms: time the app waits in `checkpoint()`.
pub struct Costs {
    pub root_warm: f64,
    pub root_cold: f64,
    pub non_root: f64,
    pub frozen_root_warm: f64,
    pub frozen_non_root: f64,
}

/// A directory for this part that uid 65534 can traverse, on a tmpfs (no
/// disk writeback in the numbers).
pub fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-bench-nonroot")
        .tempdir_in("/dev/shm")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// A server allowing nobody on `socket`, with `warm` root workers.
pub fn serve(criu: &Criu, socket: &Path, warm: usize) {
    let server = Server::builder()
        .criu(criu.clone())
        .policy(Policy {
            allow_uids: [NOBODY].into_iter().collect(),
            ..Policy::default()
        })
        .warm_workers(warm)
        .max_dumps(16)
        .max_dumps_per_uid(16)
        .socket_mode(0o666)
        .bind(socket)
        .unwrap();
    std::thread::spawn(move || async_io::block_on(server.run()));
}

/// The app stepping through `reps` checkpoints of `mib` MiB into `images`
/// (made `uid`'s) via `socket`, as `uid`.
fn stepping_app(
    app: &Path,
    socket: &Path,
    images: &Path,
    mib: usize,
    reps: usize,
    uid: u32,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    std::fs::create_dir_all(images).unwrap();
    std::os::unix::fs::chown(images, Some(uid), Some(uid)).unwrap();
    let mut child = Command::new(app)
        .args([
            "--step",
            "--mib",
            &mib.to_string(),
            "--checkpoints",
            &reps.to_string(),
        ])
        .arg("--images")
        .arg(images)
        .arg("--socket")
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.starts_with("ready"), "{ready}");
    (child, lines)
}

/// Root (warm server), root (cold server) and nobody checkpoint the same
/// program of `mib` MiB in turns, `reps` times each.
pub fn through_the_service(
    app: &Path,
    sockets: (&Path, &Path),
    work: &Path,
    mib: usize,
    reps: usize,
) -> Costs {
    let (warm, cold) = sockets;
    let runs = [
        (warm, 0, "root-warm"),
        (cold, 0, "root-cold"),
        (warm, NOBODY, "nobody"),
    ];
    let mut apps: Vec<_> = runs
        .iter()
        .map(|&(socket, uid, name)| stepping_app(app, socket, &work.join(name), mib, reps, uid))
        .collect();
    let mut samples: [Vec<Sample>; 3] = Default::default();
    for i in 0..reps {
        for (k, (child, lines)) in apps.iter_mut().enumerate() {
            child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
            samples[k].push(parse(&lines.next().expect("a checkpoint line").unwrap()));
            let _ = std::fs::remove_dir_all(work.join(runs[k].2).join(i.to_string()));
        }
    }
    for (mut child, _) in apps {
        assert!(child.wait().unwrap().success());
    }
    let wall = |s: &Sample| s.wall_ms;
    let frozen = |s: &Sample| s.frozen_ms;
    Costs {
        root_warm: m(&samples[0], wall),
        root_cold: m(&samples[1], wall),
        non_root: m(&samples[2], wall),
        frozen_root_warm: m(&samples[0], frozen),
        frozen_non_root: m(&samples[2], frozen),
    }
}

/// Medians in ms of starting `criu swrk` (the call: fork, ids, exec) as
/// root and as nobody, and of spawning `/bin/true` by `fork` (as any
/// command with a `pre_exec` step is) and by `posix_spawn` (a `vfork`: no
/// copy of this process's page tables), `reps` times each in turns.
pub fn spawn_costs(criu: &Criu, reps: usize) -> [f64; 4] {
    let nobody = Credentials {
        uid: NOBODY,
        gid: NOBODY,
        groups: Vec::new(),
    };
    let mut samples: [Vec<f64>; 4] = Default::default();
    let time = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        f();
        ms(started.elapsed())
    };
    let true_by_fork = |fork: bool| {
        let mut cmd = Command::new("/bin/true");
        if fork {
            // SAFETY: the closure does nothing
            unsafe { cmd.pre_exec(|| Ok(())) };
        }
        cmd.spawn().unwrap()
    };
    for _ in 0..reps {
        let mut workers = Vec::new();
        samples[0].push(time(&mut || workers.push(Worker::start(criu).unwrap())));
        samples[1].push(time(&mut || {
            workers.push(Worker::start_as(criu, &nobody, None, None).unwrap())
        }));
        let mut children = Vec::new();
        samples[2].push(time(&mut || children.push(true_by_fork(true))));
        samples[3].push(time(&mut || children.push(true_by_fork(false))));
        drop(workers);
        for mut child in children {
            let _ = child.wait();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.map(median)
}

struct NoHooks;

impl DumpHooks for NoHooks {
    async fn frozen(&mut self) -> FrozenVerdict {
        FrozenVerdict::Proceed
    }
    async fn images_written(&mut self) -> FrozenVerdict {
        FrozenVerdict::Proceed
    }
}

/// Medians in ms, request to result, of dumps of an idle 4 MiB app of
/// nobody's by a CRIU started as nobody, with the unprivileged cache and
/// without, in turns.
pub fn unprivileged_cache(criu: &Criu, app: &Path, work: &Path, reps: usize) -> (f64, f64) {
    let mut idle = Command::new(app)
        .args(["--idle", "--mib", "4"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(idle.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let nobody = Credentials {
        uid: NOBODY,
        gid: NOBODY,
        groups: Vec::new(),
    };
    let dump = |runtime_dir: Option<&Path>| {
        let dir = nobodys(work.join("cache"));
        let dir_fd = std::fs::File::open(&dir).unwrap();
        let spec = DumpSpec {
            pid: idle.id() as i32,
            images_dir: dir_fd.as_fd(),
            options: DumpOptions::default(),
            shell_job: true,
        };
        let started = Instant::now();
        let worker = Worker::start_as(criu, &nobody, Some(dir_fd.as_fd()), runtime_dir).unwrap();
        async_io::block_on(worker.dump(&spec, Duration::from_secs(60), &mut NoHooks))
            .expect("dump");
        ms(started.elapsed())
    };
    let cache = Some(Path::new(UNPRIVILEGED_DIR));
    dump(cache);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        with.push(dump(cache));
        without.push(dump(None));
    }
    let _ = idle.kill();
    let _ = idle.wait();
    (median(with), median(without))
}

/// `dir`, fresh, nobody's.
fn nobodys(dir: PathBuf) -> PathBuf {
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}
