//! A benchmark harness: warm up once, checkpoint, then measure in many
//! copies at once. The warm-up (building a large lookup table) is paid once;
//! every copy starts from the warm state, draws its own random queries from
//! its restore id, times them, reports one line and exits.
//!
//! As root, with `selfdump serve` running (see the README's harness path):
//!
//! ```text
//! cargo build --release --example harness
//! mkdir -p /var/tmp/harness
//! selfdump run -- target/release/examples/harness --images /var/tmp/harness >> /var/tmp/harness.log 2>&1
//! selfdump restore --copies 8 /var/tmp/harness     # 8 root pids; each copy measures, reports, exits
//! target/release/examples/harness --summary /var/tmp/harness.log --wait 8
//! ```
//!
//! Options: `--images DIR` (required to run), `--socket PATH`, `--mb N`
//! (MiB of table, default 256), `--lookups N` (queries per copy, default
//! 1,000,000). `--summary LOG [--wait N]`: read the copies' `result` lines
//! from LOG (waiting up to 60 s for N of them) and print them with a
//! summary; exits 1 if a copy's table was not intact.
//!
//! Lines: `original warm: ...` and `original checkpointed: ...` from the
//! original (which then exits: the images are all the copies need), then
//! one `result copy=K id=HEX ...` per copy.

use selfdump::{Options, Outcome};
use std::io::Write;
use std::time::{Duration, Instant};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// xorshift64*: the copies' query generator (seeded per copy).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The warm state: a sorted table of keys (the expensive part to build),
/// and its checksum to check that every copy got all of it.
struct Table {
    keys: Vec<u64>,
    sum: u64,
}

fn build_table(mb: usize) -> Table {
    let n = (mb << 20) / 8;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut keys: Vec<u64> = (0..n).map(|_| rng.next() >> 1).collect();
    keys.sort_unstable();
    let sum = checksum(&keys);
    Table { keys, sum }
}

fn checksum(keys: &[u64]) -> u64 {
    keys.iter()
        .fold(0u64, |s, &k| s.rotate_left(5) ^ k.wrapping_mul(31))
}

/// The measured workload: `lookups` binary searches for keys drawn from
/// `rng` (half of them present in the table). Returns the hits.
fn workload(table: &Table, rng: &mut Rng, lookups: u64) -> u64 {
    let mut hits = 0;
    for _ in 0..lookups {
        let r = rng.next();
        let key = if r & 1 == 0 && !table.keys.is_empty() {
            table.keys[(r >> 1) as usize % table.keys.len()]
        } else {
            r >> 1
        };
        if table.keys.binary_search(&key).is_ok() {
            hits += 1;
        }
    }
    hits
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(log) = value("--summary") {
        let wait: usize = value("--wait").map_or(0, |v| v.parse().expect("--wait N"));
        std::process::exit(summary(&log, wait));
    }
    let images = value("--images").expect("--images DIR (or --summary LOG)");
    let mb: usize = value("--mb").map_or(256, |v| v.parse().expect("--mb"));
    let lookups: u64 = value("--lookups").map_or(1_000_000, |v| v.parse().expect("--lookups"));
    let mut options = Options::new(&images);
    if let Some(socket) = value("--socket") {
        options = options.socket(socket);
    }

    let warm = Instant::now();
    let table = build_table(mb);
    let warm = warm.elapsed();
    say(&format!(
        "original warm: {} keys ({mb} MiB) built in {} ms",
        table.keys.len(),
        warm.as_millis()
    ));
    match selfdump::blocking::checkpoint(options) {
        Ok(Outcome::Continued(r)) => {
            say(&format!(
                "original checkpointed: frozen {} ms, total {} ms, {} bytes; exiting",
                r.frozen.as_millis(),
                r.total.as_millis(),
                r.bytes_written
            ));
        }
        Ok(Outcome::Restored(info)) => {
            // A fresh seed per copy: memory (and so any generator seeded
            // before the checkpoint) is identical in every copy.
            let mut rng = Rng((info.restore_id as u64) | 1);
            let intact = checksum(&table.keys) == table.sum;
            let started = Instant::now();
            let hits = workload(&table, &mut rng, lookups);
            let took = started.elapsed();
            say(&format!(
                "result copy={} id={:032x} table={} lookups={lookups} hits={hits} \
                 workload_us={} ns_per_lookup={:.1} warmup_saved_ms={}",
                info.copy.map_or("none".into(), |c| c.to_string()),
                info.restore_id,
                if intact { "ok" } else { "BAD" },
                took.as_micros(),
                took.as_nanos() as f64 / lookups.max(1) as f64,
                warm.as_millis()
            ));
        }
        Err(e) => {
            say(&format!("original error: {e}"));
            std::process::exit(1);
        }
    }
    // A copy's program exits here, and with it its namespace's init; but
    // not while CRIU may still be detaching from it (see `wait_untraced`).
    wait_untraced(Duration::from_secs(5));
}

/// Waits until no thread of this process is traced. CRIU (4.1.1) lets a
/// restored copy run before it has detached (ptrace) from every thread, and
/// fails the restore if one is gone by then ("Unable to detach"), then
/// hangs in its clean-up: a copy that may finish within milliseconds of its
/// restore should wait for this before exiting.
fn wait_untraced(at_most: Duration) {
    let deadline = Instant::now() + at_most;
    let traced = || {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("status"))
                        .unwrap_or_default()
                        .lines()
                        .any(|l| {
                            l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                        })
                })
            })
            .unwrap_or(false)
    };
    while traced() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Prints the copies' results found in `log` (waiting for `wait` of them)
/// and a summary; the exit code is 1 if none, or one was not intact.
fn summary(log: &str, wait: usize) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("result "))
            .map(str::to_owned)
            .collect();
        if lines.len() >= wait || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let word = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_owned)
    };
    let mut times: Vec<u64> = Vec::new();
    let mut bad = 0;
    for line in &lines {
        println!("{line}");
        if word(line, "table=").as_deref() != Some("ok") {
            bad += 1;
        }
        if let Some(us) = word(line, "workload_us=").and_then(|v| v.parse().ok()) {
            times.push(us);
        }
    }
    times.sort_unstable();
    let ids: std::collections::HashSet<_> = lines.iter().filter_map(|l| word(l, "id=")).collect();
    match (times.first(), times.last()) {
        (Some(min), Some(max)) => println!(
            "{} copies, {} distinct restore ids, workload median {} us (min {min}, max {max}), {bad} with a damaged table",
            lines.len(),
            ids.len(),
            times[times.len() / 2],
        ),
        _ => println!("no results in {log}"),
    }
    if lines.is_empty() || bad > 0 || lines.len() < wait {
        1
    } else {
        0
    }
}
