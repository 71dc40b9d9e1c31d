//! A program that checkpoints itself again and again into one directory,
//! its children coming and going between checkpoints, as a long-running
//! job does. Each checkpoint is a new generation of the directory, and
//! `latest` names the newest; a copy restored from any of them says which
//! generation it came from and whether its children are back, then waits
//! to be killed (SIGKILL to its init ends its namespace).
//! Start it isolated, so that its copies can run beside it:
//!
//! ```text
//! selfdump run -- checkpoint_loop --images /tmp/loop --count 100 --churn >> /tmp/loop.log &
//! selfdump restore /tmp/loop        # the generation latest names, any time
//! grep restored /tmp/loop.log       # "gen I restored GENERATION children K alive K"
//! ```
//!
//! Options: `--images DIR` (required), `--socket PATH`, `--count N`
//! (checkpoints, default 10), `--churn` (before checkpoint I, keep I mod 4
//! children: a tree that grows and shrinks, with new pids each time),
//! `--keep K` (generations to keep), `--exit-after-from I` (from
//! checkpoint I on, CRIU ends the process after the dump), `--ctl DIR`
//! (before checkpoint I, wait for the file `DIR/go-I`), `--interval-ms MS`
//! (pause between checkpoints, default 0).
//!
//! Lines: `gen I continued GENERATION PROCESSES`, `gen I restored
//! GENERATION children K alive A`, `gen I error MESSAGE`, `done`.

use selfdump::{Options, Outcome};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The command line (see the module docs).
struct Args {
    images: String,
    socket: Option<String>,
    count: u64,
    churn: bool,
    keep: Option<u32>,
    exit_after_from: Option<u64>,
    ctl: Option<std::path::PathBuf>,
    interval: Duration,
}

impl Args {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str| value(name).map(|v| v.parse::<u64>().expect(name));
        Self {
            images: value("--images").expect("--images DIR"),
            socket: value("--socket"),
            count: number("--count").unwrap_or(10),
            churn: args.iter().any(|a| a == "--churn"),
            keep: number("--keep").map(|k| k as u32),
            exit_after_from: number("--exit-after-from"),
            ctl: value("--ctl").map(std::path::PathBuf::from),
            interval: Duration::from_millis(number("--interval-ms").unwrap_or(0)),
        }
    }

    /// The options of checkpoint `i`.
    fn options(&self, i: u64) -> Options {
        let mut options = Options::new(&self.images);
        if let Some(socket) = &self.socket {
            options = options.socket(socket);
        }
        if let Some(keep) = self.keep {
            options = options.keep(keep);
        }
        if self.exit_after_from.is_some_and(|from| i >= from) {
            options = options.exit_after_dump();
        }
        options
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--child") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let args = Args::parse();
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=args.count {
        if let Some(ctl) = &args.ctl {
            let go = ctl.join(format!("go-{i}"));
            while !go.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if args.churn {
            adjust(&mut children, (i % 4) as usize);
        }
        match selfdump::blocking::checkpoint(args.options(i)) {
            Ok(Outcome::Continued(r)) => say(&format!(
                "gen {i} continued {} {}",
                r.generation, r.processes
            )),
            Ok(Outcome::Restored(info)) => {
                let alive = children
                    .iter_mut()
                    .map(Child::try_wait)
                    .filter(|waited| matches!(waited, Ok(None)))
                    .count();
                say(&format!(
                    "gen {i} restored {} children {} alive {alive}",
                    info.generation,
                    children.len()
                ));
                // until killed: a copy that exits before CRIU has let go
                // of it fails its restore (CRIU 4.1.1)
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Err(e) => say(&format!("gen {i} error {e}")),
        }
        std::thread::sleep(args.interval);
    }
    say("done");
}

/// Ends the oldest children, or starts new ones, until there are `want`.
fn adjust(children: &mut Vec<Child>, want: usize) {
    while children.len() > want {
        let mut oldest = children.remove(0);
        let _ = oldest.kill();
        let _ = oldest.wait();
    }
    while children.len() < want {
        let child = Command::new(std::env::current_exe().expect("own path"))
            .arg("--child")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a child");
        children.push(child);
    }
}
