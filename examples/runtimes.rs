//! Checkpoints itself from inside an async runtime, or from none, and
//! prints which process returned:
//!
//! ```text
//! cargo run --example runtimes -- --runtime tokio --images /tmp/rt >> /tmp/rt.log
//! ```
//!
//! `--runtime async-std|smol|tokio|blocking` (blocking: no executor,
//! [`selfdump::blocking::checkpoint`]), `--images DIR` (required),
//! `--socket PATH`. Prints `RUNTIME: continued ...`, `RUNTIME: restored ...`
//! or `RUNTIME: error ...`; exits 0 unless the checkpoint failed.

use selfdump::{Error, Options, Outcome};
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(runtime), Some(images)) = (value("--runtime"), value("--images")) else {
        eprintln!(
            "usage: runtimes --runtime async-std|smol|tokio|blocking --images DIR [--socket PATH]"
        );
        std::process::exit(2);
    };
    let mut options = Options::new(images);
    if let Some(socket) = value("--socket") {
        options = options.socket(socket);
    }
    let result: Result<Outcome, Error> = match runtime.as_str() {
        "async-std" => async_std::task::block_on(selfdump::checkpoint(options)),
        "smol" => smol::block_on(selfdump::checkpoint(options)),
        "tokio" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(selfdump::checkpoint(options)),
        "blocking" => selfdump::blocking::checkpoint(options),
        other => {
            eprintln!("unknown runtime {other:?}");
            std::process::exit(2);
        }
    };
    let line = match &result {
        Ok(Outcome::Continued(r)) => format!(
            "{runtime}: continued: frozen {} us, {} processes",
            r.frozen.as_micros(),
            r.processes
        ),
        Ok(Outcome::Restored(info)) => format!("{runtime}: restored: job {}", info.job),
        Err(e) => format!("{runtime}: error: {e}"),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}
