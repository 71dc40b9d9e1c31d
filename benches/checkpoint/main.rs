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
//!    (`non_root.rs`).
//!
//! Needs root and CRIU >= 4 (scripts/install-criu.sh). Prints markdown
//! sections (`support/report.rs`; `scripts/bench.sh` makes BENCHMARKS.md of
//! them) and writes `target/selfdump-bench/freeze-time.svg`. Run: `cargo
//! bench --bench checkpoint`; `SELFDUMP_BENCH_ONLY=e2e,freeze` runs only
//! those parts (e2e, workers, freeze, concurrency, signing, nonroot);
//! `SELFDUMP_BENCH_QUICK=1` runs fewer rounds and small sizes only.

#[path = "../support/report.rs"]
mod report;
#[path = "../../tests/support/skip.rs"]
mod skip;

use report::{Report, ms as fmt_ms, ratio};
use selfdump::server::internals::kdat;
use selfdump::server::{Criu, Server, check::find_criu};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod non_root;
mod plot;
mod workers;

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
    let parts: [(&str, Part); 6] = [
        ("e2e", end_to_end),
        ("workers", warm_workers),
        ("freeze", freeze),
        ("concurrency", concurrency),
        ("signing", signing),
        ("nonroot", least_privilege),
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

/// Part 1, end to end, a 4 MiB process.
fn end_to_end(b: &Bench, report: &mut Report) {
    let _ = std::fs::remove_file(kdat::KDAT_FILE);
    let (plain_cold, sd_cold) = interleaved(&b.criu, &b.app, &b.socket, &b.work, 4, b.reps);
    let (plain_warm, sd_warm) =
        b.with_cache(|| interleaved(&b.criu, &b.app, &b.socket, &b.work, 4, b.reps));
    report.section(
        "End to end: `checkpoint().await` against `criu dump` by hand",
        &format!(
            "`benches/checkpoint` (part `e2e`). A 4 MiB process; selfdump's time is the \
             `checkpoint()` call as the app sees it (connect, checks, CRIU, images handed \
             over and synced, result query); plain CRIU's is the wall time of `criu dump \
             --leave-running --shell-job -t PID -D DIR`. {} rounds, plain and selfdump in \
             turns, median; first without CRIU's kernel-feature cache (`/run/criu.kdat` \
             removed: every CRIU probes the kernel, as plain CRIU does on these machines, \
             whose `/run` is not a tmpfs), then with it.",
            b.reps
        ),
    );
    let wall = |s: &Sample| s.wall_ms;
    let sync = |s: &Sample| s.sync_ms;
    report.table(
        &["", "no kernel-feature cache", "with cache"],
        &[
            vec![
                "plain `criu dump`".into(),
                fmt_ms(m(&plain_cold, wall)),
                fmt_ms(m(&plain_warm, wall)),
            ],
            vec![
                "selfdump `checkpoint()`".into(),
                fmt_ms(m(&sd_cold, wall)),
                fmt_ms(m(&sd_warm, wall)),
            ],
            vec![
                "of which `syncfs`".into(),
                fmt_ms(m(&sd_cold, sync)),
                fmt_ms(m(&sd_warm, sync)),
            ],
            vec![
                "ratio selfdump / plain".into(),
                ratio(m(&sd_cold, wall) / m(&plain_cold, wall)),
                ratio(m(&sd_warm, wall) / m(&plain_warm, wall)),
            ],
        ],
    );
    let same_cache = m(&sd_warm, wall) / m(&plain_warm, wall);
    report.target(
        "selfdump / plain, both with the cache, at most 1.0",
        same_cache <= 1.0,
        &ratio(same_cache),
    );
    report.para(
        "selfdump reports success only once the images are on disk (`syncfs`); plain CRIU \
         leaves them in the page cache.",
    );
}

/// Part 2, warm workers: does a `criu swrk` started ahead of time help?
fn warm_workers(b: &Bench, report: &mut Report) {
    let longest = if b.quick {
        None
    } else {
        Some(Duration::from_secs(10))
    };
    let numbers = b.with_cache(|| workers::measure(&b.criu, &b.app, &b.work, b.reps, longest));
    report.section(
        "Warm `criu swrk` workers",
        &format!(
            "`benches/checkpoint/workers.rs` (part `workers`). The same 4 MiB dump through \
             the engine, timed from the moment the dump is wanted to CRIU's answer, with the \
             worker started on demand or ahead of time, in turns; {} rounds (the 10 s variant \
             every third round{}), median; CRIU's frozen time from its statistics.",
            b.reps,
            if longest.is_none() {
                ": not in the quick run"
            } else {
                ""
            }
        ),
    );
    let rows: Vec<Vec<String>> = [
        ("on demand", numbers.on_demand),
        ("50 ms ahead", numbers.ahead_50ms),
        ("1 s ahead (idle in a pool)", numbers.ahead_1s),
        ("10 s ahead (idle in a pool)", numbers.ahead_10s),
    ]
    .into_iter()
    .map(|(name, (total, frozen))| {
        vec![
            name.into(),
            fmt_ms(total),
            ratio(total / numbers.on_demand.0),
            fmt_ms(frozen),
        ]
    })
    .collect();
    report.table(
        &[
            "worker started",
            "to result",
            "ratio to on demand",
            "CRIU frozen",
        ],
        &rows,
    );
    report.para(
        "The service keeps one worker started (`Builder::warm_workers`, `selfdump serve \
         --warm-workers N`, default 1) if a waiting worker saves time here: each dump takes \
         the waiting one, and another is started once the dump has answered.",
    );
}

/// Part 3, freeze time against memory size (both with the cache).
fn freeze(b: &Bench, report: &mut Report) {
    let sizes: &[usize] = if b.quick { &[64] } else { &[64, 256, 1024] };
    let reps = if b.quick { 2 } else { 5 };
    // Images on a tmpfs for the comparison, so that the disk's writeback
    // (which throttles writers once GBs are dirty) does not drown the
    // service's share; then selfdump once more onto the disk for the
    // throughput and what syncfs costs there.
    let shm = tempfile::Builder::new()
        .prefix("selfdump-bench")
        .tempdir_in("/dev/shm")
        .unwrap();
    report.section(
        "Freeze: how long the app is blocked",
        &format!(
            "`benches/checkpoint` (part `freeze`). Memory touched twice before timing; \
             {reps} dumps per size, plain CRIU and selfdump in turns onto a tmpfs \
             (`/dev/shm`, so that the disk's writeback throttling does not drown the \
             difference), median; then selfdump {reps} times onto the disk (the last two \
             columns). \"Service share\" is measured, not derived: the time CRIU waited for \
             the service while the tree was frozen (from each notification received to its \
             answer sent: the frozen-tree check, the last frame to the caller, closing its \
             connection), the longest of the dumps. \"App blocked\" is measured in the app \
             (its ticker thread's view of the freeze)."
        ),
    );
    let mut rows = Vec::new();
    let (mut points, mut shares) = (Vec::new(), Vec::new());
    b.with_cache(|| {
        for &mib in sizes {
            let (plain, sd) = interleaved(&b.criu, &b.app, &b.socket, shm.path(), mib, reps);
            let disk = selfdump_dumps(&b.app, &b.socket, &b.work, mib, reps);
            let _ = std::fs::remove_dir_all(b.work.join("selfdump"));
            let (pf, sf, sb) = (
                m(&plain, |s| s.frozen_ms),
                m(&sd, |s| s.frozen_ms),
                m(&sd, |s| s.blocked_ms),
            );
            let share = sd.iter().map(|s| s.service_frozen_ms).fold(0.0, f64::max);
            let gbps = m(&sd, |s| s.bytes / (s.frozen_ms / 1000.0) / 1e9);
            rows.push(vec![
                mib.to_string(),
                fmt_ms(pf),
                fmt_ms(sf),
                ratio(sf / pf),
                fmt_ms(sb),
                format!("{share:.2}"),
                format!("{gbps:.2}"),
                fmt_ms(m(&disk, |s| s.frozen_ms)),
                fmt_ms(m(&disk, |s| s.sync_ms)),
            ]);
            points.push((mib, pf, sf, sb));
            shares.push(share);
        }
    });
    report.table(
        &[
            "MiB",
            "plain CRIU frozen ms",
            "selfdump frozen ms",
            "ratio",
            "app blocked ms",
            "service share (max) ms",
            "GB/s (tmpfs)",
            "frozen, to disk, ms",
            "`syncfs` after, ms",
        ],
        &rows,
    );
    let svg =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/selfdump-bench/freeze-time.svg");
    std::fs::create_dir_all(svg.parent().unwrap()).unwrap();
    std::fs::write(&svg, plot::freeze_svg(&points)).unwrap();
    report.para("![freeze time against memory size](docs/freeze-time.svg)");
    let most = shares.iter().copied().fold(0.0, f64::max);
    report.target(
        "the service adds at most 5 ms to the freeze at every size",
        most <= 5.0,
        &format!("its share is at most {most:.2} ms"),
    );
}

/// Part 4, concurrency.
fn concurrency(b: &Bench, report: &mut Report) {
    let ns: &[usize] = if b.quick { &[1, 2] } else { &[1, 2, 4, 8] };
    report.section(
        "Concurrency: N processes checkpointing at once (4 MiB each)",
        "`benches/checkpoint` (part `concurrency`). N apps ask at the same moment; \"total\" \
         is until the last is done. The bench's service allows 16 dumps at once (the \
         default limits are 8, and 4 per uid); only the first of N simultaneous dumps finds \
         a worker waiting (one is kept), the others start their own CRIU.",
    );
    let rows: Vec<Vec<String>> = b.with_cache(|| {
        ns.iter()
            .map(|&n| {
                let (total, samples) = concurrent(&b.app, &b.socket, &b.work, n);
                let frozen: Vec<f64> = samples.iter().map(|s| s.frozen_ms).collect();
                let blocked: Vec<f64> = samples.iter().map(|s| s.blocked_ms).collect();
                vec![
                    n.to_string(),
                    fmt_ms(total),
                    spread(&frozen),
                    spread(&blocked),
                ]
            })
            .collect()
    });
    report.table(
        &[
            "N",
            "total ms",
            "frozen min / median / max",
            "blocked min / median / max",
        ],
        &rows,
    );
}

/// Part 5, signing: each checkpoint's images hashed again, in turns
/// with the checkpoints.
fn signing(b: &Bench, report: &mut Report) {
    let mib = if b.quick { 64 } else { 1024 };
    let reps = if b.quick { 2 } else { 3 };
    let dir = b.work.join("signing");
    let (mut checkpoints, mut hashes, mut bytes) = (Vec::new(), Vec::new(), 0u64);
    b.with_cache(|| {
        for _ in 0..reps {
            let disk = selfdump_dumps(&b.app, &b.socket, &dir, mib, 1);
            checkpoints.push(disk[0].wall_ms);
            let (took, hashed) = hash_images(&dir.join("selfdump/0/latest"));
            hashes.push(took);
            bytes = hashed;
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
    let (checkpoint, hash) = (median(checkpoints), median(hashes));
    report.section(
        "Signing: what hashing the images costs a checkpoint",
        &format!(
            "`benches/checkpoint` (part `signing`). {reps} checkpoints of {mib} MiB onto \
             ext4 through the service (signing included), each followed, in turns, by \
             hashing its images again in this process the way the service hashes them \
             (BLAKE3; page files over all cores from a mapping, from the page cache CRIU \
             just filled), median. Both are measured; the ratio is hashing over the whole \
             checkpoint, not a difference of two runs. (The service has no switch to skip \
             signing, so a checkpoint without it is not measured.)"
        ),
    );
    let share = hash / checkpoint;
    report.table(
        &[
            "checkpoint (signed) ms",
            "hashing its images ms",
            "bytes",
            "GB/s",
            "hashing / checkpoint",
        ],
        &[vec![
            fmt_ms(checkpoint),
            fmt_ms(hash),
            bytes.to_string(),
            format!("{:.2}", bytes as f64 / (hash / 1000.0) / 1e9),
            format!("{:.1} %", share * 100.0),
        ]],
    );
    report.target(
        "hashing at most 25 % of a checkpoint",
        share <= 0.25,
        &format!("{:.1} %", share * 100.0),
    );
}

/// Hashes every file in `dir` as the service does: (ms, bytes).
fn hash_images(dir: &Path) -> (f64, u64) {
    let started = Instant::now();
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let file: std::os::fd::OwnedFd = std::fs::File::open(entry.path()).unwrap().into();
        let size = entry.metadata().unwrap().len();
        selfdump::server::manifest::hash_file(&file, size).unwrap();
        bytes += size;
    }
    (ms(started.elapsed()), bytes)
}

/// Part 6, least privilege (see `non_root.rs`).
fn least_privilege(b: &Bench, report: &mut Report) {
    let work = non_root::work_dir();
    let (warm, cold) = (work.path().join("warm.sock"), work.path().join("cold.sock"));
    non_root::serve(&b.criu, &warm, 1);
    non_root::serve(&b.criu, &cold, 0);
    let sizes = [(1, b.reps), (256, if b.quick { 2 } else { 5 })];
    let (rows, parts) = b.with_cache(|| {
        let rows: Vec<Vec<String>> = sizes
            .iter()
            .map(|&(mib, n)| {
                let c = non_root::through_the_service(&b.app, (&warm, &cold), work.path(), mib, n);
                vec![
                    mib.to_string(),
                    fmt_ms(c.root_warm),
                    fmt_ms(c.root_cold),
                    fmt_ms(c.non_root),
                    ratio(c.non_root / c.root_warm),
                    ratio(c.non_root / c.root_cold),
                    format!(
                        "{} / {}",
                        fmt_ms(c.frozen_root_warm),
                        fmt_ms(c.frozen_non_root)
                    ),
                ]
            })
            .collect();
        let spawn = non_root::spawn_costs(&b.criu, b.reps);
        let cache = non_root::unprivileged_cache(&b.criu, &b.app, work.path(), b.reps);
        (rows, (spawn, cache))
    });
    report.section(
        "Least privilege: a non-root checkpoint against a root one",
        &format!(
            "`benches/checkpoint/non_root.rs` (part `nonroot`). The same program (memory \
             touched twice) checkpoints itself through the service as root and as uid 65534, \
             in turns, one checkpoint each per round ({} rounds at 1 MiB, {} at 256 MiB), \
             images on tmpfs; median time in `checkpoint()` as the app sees it. Root's CRIU \
             comes from a warm worker (the service's default) or is started on demand (a \
             second service with `warm_workers(0)`); the non-root caller's CRIU runs as the \
             caller and is always started for its dump (its uid is known only when it asks).",
            sizes[0].1, sizes[1].1
        ),
    );
    report.table(
        &[
            "MiB",
            "root, warm worker",
            "root, started on demand",
            "non-root",
            "non-root / root (warm)",
            "non-root / root (on demand)",
            "CRIU frozen, root / non-root",
        ],
        &rows,
    );
    let ([root_spawn, user_spawn, by_fork, by_vfork], (with, without)) = parts;
    report.para(&format!(
        "- Starting `criu swrk` (the call: fork, ids, exec) took {root_spawn:.2} ms as root and \
         {user_spawn:.2} ms as the caller; in the same process `/bin/true` took {by_fork:.2} ms \
         by `fork` and {by_vfork:.2} ms by `posix_spawn`. A launcher forked ahead, taking the \
         ids at the last moment, could save the fork and the switch of ids, not the exec, \
         CRIU's loading and its start-up, which need the ids first.\n\
         - The unprivileged kernel-feature cache: a 4 MiB dump by a CRIU started as uid \
         65534 took {with:.1} ms with it and {without:.1} ms without (CRIU then probes the \
         kernel every time)."
    ));
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
