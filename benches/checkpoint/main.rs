//! What a checkpoint costs through selfdump against plain CRIU, measured in
//! the same run on the same machine:
//!
//! 1. end to end, a small process: `checkpoint().await` (call time seen by
//!    the app) against `criu dump --leave-running` run by hand (wall time of
//!    the command), with and without CRIU's kernel-feature cache;
//! 2. freeze time for 64 MiB, 256 MiB and 1 GiB of touched memory: how long
//!    the app is blocked and CRIU's own frozen time, against plain CRIU's
//!    frozen time, plus dump throughput and what `syncfs` costs;
//! 3. concurrency: 1, 2, 4 and 8 processes checkpointing at once;
//! 0. (first) whether `criu swrk` workers started ahead of time would help
//!    (`workers.rs`);
//! 5. least privilege: a non-root checkpoint (CRIU runs as the caller)
//!    against a root one of the same program, tiny and 256 MiB
//!    (`non_root.rs`).
//!
//! Needs root and CRIU >= 4 (scripts/install-criu.sh). Writes a summary to
//! `target/selfdump-bench/` (JSON lines and an SVG plot of freeze time
//! against memory size). Run: `cargo bench --bench checkpoint`.
//! `SELFDUMP_BENCH_QUICK=1` runs fewer repetitions and skips 1 GiB.

