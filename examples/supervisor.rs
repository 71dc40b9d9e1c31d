//! A tiny supervisor that embeds the selfdump service: only the processes
//! it started itself may checkpoint through it. Run it as root:
//!
//! ```text
//! sudo cargo run --features cli --example supervisor
//! ```
//!
//! It serves on a private socket, on its own single-threaded executor
//! (`async_io::block_on`: the server has no runtime of its own), with an
//! admission callback that allows only the pids of its workers. It starts
//! one worker (this same program, `--worker`), which counts and
//! checkpoints itself through the supervisor; it shows that a process it
//! did not start (itself, asking to be checkpointed) is refused; and once
//! the worker has exited, or on SIGTERM/SIGINT, it stops the server with a
//! shutdown handle (dumps in flight finish first) and exits 0.
//!
//! `RUST_LOG=info` shows the server's own log. Options: `--socket PATH` (default: in a fresh temporary directory),
//! `--images DIR` (default: a temporary directory, removed at the end),
//! `--hold` (keep serving after the worker exits, until SIGTERM/SIGINT).

use futures_lite::FutureExt;
use selfdump::server::{Server, ShutdownHandle, check::find_criu};
use selfdump::{Options, Outcome};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() -> ExitCode {
    // The server logs through `log`; RUST_LOG=info shows what it does.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--worker") {
        return worker(
            value("--socket").expect("--socket").into(),
            value("--images").expect("--images").into(),
        );
    }
    match supervise(
        value("--socket").map(PathBuf::from),
        value("--images").map(PathBuf::from),
        args.iter().any(|a| a == "--hold"),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The pids this supervisor started: the only callers it lets checkpoint.
#[derive(Clone, Default)]
struct Workers(Arc<Mutex<HashSet<i32>>>);

impl Workers {
    fn add(&self, pid: i32) {
        self.0.lock().unwrap().insert(pid);
    }

    fn remove(&self, pid: i32) {
        self.0.lock().unwrap().remove(&pid);
    }

    /// The admission rule given to `Builder::admit`.
    fn admit(&self, pid: i32) -> Result<(), String> {
        if self.0.lock().unwrap().contains(&pid) {
            Ok(())
        } else {
            Err(format!(
                "pid {pid} was not started by this supervisor, which checkpoints only its own workers"
            ))
        }
    }
}

fn supervise(
    socket: Option<PathBuf>,
    images: Option<PathBuf>,
    hold: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::Builder::new().prefix("supervisor").tempdir()?;
    let socket = socket.unwrap_or_else(|| scratch.path().join("selfdump.sock"));
    let images = match images {
        Some(dir) => dir,
        None => {
            let dir = scratch.path().join("images");
            std::fs::create_dir(&dir)?;
            dir
        }
    };

    let workers = Workers::default();
    let rule = workers.clone();
    let criu = selfdump::server::Criu {
        path: find_criu(),
        ..Default::default()
    };
    let server = Server::builder()
        .criu(criu)
        .admit(move |caller| rule.admit(caller.pid))
        .bind(&socket)?;
    let stop = server.shutdown_handle();
    say(&format!("supervisor: serving on {}", socket.display()));

    // The worker waits for a line on its stdin, so that its pid is on the
    // list before it asks.
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--worker", "--socket"])
        .arg(&socket)
        .arg("--images")
        .arg(&images)
        .stdin(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    workers.add(pid);
    say(&format!("supervisor: started worker {pid}"));
    writeln!(child.stdin.take().expect("piped"), "go")?;

    let signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])?;
    let served = async_io::block_on(async {
        let supervise = async {
            // Someone the supervisor did not start: itself.
            match selfdump::checkpoint(Options::new(&images).socket(&socket).skip_preflight()).await
            {
                Err(e) => say(&format!("supervisor: a stranger asking is refused: {e}")),
                Ok(_) => return Err("the supervisor itself was checkpointed".into()),
            }
            let status = blocking::unblock(move || child.wait()).await?;
            workers.remove(pid);
            say(&format!("supervisor: worker {pid} exited ({status})"));
            if !status.success() {
                return Err(format!("worker failed: {status}").into());
            }
            if hold {
                say("supervisor: holding until SIGTERM");
                std::future::pending::<()>().await;
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        let on_signal = async {
            use futures_lite::StreamExt;
            let mut signals = signals;
            if let Some(Ok(signal)) = signals.next().await {
                say(&format!("supervisor: got {signal:?}"));
            }
            Ok(())
        };
        let run = async {
            server.run().await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        let stopper = async {
            let outcome = supervise.or(on_signal).await;
            shut_down(&stop);
            outcome?;
            std::future::pending().await
        };
        run.or(stopper).await
    });
    say("supervisor: server stopped, exiting");
    served
}

fn shut_down(stop: &ShutdownHandle) {
    say("supervisor: shutting the server down");
    stop.shutdown();
}

/// A worker: counts, checkpoints itself at 2 through the supervisor, goes on to 3.
fn worker(socket: PathBuf, images: PathBuf) -> ExitCode {
    let mut go = String::new();
    let _ = std::io::stdin().lock().read_line(&mut go);
    let me = std::process::id();
    for count in 1..=3 {
        say(&format!("worker {me}: count {count}"));
        if count == 2 {
            match selfdump::blocking::checkpoint(Options::new(&images).socket(&socket)) {
                Ok(Outcome::Continued(r)) => say(&format!(
                    "worker {me}: checkpointed, frozen {:?}, {} bytes",
                    r.frozen, r.bytes_written
                )),
                Ok(Outcome::Restored(_)) => say(&format!("worker {me}: restored")),
                Err(e) => {
                    say(&format!("worker {me}: checkpoint failed: {e}"));
                    return ExitCode::FAILURE;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ExitCode::SUCCESS
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
