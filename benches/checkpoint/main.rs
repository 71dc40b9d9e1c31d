//! What a checkpoint costs through selfdump against plain CRIU, measured in
//! the same run on the same machine, in turns:
//!
//! 1. end to end, a small process: `checkpoint().await` (call time seen by
//!    the app) against `criu dump --leave-running` run by hand (wall time of
//!    the command), with and without CRIU's kernel-feature cache;
//! 2. `criu swrk` workers started ahead of time against on demand
//!    (`workers.rs`);
//! 3. freeze time for 64 MiB, 256 MiB and 1 GiB of touched memory: how long
//!    the app is blocked and CRIU's own frozen time, against plain CRIU's
//!    frozen time, plus dump throughput and what `syncfs` costs;
//! 4. concurrency: 1, 2, 4 and 8 processes checkpointing at once;
//! 5. signing: the images of each checkpoint hashed again, in turns with
//!    the checkpoints;
//! 6. least privilege: a non-root checkpoint (CRIU runs as the caller)
//!    against a root one of the same program, tiny and 256 MiB
//!    (`non_root.rs`);
//! 7. the verified paths of issue 19 against plain CRIU (`speed.rs`): a
//!    restore of 2 MiB and 256 MiB, a tiny checkpoint against plain CRIU
//!    and a `sync -f`, 8 checkpoints at once against as many plain dumps.
//!
//! Needs root and CRIU >= 4 (scripts/install-criu.sh). Prints markdown
//! sections (`support/report.rs`; `scripts/bench.sh` makes BENCHMARKS.md of
//! them) and writes `target/selfdump-bench/freeze-time.svg`. Run: `cargo
//! bench --features cli --bench checkpoint`; `SELFDUMP_BENCH_ONLY=e2e,freeze` runs only
//! those parts (e2e, workers, freeze, concurrency, signing, nonroot, restore,
//! tiny, concurrent); `SELFDUMP_BENCH_LOG=selfdump=debug` prints the
//! service's step timings on stderr;
//! `SELFDUMP_BENCH_QUICK=1` runs fewer rounds and small sizes only.

#[path = "../support/report.rs"]
mod report;
#[path = "../../tests/support/skip.rs"]
mod skip;

use report::Report;
use selfdump::server::internals::kdat;
use selfdump::server::{Criu, Server, check::find_criu};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod non_root;
mod parts;
mod plot;
mod speed;
mod steps;
mod workers;

use parts::{concurrency, end_to_end, freeze, least_privilege, signing, warm_workers};

/// One part of the bench: it measures and adds its section.
type Part = fn(&Bench, &mut Report);

/// What every part measures with.
struct Bench {
    criu: Criu,
    app: PathBuf,
    socket: PathBuf,
    work: PathBuf,
    reps: usize,
    quick: bool,
    /// Whether CRIU's cache was there before the bench (then it stays).
    had_cache: bool,
}