use selfdump::server::internals::kdat;
use selfdump::server::{Criu, Server, check::find_criu};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod non_root;
mod plot;
mod speed;
mod workers;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("checkpoint: bench");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        println!("checkpoint bench: SKIPPED, needs root (CRIU dumps need it)");
        return;
    }
    if let Ok(level) = std::env::var("SELFDUMP_BENCH_LOG") {
        // the service's own step timings (debug), on stderr
        env_logger::Builder::new().parse_filters(&level).init();
    }
    let quick = std::env::var_os("SELFDUMP_BENCH_QUICK").is_some();
    let reps = if quick { 3 } else { 15 };
    let criu = Criu {
        path: find_criu(),
        log_level: 4,
    };
    let app = build_bench_app();
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
    let had_cache = Path::new(kdat::KDAT_FILE).exists();
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/selfdump-bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut results = Results::new(&out_dir.join("results.jsonl"));
    println!("machine: {}", machine());

    let only = std::env::var("SELFDUMP_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);

    // 0. Warm workers: does a `criu swrk` started ahead of time help?
    if run("workers") {
        println!(
            "\n0. warm criu swrk workers: the same 4 MiB dump, worker started on demand / 50 ms / 1 s / 10 s ahead, in turns ({reps} each, 10 s every third round)"
        );
        let cache = kdat::ensure_cache(&criu);
        let numbers = workers::measure(&criu, &app, work.path(), reps);
        if !had_cache {
            kdat::remove_cache(&cache);
        }
        let rows = [
            (
                "started on demand (what the service does)",
                numbers.on_demand,
            ),
            ("started 50 ms ahead", numbers.ahead_50ms),
            ("started 1 s ahead (idle in a pool)", numbers.ahead_1s),
            ("started 10 s ahead (idle in a pool)", numbers.ahead_10s),
        ];
        for (name, (total, frozen)) in rows {
            println!("   {name:<42} to result {total:>6.1} ms, frozen {frozen:>6.1} ms");
        }
        let saved = numbers.on_demand.0 - numbers.ahead_1s.0;
        println!(
            "   a worker idle in a pool saves {saved:.1} ms per dump (ratio {:.2}); keep workers only if this is clearly > 0",
            numbers.ahead_1s.0 / numbers.on_demand.0
        );
        results.add(
            "warm_workers",
            &[
                ("on_demand_ms", numbers.on_demand.0),
                ("on_demand_frozen_ms", numbers.on_demand.1),
                ("ahead_50ms_ms", numbers.ahead_50ms.0),
                ("ahead_50ms_frozen_ms", numbers.ahead_50ms.1),
                ("ahead_1s_ms", numbers.ahead_1s.0),
                ("ahead_1s_frozen_ms", numbers.ahead_1s.1),
                ("ahead_10s_ms", numbers.ahead_10s.0),
                ("ahead_10s_frozen_ms", numbers.ahead_10s.1),
            ],
        );
    }

    // 1. End to end, small process.
    if run("e2e") {
        println!(
            "\n1. end to end, 4 MiB process, {reps} checkpoints each, plain and selfdump in turns (median)"
        );
        let _ = std::fs::remove_file(kdat::KDAT_FILE);
        let (plain_cold, selfdump_cold) = interleaved(&criu, &app, &socket, work.path(), 4, reps);
        let cache = kdat::ensure_cache(&criu);
        let (plain_warm, selfdump_warm) = interleaved(&criu, &app, &socket, work.path(), 4, reps);
        if !had_cache {
            kdat::remove_cache(&cache);
        }
        let wall = |s: &Sample| s.wall_ms;
        println!("   kernel-feature cache: {cache:?}");
        println!(
            "   plain criu dump, no cache (the usual way here)  {:>8.1} ms",
            m(&plain_cold, wall)
        );
        println!(
            "   plain criu dump, with cache                     {:>8.1} ms",
            m(&plain_warm, wall)
        );
        println!(
            "   selfdump checkpoint(), no cache                 {:>8.1} ms",
            m(&selfdump_cold, wall)
        );
        println!(
            "   selfdump checkpoint(), with cache               {:>8.1} ms",
            m(&selfdump_warm, wall)
        );
        println!(
            "     of which syncfs                               {:>8.1} ms",
            m(&selfdump_warm, |s| s.sync_ms)
        );
        let same_cache = m(&selfdump_warm, wall) / m(&plain_warm, wall);
        let vs_usual = m(&selfdump_warm, wall) / m(&plain_cold, wall);
        println!(
            "   ratio selfdump / plain, both with cache         {same_cache:>8.2}   target <= 1.0: {}",
            met(same_cache <= 1.0)
        );
        println!(
            "   ratio selfdump / plain run the usual way        {vs_usual:>8.2}   target <= 0.5: {}",
            met(vs_usual <= 0.5)
        );
        results.add(
            "end_to_end",
            &[
                ("plain_no_cache_ms", m(&plain_cold, wall)),
                ("plain_cache_ms", m(&plain_warm, wall)),
                ("selfdump_no_cache_ms", m(&selfdump_cold, wall)),
                ("selfdump_cache_ms", m(&selfdump_warm, wall)),
                ("selfdump_sync_ms", m(&selfdump_warm, |s| s.sync_ms)),
                ("ratio_same_cache", same_cache),
                ("ratio_vs_usual", vs_usual),
            ],
        );
    }

    // 2. Freeze time against memory size (both with the cache).
    if run("freeze") {
        let cache = kdat::ensure_cache(&criu);
        let sizes: &[usize] = if quick { &[64, 256] } else { &[64, 256, 1024] };
        let freeze_reps = if quick { 2 } else { 5 };
        // Images on a tmpfs for the comparison, so that the disk's writeback
        // (which throttles writers once GBs are dirty) does not drown the
        // service's share; then selfdump once more onto the disk for the
        // throughput and what syncfs costs there.
        let shm = tempfile::Builder::new()
            .prefix("selfdump-bench")
            .tempdir_in("/dev/shm")
            .unwrap();
        println!(
            "\n2. freeze time, {freeze_reps} dumps per size (median); app memory touched twice first"
        );
        println!(
            "   images on tmpfs (/dev/shm) for the comparison; last two columns: selfdump onto disk"
        );
        println!(
            "   {:>5} {:>12} {:>12} {:>12} {:>9} {:>13} {:>6} {:>11} {:>8}",
            "MiB",
            "plain frozen",
            "sd frozen",
            "sd blocked",
            "sd-plain",
            "service share",
            "GB/s",
            "disk frozen",
            "syncfs"
        );
        println!(
            "   (service share: the part of selfdump's frozen time CRIU spent waiting for the service, max of the runs)"
        );
        let mut points = Vec::new();
        let mut shares = Vec::new();
        for &mib in sizes {
            let (plain, sd) = interleaved(&criu, &app, &socket, shm.path(), mib, freeze_reps);
            let disk = selfdump_dumps(&app, &socket, work.path(), mib, freeze_reps);
            let _ = std::fs::remove_dir_all(work.path().join("selfdump"));
            let (pf, sf, sb) = (
                m(&plain, |s| s.frozen_ms),
                m(&sd, |s| s.frozen_ms),
                m(&sd, |s| s.blocked_ms),
            );
            let share = sd.iter().map(|s| s.service_frozen_ms).fold(0.0, f64::max);
            let gbps = m(&sd, |s| s.bytes / (s.frozen_ms / 1000.0) / 1e9);
            let (disk_frozen, sync) = (m(&disk, |s| s.frozen_ms), m(&disk, |s| s.sync_ms));
            println!(
                "   {mib:>5} {pf:>9.1} ms {sf:>9.1} ms {sb:>9.1} ms {:>6.1} ms {share:>10.2} ms {gbps:>6.2} {disk_frozen:>8.1} ms {sync:>5.1} ms",
                sf - pf
            );
            results.add(
                &format!("freeze_{mib}mib"),
                &[
                    ("plain_frozen_ms", pf),
                    ("selfdump_frozen_ms", sf),
                    ("selfdump_blocked_ms", sb),
                    ("added_ms", sf - pf),
                    ("service_frozen_max_ms", share),
                    ("gb_per_s", gbps),
                    ("disk_frozen_ms", disk_frozen),
                    ("disk_syncfs_ms", sync),
                ],
            );
            points.push((mib, pf, sf, sb));
            shares.push(share);
        }
        kdat::remove_cache(&cache);
        let svg = out_dir.join("freeze-time.svg");
        std::fs::write(&svg, plot::freeze_svg(&points)).unwrap();
        println!(
            "   target: the service adds <= 5 ms to the freeze at every size: {} (service share); \
             the sd-plain column is the same comparison by A/B, within the run-to-run noise",
            met(shares.iter().all(|&share| share <= 5.0))
        );
        println!("   plot: {}", svg.display());
    }

    // 3. Concurrency.
    if run("concurrency") {
        let cache = kdat::ensure_cache(&criu);
        println!("\n3. concurrency: N processes (4 MiB) checkpoint at once");
        println!(
            "   {:>3} {:>12} {:>22} {:>22}",
            "N", "total", "frozen min/med/max", "blocked min/med/max"
        );
        for n in [1usize, 2, 4, 8] {
            let (total, samples) = concurrent(&app, &socket, work.path(), n);
            let frozen: Vec<f64> = samples.iter().map(|s| s.frozen_ms).collect();
            let blocked: Vec<f64> = samples.iter().map(|s| s.blocked_ms).collect();
            println!(
                "   {n:>3} {:>9.1} ms {:>22} {:>22}",
                total,
                spread(&frozen),
                spread(&blocked)
            );
            results.add(
                &format!("concurrency_{n}"),
                &[
                    ("total_ms", total),
                    ("frozen_max_ms", max(&frozen)),
                    ("blocked_max_ms", max(&blocked)),
                ],
            );
        }
        kdat::remove_cache(&cache);
    }
    // 4. Signing: what hashing the images adds to a checkpoint.
    if run("signing") {
        let cache = kdat::ensure_cache(&criu);
        let mib = if quick { 256 } else { 1024 };
        let sign_reps = if quick { 2 } else { 3 };
        println!(
            "\n4. signing: {mib} MiB checkpoints onto disk, then their images hashed again here"
        );
        let disk = selfdump_dumps(&app, &socket, work.path(), mib, sign_reps);
        let total = m(&disk, |s| s.wall_ms);
        // the app writes checkpoint i into selfdump/<i>: hash the last one's
        let dir = work.path().join("selfdump");
        let last = dir.join((sign_reps - 1).to_string()).join("latest");
        let mut hashes = Vec::new();
        let mut bytes = 0u64;
        for _ in 0..3 {
            bytes = 0;
            let started = Instant::now();
            for entry in std::fs::read_dir(&last).unwrap().flatten() {
                let file: std::os::fd::OwnedFd = std::fs::File::open(entry.path()).unwrap().into();
                let size = entry.metadata().unwrap().len();
                selfdump::server::manifest::hash_file(&file, size).unwrap();
                bytes += size;
            }
            hashes.push(ms(started.elapsed()));
        }
        let hash = median(hashes);
        let gbps = bytes as f64 / (hash / 1000.0) / 1e9;
        let share = hash / (total - hash);
        println!(
            "   checkpoint (signed) {total:.1} ms median; hashing its {bytes} bytes {hash:.1} ms \
             ({gbps:.2} GB/s): signing adds {:.1}% (target <= 25%: {})",
            share * 100.0,
            met(share <= 0.25)
        );
        results.add(
            &format!("signing_{mib}mib"),
            &[
                ("checkpoint_ms", total),
                ("hash_ms", hash),
                ("gb_per_s", gbps),
                ("added_fraction", share),
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
        kdat::remove_cache(&cache);
    }
    // 5. Least privilege: non-root against root, same program.
    if run("nonroot") {
        let cache = kdat::ensure_cache(&criu);
        least_privilege(&criu, &app, reps, quick, &mut results);
        kdat::remove_cache(&cache);
    }
    // 6. Issue 19's rows, each in turns with plain CRIU (`speed.rs`).
    if ["restore", "tiny", "concurrent"].iter().any(|p| run(p)) {
        let cache = kdat::ensure_cache(&criu);
        println!("\n6. the verified paths against plain CRIU, in turns (median, min-max)");
        if run("restore") {
            speed::restore(&criu, &socket, reps);
        }
        if run("tiny") {
            speed::tiny(&criu, &app, &socket, work.path(), reps);
        }
        if run("concurrent") {
            speed::concurrent(&criu, &app, &socket, work.path(), reps);
        }
        if !had_cache {
            kdat::remove_cache(&cache);
        }
    }
    if had_cache {
        let _ = kdat::ensure_cache(&criu);
    }
    println!("\nresults: {}", out_dir.join("results.jsonl").display());
}

/// Part 5 (see `non_root.rs`).
fn least_privilege(criu: &Criu, app: &Path, reps: usize, quick: bool, results: &mut Results) {
    let work = non_root::work_dir();
    let (warm, cold) = (work.path().join("warm.sock"), work.path().join("cold.sock"));
    non_root::serve(criu, &warm, 1);
    non_root::serve(criu, &cold, 0);
    println!(
        "\n5. least privilege: the same program checkpointed by root and by uid 65534 (whose \
         CRIU runs as itself, started for the dump), in turns; median ms in checkpoint()"
    );
    println!(
        "   {:>5} {:>11} {:>11} {:>9} {:>14} {:>14} {:>18}",
        "MiB",
        "root warm",
        "root cold",
        "non-root",
        "non-root/warm",
        "non-root/cold",
        "frozen root/nr"
    );
    for (mib, n) in [(1, reps), (256, if quick { 2 } else { 5 })] {
        let c = non_root::through_the_service(app, (&warm, &cold), work.path(), mib, n);
        let (vs_warm, vs_cold) = (c.non_root / c.root_warm, c.non_root / c.root_cold);
        println!(
            "   {mib:>5} {:>11.1} {:>11.1} {:>9.1} {vs_warm:>14.2} {vs_cold:>14.2} {:>8.1}/{:<8.1}",
            c.root_warm, c.root_cold, c.non_root, c.frozen_root_warm, c.frozen_non_root
        );
        results.add(
            &format!("least_privilege_{mib}mib"),
            &[
                ("root_warm_ms", c.root_warm),
                ("root_cold_ms", c.root_cold),
                ("non_root_ms", c.non_root),
                ("ratio_non_root_to_root", vs_warm),
                ("ratio_non_root_to_root_cold", vs_cold),
            ],
        );
    }
    let [root_spawn, user_spawn, by_fork, by_vfork] = non_root::spawn_costs(criu, reps);
    println!(
        "   starting criu swrk (the call: fork, ids, exec): root {root_spawn:.2} ms, as the \
         caller {user_spawn:.2} ms; /bin/true by fork {by_fork:.2} ms, by posix_spawn \
         {by_vfork:.2} ms"
    );
    println!(
        "   (a launcher forked ahead, taking the ids at the last moment, would save the fork \
         and the switch of ids, at most the call minus an exec; not the exec, CRIU's loading \
         and start-up, which need the ids first)"
    );
    let (with, without) = non_root::unprivileged_cache(criu, app, work.path(), reps);
    println!(
        "   a 4 MiB dump by a CRIU started as uid 65534: {with:.1} ms with the unprivileged \
         kernel-feature cache, {without:.1} ms without"
    );
    results.add(
        "least_privilege_parts",
        &[
            ("spawn_root_ms", root_spawn),
            ("spawn_as_caller_ms", user_spawn),
            ("spawn_true_fork_ms", by_fork),
            ("spawn_true_posix_spawn_ms", by_vfork),
            ("unprivileged_with_cache_ms", with),
            ("unprivileged_without_cache_ms", without),
        ],
    );
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

fn build_bench_app() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--example", "bench_app"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/bench_app")
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

struct Results(std::fs::File);

impl Results {
    fn new(path: &Path) -> Self {
        Self(std::fs::File::create(path).unwrap())
    }
    fn add(&mut self, name: &str, values: &[(&str, f64)]) {
        let fields: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v:.3}"))
            .collect();
        writeln!(self.0, "{{\"bench\": \"{name}\", {}}}", fields.join(", ")).unwrap();
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let criu = Command::new(find_criu())
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    format!(
        "{} cpus ({cpu}), kernel {}, criu {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        criu.trim()
    )
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

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.1}/{:.1}/{:.1} ms", s[0], s[s.len() / 2], s[s.len() - 1])
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}
