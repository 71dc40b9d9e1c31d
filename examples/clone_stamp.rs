//! The clone bench's program (`benches/clone.rs`): fills `--mb N` MiB with
//! a pattern, checkpoints itself (isolated, under `selfdump run`) and exits;
//! each restored copy writes the `CLOCK_MONOTONIC` time at which it runs
//! again to its inherited stdout, `stamp NS copy=K` (in the host's clock:
//! a restored copy runs in a time namespace of CRIU's), then waits to be
//! killed (at most 60 s). It must not exit at once: CRIU 4.1.1 fails a
//! restore whose task exits before CRIU has detached from it ("Unable to
//! detach ...: No such process") and then hangs in its clean-up.
//! (`--check`: a copy also checks its memory and says `memory=ok`;
//! `--exit`: it exits at once, to provoke that.)

#[path = "support/pattern.rs"]
mod pattern;

use pattern::Pattern;
use selfdump::{Options, Outcome};
use std::io::Write;

fn now_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// This time namespace's CLOCK_MONOTONIC offset from the host's
/// (`/proc/self/timens_offsets`; 0 outside one).
fn monotonic_offset_ns() -> i128 {
    let text = std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "monotonic" {
                return None;
            }
            let secs: i128 = w.next()?.parse().ok()?;
            let nsecs: i128 = w.next()?.parse().ok()?;
            Some(secs * 1_000_000_000 + nsecs)
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let images = value("--images").expect("--images DIR");
    let mb: usize = value("--mb").map_or(0, |v| v.parse().expect("--mb"));
    let check = args.iter().any(|a| a == "--check");
    let mut options = Options::new(&images);
    if let Some(socket) = value("--socket") {
        options = options.socket(socket);
    }
    let pattern = Pattern::new();
    let memory = pattern.filled(mb << 20);
    let outcome = selfdump::blocking::checkpoint(options);
    let stamp = now_ns();
    let mut out = std::io::stdout().lock();
    let restored = matches!(outcome, Ok(Outcome::Restored(_)));
    match outcome {
        Ok(Outcome::Continued(r)) => {
            let _ = writeln!(
                out,
                "checkpointed: {} bytes, frozen {} us",
                r.bytes_written,
                r.frozen.as_micros()
            );
        }
        Ok(Outcome::Restored(info)) => {
            let copy = info.copy.map_or("none".into(), |c| c.to_string());
            // CRIU restores a namespace's init into a time namespace whose
            // CLOCK_MONOTONIC continues from the dump: give the host's time
            let stamp = stamp as i128 - monotonic_offset_ns();
            let _ = writeln!(out, "stamp {stamp} copy={copy}");
            if check {
                let ok = pattern.holds(&memory);
                let _ = writeln!(out, "copy={copy} memory={}", if ok { "ok" } else { "BAD" });
            }
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            std::process::exit(1);
        }
    }
    let _ = out.flush();
    drop(out);
    if restored && !args.iter().any(|a| a == "--exit") {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
