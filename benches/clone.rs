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

use selfdump::server::check::find_criu;
use selfdump::server::copies::{Copies, VerifiedImages, restore_copies};
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::RestoreSettings;
use selfdump::server::{Criu, Server};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        println!("clone bench: SKIPPED, needs root (restores need it)");
        return;
    }
    let quick = std::env::var_os("SELFDUMP_BENCH_QUICK").is_some();
    let reps = if quick { 3 } else { 9 };
    let criu = Criu {
        path: find_criu(),
        log_level: 4, // selfdump's default; plain CRIU gets the same
    };
    let app = build_app();
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
    println!(
        "clone bench: {} rounds, plain criu restore and selfdump in turns, medians (p90); \
         lazy rows {}",
        reps,
        if lazy_ok {
            "on"
        } else {
            "SKIPPED (no userfaultfd)"
        }
    );
    let only = std::env::var("SELFDUMP_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);

    let sizes: &[(&str, usize)] = if quick {
        &[("tiny", 0), ("64 MiB", 64), ("256 MiB", 256)]
    } else {
        &[("tiny", 0), ("256 MiB", 256), ("1 GiB", 1024)]
    };
    let bench = Bench {
        criu: &criu,
        settings: &settings,
        app: &app,
        socket: &socket,
        work: work.path(),
    };
    if run("first") {
        println!("\n1. time to first instruction (restore begins -> copy's monotonic stamp), ms");
        println!(
            "{:<9} {:<5} {:>16} {:>16} {:>6} {:>16} {:>6} {:>10} {:>10} {:>12}",
            "size",
            "mode",
            "plain criu",
            "selfdump",
            "ratio",
            "verified once",
            "ratio",
            "sd verify",
            "re-check",
            "criu in-log"
        );
        for &(name, mb) in sizes {
            let image = bench.image(name, mb);
            let once = VerifiedImages::open(&settings, &image.dir).expect("verify the images");
            bench.verified(&once, &image, 1, false); // its first round hashes
            for lazy in [false, true] {
                if lazy && !lazy_ok {
                    continue;
                }
                let mut plain = Vec::new();
                let mut ours = Vec::new();
                let mut reused = Vec::new();
                let mut verify = Vec::new();
                let mut recheck = Vec::new();
                let mut inlog = Vec::new();
                for rep in 0..reps {
                    // rotate who goes first
                    for turn in 0..3 {
                        match (turn + rep) % 3 {
                            0 => {
                                let r = bench.plain(&image, 1, lazy);
                                plain.push(r.last);
                                inlog.push(r.criu_log);
                            }
                            1 => {
                                let r = bench.selfdump(&image, 1, lazy);
                                ours.push(r.last);
                                verify.push(r.verify);
                            }
                            _ => {
                                let r = bench.verified(&once, &image, 1, lazy);
                                reused.push(r.last);
                                recheck.push(r.verify);
                            }
                        }
                    }
                }
                let (p, o, v) = (median(&mut plain), median(&mut ours), median(&mut reused));
                println!(
                    "{:<9} {:<5} {:>16} {:>16} {:>6.2} {:>16} {:>6.2} {:>10.1} {:>10.2} {:>12.1}",
                    name,
                    if lazy { "lazy" } else { "full" },
                    format!("{:.1} ({:.1})", p, p90(&mut plain)),
                    format!("{:.1} ({:.1})", o, p90(&mut ours)),
                    o / p,
                    format!("{:.1} ({:.1})", v, p90(&mut reused)),
                    v / p,
                    median(&mut verify),
                    median(&mut recheck),
                    median(&mut inlog),
                );
            }
        }
    }
    if run("bounds") {
        // What a tiny restore's time is made of, outside CRIU's own log.
        let mut exec = Vec::new();
        for _ in 0..reps.max(5) {
            let t = Instant::now();
            let _ = Command::new(&criu.path)
                .arg("--version")
                .stdout(Stdio::null())
                .status();
            exec.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "\n3. bounds: exec of `criu --version` {:.1} ms (median); CRIU's kernel-feature \
             cache {} {}",
            median(&mut exec),
            KDAT_FILE,
            if Path::new(KDAT_FILE).exists() {
                "present (the CLI reads it)"
            } else {
                "absent (every CLI run probes the kernel)"
            }
        );
    }
    if run("copies") {
        let (name, mb) = ("256 MiB", 256);
        let image = bench.image(name, mb);
        let ns: &[u32] = if quick {
            &[1, 2, 4, 8]
        } else {
            &[1, 2, 4, 8, 16]
        };
        println!(
            "\n2. N copies of one {name} image started at once: until the last runs, ms \
             (copies/s)"
        );
        println!(
            "{:<5} {:>4} {:>22} {:>22} {:>6} {:>22} {:>6} {:>10}",
            "mode", "N", "plain criu", "selfdump", "ratio", "verified once", "ratio", "sd verify"
        );
        let once = VerifiedImages::open(&settings, &image.dir).expect("verify the images");
        bench.verified(&once, &image, 1, false); // its first round hashes
        for lazy in [false, true] {
            if lazy && !lazy_ok {
                continue;
            }
            for &n in ns {
                let mut plain = Vec::new();
                let mut ours = Vec::new();
                let mut reused = Vec::new();
                let mut verify = Vec::new();
                let reps = if n >= 8 { reps.min(5) } else { reps };
                for rep in 0..reps {
                    for turn in 0..3 {
                        match (turn + rep) % 3 {
                            0 => plain.push(bench.plain(&image, n, lazy).last),
                            1 => {
                                let r = bench.selfdump(&image, n, lazy);
                                ours.push(r.last);
                                verify.push(r.verify);
                            }
                            _ => reused.push(bench.verified(&once, &image, n, lazy).last),
                        }
                    }
                }
                let (p, o, v) = (median(&mut plain), median(&mut ours), median(&mut reused));
                println!(
                    "{:<5} {:>4} {:>22} {:>22} {:>6.2} {:>22} {:>6.2} {:>10.1}",
                    if lazy { "lazy" } else { "full" },
                    n,
                    format!("{p:.0} ({:.0}/s)", n as f64 * 1000.0 / p),
                    format!("{o:.0} ({:.0}/s)", n as f64 * 1000.0 / o),
                    o / p,
                    format!("{v:.0} ({:.0}/s)", n as f64 * 1000.0 / v),
                    v / p,
                    median(&mut verify),
                );
            }
        }
    }
}

struct Bench<'a> {
    criu: &'a Criu,
    settings: &'a RestoreSettings,
    app: &'a Path,
    socket: &'a Path,
    work: &'a Path,
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
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

fn build_app() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--example", "clone_stamp"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("release/examples/clone_stamp")
}
