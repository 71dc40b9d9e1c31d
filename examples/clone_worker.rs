//! A program to clone: it fills memory with a pattern, checkpoints itself,
//! and each restored copy checks the pattern and says which copy it is.
//! Start it isolated, so that its images restore as many copies at once:
//!
//! ```text
//! selfdump run -- clone_worker --images /tmp/w --mb 64 >> /tmp/w.log &
//! selfdump restore --copies 8 /tmp/w      # prints 8 root pids
//! grep restored /tmp/w.log                # copy=0..7, each its own id, memory=ok
//! ```
//!
//! Options: `--images DIR` (required), `--socket PATH`, `--mb N` (MiB of
//! pattern, default 16), `--secs N` (each process lives this long, default
//! 60), `--again DIR --again-copy K` (copy K checkpoints itself again, into
//! DIR: a second generation; its copies print `gen2 restored ...`).
//!
//! Every line names the process: `original`, or `copy=K id=HEX`.

#[path = "support/pattern.rs"]
mod pattern;

use pattern::Pattern;
use selfdump::{Options, Outcome, checkpoint};
use std::io::Write;
use std::time::{Duration, Instant};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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
    let mb: usize = value("--mb").map_or(16, |v| v.parse().expect("--mb"));
    let secs: u64 = value("--secs").map_or(60, |v| v.parse().expect("--secs"));
    let again = value("--again");
    let again_copy: Option<u32> = value("--again-copy").map(|v| v.parse().expect("--again-copy"));
    let options = |dir: &str| {
        let o = Options::new(dir);
        match value("--socket") {
            Some(s) => o.socket(s),
            None => o,
        }
    };

    let pattern = Pattern::new();
    let memory = pattern.filled(mb << 20);
    say(&format!(
        "original ready: pid {} (in its namespace), {mb} MiB",
        std::process::id()
    ));
    let mut me = "original".to_owned();
    match async_io::block_on(checkpoint(options(&images))) {
        Ok(Outcome::Continued(r)) => say(&format!(
            "original continued: frozen {} us, total {} us, {} bytes, {} processes",
            r.frozen.as_micros(),
            r.total.as_micros(),
            r.bytes_written,
            r.processes
        )),
        Ok(Outcome::Restored(info)) => {
            me = format!(
                "copy={} id={:032x}",
                info.copy.map_or("none".into(), |c| c.to_string()),
                info.restore_id
            );
            let ok = if pattern.holds(&memory) { "ok" } else { "BAD" };
            say(&format!("{me} restored: memory={ok}"));
            if let (Some(dir), Some(k)) = (&again, again_copy)
                && info.copy == Some(k)
            {
                match async_io::block_on(checkpoint(options(dir))) {
                    Ok(Outcome::Continued(r)) => {
                        say(&format!("{me} gen2 continued: {} processes", r.processes))
                    }
                    Ok(Outcome::Restored(info)) => {
                        me = format!(
                            "gen2 copy={} id={:032x}",
                            info.copy.map_or("none".into(), |c| c.to_string()),
                            info.restore_id
                        );
                        let ok = if pattern.holds(&memory) { "ok" } else { "BAD" };
                        say(&format!("{me} gen2 restored: memory={ok}"));
                    }
                    Err(e) => say(&format!("{me} gen2 error: {e}")),
                }
            }
        }
        Err(e) => {
            say(&format!("original error: {e}"));
            std::process::exit(1);
        }
    }
    let start = Instant::now();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        tick += 1;
        say(&format!("{me} alive {tick}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    say(&format!("{me} done"));
}
