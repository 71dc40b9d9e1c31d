//! The parts of the checkpoint bench, each adding its section to the
//! report (see `main.rs`).

use super::report::{Report, ms as fmt_ms, ratio};
use super::{
    Bench, Sample, concurrent, interleaved, kdat, m, median, ms, non_root, plot, selfdump_dumps,
    spread, workers,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Part 1, end to end, a 4 MiB process.
pub fn end_to_end(b: &Bench, report: &mut Report) {
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
pub fn warm_workers(b: &Bench, report: &mut Report) {
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
pub fn freeze(b: &Bench, report: &mut Report) {
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
    let (mut rows, mut points, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    b.with_cache(|| {
        for &mib in sizes {
            let (row, point, share) = freeze_size(b, shm.path(), mib, reps);
            rows.push(row);
            points.push(point);
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

/// One size of [`freeze`]: its table row, its point of the plot (MiB,
/// plain frozen, selfdump frozen, selfdump blocked) and the service's
/// largest share of the freeze, in ms.
fn freeze_size(
    b: &Bench,
    shm: &Path,
    mib: usize,
    reps: usize,
) -> (Vec<String>, (usize, f64, f64, f64), f64) {
    let (plain, sd) = interleaved(&b.criu, &b.app, &b.socket, shm, mib, reps);
    let disk = selfdump_dumps(&b.app, &b.socket, &b.work, mib, reps);
    let _ = std::fs::remove_dir_all(b.work.join("selfdump"));
    let (pf, sf, sb) = (
        m(&plain, |s| s.frozen_ms),
        m(&sd, |s| s.frozen_ms),
        m(&sd, |s| s.blocked_ms),
    );
    let share = sd.iter().map(|s| s.service_frozen_ms).fold(0.0, f64::max);
    let gbps = m(&sd, |s| s.bytes / (s.frozen_ms / 1000.0) / 1e9);
    let row = vec![
        mib.to_string(),
        fmt_ms(pf),
        fmt_ms(sf),
        ratio(sf / pf),
        fmt_ms(sb),
        format!("{share:.2}"),
        format!("{gbps:.2}"),
        fmt_ms(m(&disk, |s| s.frozen_ms)),
        fmt_ms(m(&disk, |s| s.sync_ms)),
    ];
    (row, (mib, pf, sf, sb), share)
}

/// Part 4, concurrency.
pub fn concurrency(b: &Bench, report: &mut Report) {
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
pub fn signing(b: &Bench, report: &mut Report) {
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
pub fn least_privilege(b: &Bench, report: &mut Report) {
    let work = non_root::work_dir();
    let (warm, cold) = (work.path().join("warm.sock"), work.path().join("cold.sock"));
    non_root::serve(&b.criu, &warm, 1);
    non_root::serve(&b.criu, &cold, 0);
    let sizes = [(1, b.reps), (256, if b.quick { 2 } else { 5 })];
    let (rows, parts) = b.with_cache(|| {
        let rows: Vec<Vec<String>> = sizes
            .iter()
            .map(|&(mib, n)| least_privilege_row(b, (&warm, &cold), work.path(), mib, n))
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

/// One size of [`least_privilege`]: its table row.
fn least_privilege_row(
    b: &Bench,
    sockets: (&Path, &Path),
    work: &Path,
    mib: usize,
    n: usize,
) -> Vec<String> {
    let c = non_root::through_the_service(&b.app, sockets, work, mib, n);
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
}