impl Bench {
    /// Makes sure CRIU finds its cache for `f`, and puts things back after.
    fn with_cache<T>(&self, f: impl FnOnce() -> T) -> T {
        let cache = kdat::ensure_cache(&self.criu);
        let out = f();
        if !self.had_cache {
            kdat::remove_cache(&cache);
        }
        out
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("checkpoint: bench");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        return skip::skip(
            skip::Limit::NotRoot,
            "the checkpoint bench measures nothing: CRIU dumps need root",
        );
    }
    // the service's own step timings: recorded for the breakdowns, and
    // with SELFDUMP_BENCH_LOG printed on stderr
    steps::install();
    let quick = report::quick();
    let criu = Criu {
        path: find_criu(),
        log_level: 4,
    };
    let work = tempfile::Builder::new()
        .prefix("selfdump-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let socket = work.path().join("selfdump.sock");
    let server = Server::builder()
        .criu(criu.clone())
        .max_dumps(16)
        .max_dumps_per_uid(16)
        .bind(&socket)
        .unwrap();
    std::thread::spawn(move || async_io::block_on(server.run()));
    let bench = Bench {
        app: report::example("bench_app"),
        socket,
        work: work.path().to_path_buf(),
        reps: if quick { 3 } else { 15 },
        quick,
        had_cache: Path::new(kdat::KDAT_FILE).exists(),
        criu,
    };
    let only = std::env::var("SELFDUMP_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let mut report = Report::new();
    let parts: [(&str, Part); 9] = [
        ("e2e", end_to_end),
        ("workers", warm_workers),
        ("freeze", freeze),
        ("concurrency", concurrency),
        ("signing", signing),
        ("nonroot", least_privilege),
        ("restore", speed::restore),
        ("tiny", speed::tiny),
        ("concurrent", speed::concurrent),
    ];
    for (name, part) in parts {
        if run(name) {
            part(&bench, &mut report);
        }
    }
    if bench.had_cache {
        let _ = kdat::ensure_cache(&bench.criu);
    }
    report.finish();
}

#[derive(Debug, Clone, Default)]
struct Sample {
    wall_ms: f64,
    frozen_ms: f64,
    blocked_ms: f64,
    service_frozen_ms: f64,
    sync_ms: f64,
    bytes: f64,
}

/// Starts the app and waits for its "ready" line.
fn start_app(app: &Path, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(app)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "{line}");
    (child, out)
}

fn images(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `criu dump --leave-running` run by hand, `reps` times on one idle app.
/// One `criu dump --leave-running` of `pid` run by hand into `dir`.
fn plain_dump(criu: &Criu, pid: &str, dir: &Path) -> Sample {
    // no earlier dump's dirty pages competing with this one
    rustix::fs::sync();
    let started = Instant::now();
    let status = Command::new(&criu.path)
        .args([
            "dump",
            "--leave-running",
            "--shell-job",
            "-t",
            pid,
            "-o",
            "dump.log",
            "-v4",
            "-D",
        ])
        .arg(dir)
        .status()
        .unwrap();
    let wall_ms = ms(started.elapsed());
    assert!(
        status.success(),
        "plain criu dump failed, see {}",
        dir.join("dump.log").display()
    );
    Sample {
        wall_ms,
        frozen_ms: criu_frozen_ms(dir),
        ..Sample::default()
    }
}

/// Plain CRIU and selfdump in turns, one dump each per round, on two apps
/// of the same size alive side by side, so that drifts of this VM's speed
/// hit both alike. Returns (plain, selfdump) samples.
fn interleaved(
    criu: &Criu,
    app: &Path,
    socket: &Path,
    work: &Path,
    mib: usize,
    reps: usize,
) -> (Vec<Sample>, Vec<Sample>) {
    let size = mib.to_string();
    let (mut idle, _idle_out) = start_app(app, &["--idle", "--mib", &size]);
    let pid = idle.id().to_string();
    let sd_dir = images(work, "selfdump");
    let (mut sd, sd_out) = start_app(
        app,
        &[
            "--step",
            "--mib",
            &size,
            "--checkpoints",
            &reps.to_string(),
            "--images",
            sd_dir.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
    );
    let mut sd_lines = sd_out.lines();
    let mut plain = Vec::new();
    let mut selfdump = Vec::new();
    for i in 0..reps {
        let plain_dir = images(work, &format!("plain/{i}"));
        plain.push(plain_dump(criu, &pid, &plain_dir));
        // GiBs of images pile up fast on a tmpfs: keep one at a time
        let _ = std::fs::remove_dir_all(&plain_dir);
        rustix::fs::sync();
        sd.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        selfdump.push(parse(&sd_lines.next().expect("a checkpoint line").unwrap()));
        let _ = std::fs::remove_dir_all(sd_dir.join(i.to_string()));
    }
    assert!(sd.wait().unwrap().success());
    let _ = idle.kill();
    let _ = idle.wait();
    let _ = std::fs::remove_dir_all(work.join("plain"));
    let _ = std::fs::remove_dir_all(work.join("selfdump"));
    (plain, selfdump)
}

/// CRIU's frozen time from its `stats-dump` image.
fn criu_frozen_ms(dir: &Path) -> f64 {
    let file = std::fs::File::open(dir).unwrap();
    let image = selfdump::server::images::read_image(&file, "stats-dump").expect("stats-dump");
    let entry = selfdump::server::images::entries(&image).next().unwrap();
    use prost::Message;
    let stats = selfdump::server::internals::rpc::StatsEntry::decode(entry).unwrap();
    stats.dump.unwrap().frozen_time as f64 / 1000.0
}

/// The app checkpoints itself `reps` times through the service.
fn selfdump_dumps(app: &Path, socket: &Path, work: &Path, mib: usize, reps: usize) -> Vec<Sample> {
    let dir = images(work, "selfdump");
    rustix::fs::sync();
    let (mut child, out) = start_app(
        app,
        &[
            "--mib",
            &mib.to_string(),
            "--checkpoints",
            &reps.to_string(),
            "--images",
            dir.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
    );
    let samples = out.lines().map(|l| parse(&l.unwrap())).collect::<Vec<_>>();
    assert!(child.wait().unwrap().success());
    assert_eq!(samples.len(), reps);
    samples
}

fn parse(line: &str) -> Sample {
    assert!(
        line.starts_with("checkpoint ") && !line.contains("error"),
        "{line}"
    );
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            .parse()
            .unwrap()
    };
    Sample {
        wall_ms: field("call_us") / 1000.0,
        frozen_ms: field("frozen_us") / 1000.0,
        blocked_ms: field("blocked_us") / 1000.0,
        service_frozen_ms: field("service_frozen_us") / 1000.0,
        sync_ms: field("sync_us") / 1000.0,
        bytes: field("bytes"),
    }
}

/// `n` apps checkpoint at once; returns the wall time until all are done.
fn concurrent(app: &Path, socket: &Path, work: &Path, n: usize) -> (f64, Vec<Sample>) {
    let mut apps: Vec<_> = (0..n)
        .map(|i| {
            let dir = images(work, &format!("concurrent-{i}"));
            start_app(
                app,
                &[
                    "--wait-stdin",
                    "--mib",
                    "4",
                    "--images",
                    dir.to_str().unwrap(),
                    "--socket",
                    socket.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let started = Instant::now();
    for (child, _) in &mut apps {
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let samples: Vec<Sample> = apps
        .into_iter()
        .map(|(mut child, out)| {
            let sample = out.lines().map(|l| parse(&l.unwrap())).next().unwrap();
            child.wait().unwrap();
            sample
        })
        .collect();
    (ms(started.elapsed()), samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median of one measure over samples.
fn m(v: &[Sample], f: fn(&Sample) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.1}/{:.1}/{:.1} ms", s[0], s[s.len() / 2], s[s.len() - 1])
}
