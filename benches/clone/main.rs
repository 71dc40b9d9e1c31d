//! Clones from one image: `selfdump restore --copies` (the library call
//! behind it, [`restore_copies`]) against plain `criu restore` of the same
//! images, in turns, in the same run:
//!
//! "selfdump, verified once" is a harness's later rounds: one
//! [`VerifiedImages`] opened (hashed) before the rounds, off the clock,
//! then [`VerifiedImages::restore_copies`] per round, which re-checks the
//! verified set without hashing it.
//!
//! 1. time to first instruction: from just before the restore begins
//!    (verification included for selfdump) to the `CLOCK_MONOTONIC` stamp
//!    the copy writes when it runs again (`examples/clone_stamp.rs`), for a
//!    tiny process, 256 MiB and 1 GiB, full and lazy (`--lazy-pages`);
//! 2. copies per second: N = 1, 2, 4, 8, 16 copies of one 256 MiB image
//!    started at once, until the last one runs;
//! 3. what bounds them: verification, CRIU's own restore time (its log's
//!    timestamps) against its wall time (exec, start-up, kerndat).
//!
//! Needs root and CRIU >= 4 with userfaultfd for the lazy rows. Run:
//! `cargo bench --features cli --bench clone`. `SELFDUMP_BENCH_QUICK=1`: 3 rounds instead
//! of 9, 64 MiB instead of 1 GiB, N up to 8.

#[path = "../support/report.rs"]
mod report;
#[path = "../../tests/support/skip.rs"]
mod skip;

mod tables;

use report::Report;
use selfdump::server::check::find_criu;
use selfdump::server::copies::{Copies, VerifiedImages, restore_copies};
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::RestoreSettings;
use selfdump::server::{Criu, Server};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tables::{bounds, copies_at_once, first_instruction, intro};

/// CRIU's kernel-feature cache, which the CLI reads when present.
const KDAT_FILE: &str = "/run/criu.kdat";

fn now_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("clone: bench");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        return skip::skip(
            skip::Limit::NotRoot,
            "the clone bench measures nothing: restores need root",
        );
    }
    let quick = report::quick();
    let criu = Criu {
        path: find_criu(),
        log_level: 4, // selfdump's default; plain CRIU gets the same
    };
    let work = tempfile::Builder::new()
        .prefix("selfdump-clone-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let socket = work.path().join("selfdump.sock");
    let server = Server::builder().criu(criu.clone()).bind(&socket).unwrap();
    std::thread::spawn(move || async_io::block_on(server.run()));
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).expect("the service's signing key");
    let settings = RestoreSettings::new(criu.clone(), Some(key));
    let lazy_ok = lazy_supported(&criu);
    if !lazy_ok {
        skip::skip(
            skip::Limit::NoUffd,
            "`criu check --feature uffd-noncoop` fails: the clone bench's lazy rows are not measured",
        );
    }
    let bench = Bench {
        criu: &criu,
        settings: &settings,
        app: &report::example("clone_stamp"),
        socket: &socket,
        work: work.path(),
        reps: if quick { 3 } else { 9 },
        quick,
        modes: if lazy_ok { &[false, true] } else { &[false] },
    };
    let only = std::env::var("SELFDUMP_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let mut report = Report::new();
    intro(&bench, &mut report);
    if run("first") {
        first_instruction(&bench, &mut report);
    }
    if run("copies") {
        copies_at_once(&bench, &mut report);
    }
    if run("bounds") {
        bounds(&bench, &mut report);
    }
    report.finish();
}

struct Bench<'a> {
    criu: &'a Criu,
    settings: &'a RestoreSettings,
    app: &'a Path,
    socket: &'a Path,
    work: &'a Path,
    reps: usize,
    quick: bool,
    /// Full restores, and lazy ones where CRIU can.
    modes: &'a [bool],
}

/// An isolated image and the log its copies stamp into.
struct Image {
    dir: PathBuf,
    log: PathBuf,
}

/// One round: when the last copy ran (ms after the restore began), and the
/// parts measured on the way.
struct Round {
    last: f64,
    verify: f64,
    criu_log: f64,
}

