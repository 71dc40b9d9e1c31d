//! The process the benchmarks checkpoint: it holds `--mib` MiB of touched
//! memory and either checkpoints itself `--checkpoints` times through the
//! service, printing what each took, or (`--idle`) just waits to be dumped
//! by a plain `criu dump`. With `--wait-stdin` it starts checkpointing
//! when a line arrives on stdin (to start several at once); with `--step`
//! it waits for a line before each checkpoint (to interleave with others).
//!
//! While it checkpoints, a ticker thread notes the longest time it could
//! not run: that is how long the app was blocked by the freeze.

use selfdump::{Options, Outcome, checkpoint};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mib: usize = value("--mib").map_or(4, |v| v.parse().expect("--mib"));
    let memory = touched(mib);
    // The same threads in both modes, so plain CRIU dumps the same kind of process.
    let ticker = Ticker::start();
    say(&format!("ready pid={} mib={mib}", std::process::id()));
    if args.iter().any(|a| a == "--idle") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            std::hint::black_box(&memory);
        }
    }
    let images = std::path::PathBuf::from(value("--images").expect("--images DIR"));
    let socket = value("--socket");
    let count: usize = value("--checkpoints").map_or(1, |v| v.parse().expect("--checkpoints"));
    if args.iter().any(|a| a == "--wait-stdin") {
        let mut go = String::new();
        let _ = std::io::stdin().read_line(&mut go);
    }
    let step = args.iter().any(|a| a == "--step");
    for i in 0..count {
        if step {
            let mut go = String::new();
            let _ = std::io::stdin().read_line(&mut go);
        }
        // A fresh directory per checkpoint, as a harness keeps generations.
        let dir = images.join(i.to_string());
        std::fs::create_dir_all(&dir).expect("images dir");
        let mut options = Options::new(dir);
        if let Some(socket) = &socket {
            options = options.socket(socket);
        }
        ticker.reset();
        let started = Instant::now();
        let outcome = async_io::block_on(checkpoint(options));
        let call = started.elapsed();
        match outcome {
            Ok(Outcome::Continued(r)) => say(&format!(
                "checkpoint {i} call_us={} blocked_us={} frozen_us={} service_frozen_us={} freezing_us={} total_us={} sync_us={} bytes={}",
                call.as_micros(),
                ticker.longest_gap().as_micros(),
                r.frozen.as_micros(),
                r.service_frozen.as_micros(),
                r.freezing.as_micros(),
                r.total.as_micros(),
                r.sync.as_micros(),
                r.bytes_written
            )),
            Ok(Outcome::Restored(_)) => say("restored"),
            Err(e) => {
                say(&format!("checkpoint {i} error: {e}"));
                std::process::exit(1);
            }
        }
    }
    std::hint::black_box(&memory);
}

/// `mib` MiB, every page written twice (fresh guest RAM is slow to touch
/// the first time; the benchmarks time the dump, not that).
fn touched(mib: usize) -> Vec<u8> {
    let mut memory = vec![0u8; mib << 20];
    for round in 1..=2u8 {
        for page in memory.chunks_mut(4096) {
            page[0] = round;
            page[page.len() - 1] = round.wrapping_add(page.len() as u8);
        }
    }
    memory
}

/// Ticks every 200 µs and remembers the longest pause between two ticks.
struct Ticker {
    gap_us: Arc<AtomicU64>,
    reset: Arc<AtomicBool>,
}

impl Ticker {
    fn start() -> Self {
        let gap_us = Arc::new(AtomicU64::new(0));
        let reset = Arc::new(AtomicBool::new(false));
        let (gap, flag) = (gap_us.clone(), reset.clone());
        std::thread::spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_micros(200));
                let now = Instant::now();
                if flag.swap(false, Ordering::AcqRel) {
                    gap.store(0, Ordering::Release);
                } else {
                    gap.fetch_max((now - last).as_micros() as u64, Ordering::AcqRel);
                }
                last = now;
            }
        });
        Self { gap_us, reset }
    }

    fn reset(&self) {
        self.reset.store(true, Ordering::Release);
        while self.reset.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn longest_gap(&self) -> Duration {
        Duration::from_micros(self.gap_us.load(Ordering::Acquire))
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