impl Bench<'_> {
    /// Starts the app under `selfdump run` with `mb` MiB and waits for its
    /// checkpoint (it exits after it).
    fn image(&self, name: &str, mb: usize) -> Image {
        let dir = self.work.join(format!("img-{mb}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = self.work.join(format!("img-{mb}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_selfdump"))
            .args(["run", "--"])
            .arg(self.app)
            .arg("--images")
            .arg(&dir)
            .arg("--socket")
            .arg(self.socket)
            .args(["--mb", &mb.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success() && text.contains("checkpointed"),
            "{name}: {text}"
        );
        // the generation itself: plain `criu restore -D` reads it as it is
        Image {
            dir: dir.join("latest"),
            log,
        }
    }

    /// `restore_copies` (what `selfdump restore --copies N [--lazy]` runs).
    fn selfdump(&self, image: &Image, n: u32, lazy: bool) -> Round {
        let from = log_len(&image.log);
        let t0 = now_ns();
        let copies = restore_copies(self.settings, &image.dir, n, lazy).expect("restore_copies");
        self.end(copies, image, from, n, t0)
    }

    /// A later round of a harness's: `VerifiedImages::restore_copies` from
    /// images verified (hashed) before, off the clock.
    fn verified(&self, once: &VerifiedImages, image: &Image, n: u32, lazy: bool) -> Round {
        let from = log_len(&image.log);
        let t0 = now_ns();
        let copies = once
            .restore_copies(self.settings, n, lazy)
            .expect("VerifiedImages::restore_copies");
        self.end(copies, image, from, n, t0)
    }

    /// Waits for a round's copies to run, then (off the clock) ends them.
    fn end(&self, copies: Copies, image: &Image, from: usize, n: u32, t0: u128) -> Round {
        let last = wait_stamps(&image.log, from, n as usize, t0);
        let verify = copies.verify.as_secs_f64() * 1000.0;
        // off the clock: end the copies (lazy: their daemons end with them)
        for copy in &copies.copies {
            let _ = copy.signal(rustix::process::Signal::KILL);
        }
        copies.supervise();
        Round {
            last,
            verify,
            criu_log: 0.0,
        }
    }

    /// N plain `criu restore`s of the same images (with their page daemons
    /// first when lazy, as `restore_copies` does).
    fn plain(&self, image: &Image, n: u32, lazy: bool) -> Round {
        let from = log_len(&image.log);
        let works: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir_in(self.work).unwrap())
            .collect();
        let t0 = now_ns();
        let mut daemons = Vec::new();
        if lazy {
            for w in &works {
                daemons.push(self.daemon(&image.dir, w.path()));
            }
        }
        let mut restores = Vec::new();
        for (i, w) in works.iter().enumerate() {
            if let Some((_, ready)) = daemons.get_mut(i) {
                let mut byte = [0u8; 1];
                assert_eq!(ready.read(&mut byte).unwrap_or(0), 1, "lazy-pages ready");
            }
            let mut cmd = Command::new(&self.criu.path);
            cmd.arg("restore")
                .arg("-D")
                .arg(&image.dir)
                .arg("-W")
                .arg(w.path())
                .args(["--restore-detached", "--pidfile", "restore.pid"])
                .args(["-o", "restore.log"])
                .arg(format!("-v{}", self.criu.log_level))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if lazy {
                cmd.arg("--lazy-pages");
            }
            restores.push(cmd.spawn().unwrap());
        }
        for mut r in restores {
            assert!(r.wait().unwrap().success(), "plain criu restore failed");
        }
        let last = wait_stamps(&image.log, from, n as usize, t0);
        for w in &works {
            let pid = std::fs::read_to_string(w.path().join("restore.pid")).unwrap_or_default();
            if let Some(pid) = pid
                .trim()
                .parse()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        for (mut d, _) in daemons {
            let _ = d.wait();
        }
        let criu_log = works
            .first()
            .and_then(|w| std::fs::read_to_string(w.path().join("restore.log")).ok())
            .and_then(|log| last_timestamp(&log))
            .unwrap_or(f64::NAN);
        Round {
            last,
            verify: 0.0,
            criu_log,
        }
    }

    fn daemon(&self, images: &Path, work: &Path) -> (Child, std::fs::File) {
        let (ready, status) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let child = Command::new(&self.criu.path)
            .arg("lazy-pages")
            .arg("-D")
            .arg(images)
            .arg("-W")
            .arg(work)
            .args(["-o", "lazy-pages.log", "--status-fd", "1"])
            .arg(format!("-v{}", self.criu.log_level))
            .stdin(Stdio::null())
            .stdout(Stdio::from(status))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (child, std::fs::File::from(ready))
    }
}

fn log_len(log: &Path) -> usize {
    std::fs::read(log).map_or(0, |t| t.len())
}

/// Waits for `n` `stamp` lines past byte `from` of `log`; the latest, in ms
/// after `t0`.
fn wait_stamps(log: &Path, from: usize, n: usize, t0: u128) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned();
        let stamps: Vec<u128> = new
            .lines()
            .filter_map(|l| l.strip_prefix("stamp ")?.split(' ').next()?.parse().ok())
            .collect();
        if stamps.len() >= n {
            let last = stamps.into_iter().max().unwrap();
            if std::env::var_os("CLONE_BENCH_DEBUG").is_some() {
                eprintln!("t0 {t0} last stamp {last}");
            }
            return (last.saturating_sub(t0)) as f64 / 1e6;
        }
        assert!(Instant::now() < deadline, "copies did not run:\n{new}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// CRIU's log lines start with `(SS.UUUUUU)`, seconds since it started:
/// the last one is how long CRIU itself took, start-up after exec included.
fn last_timestamp(log: &str) -> Option<f64> {
    log.lines().rev().find_map(|l| {
        let t = l.strip_prefix('(')?.split(')').next()?;
        t.trim().parse::<f64>().ok().map(|s| s * 1000.0)
    })
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get((v.len() * 9).div_ceil(10).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

fn lazy_supported(criu: &Criu) -> bool {
    Command::new(&criu.path)
        .args(["check", "--feature", "uffd-noncoop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
