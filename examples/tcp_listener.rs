//! A TCP server that closes its listener before checkpointing itself and
//! opens it again afterwards, with [`selfdump::Hooks`]:
//!
//! ```text
//! cargo run --example tcp_listener -- --images /tmp/tcp --port 7878 >> /tmp/tcp.log
//! nc 127.0.0.1 7878        # "hello from pid N (original)"
//! ```
//!
//! Options: `--images DIR` (required), `--port P` (default 0: any free
//! port), `--socket PATH`, `--exit-after` (let CRIU end the process after the
//! dump; `selfdump restore DIR` brings it back, listening again).
//!
//! It registers two resources: `marker`, which only prints its hooks, and
//! `listener`. The hooks print `hook PHASE: NAME`, so the order is visible:
//! before-checkpoint runs `listener` then `marker` (reverse order of
//! registration), after-restore and after-continue `marker` then `listener`.
//! Each connection gets one line, `hello from pid N (original|restored)`.

use selfdump::{HookError, Hooks, Options, Outcome, Resource};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// The listening socket, shared with the accept loop.
struct Listener {
    addr: SocketAddr,
    socket: Arc<Mutex<Option<TcpListener>>>,
}

impl Listener {
    fn reopen(&mut self) -> Result<(), HookError> {
        say("hook: reopening the listener");
        *self.socket.lock().unwrap() = Some(TcpListener::bind(self.addr)?);
        Ok(())
    }
}

impl Resource for Listener {
    fn before_checkpoint(&mut self) -> Result<(), HookError> {
        say("hook before-checkpoint: listener");
        // Closed: the images hold no socket, and a restored copy can take
        // the port even if it was restored elsewhere.
        *self.socket.lock().unwrap() = None;
        Ok(())
    }
    fn after_restore(&mut self) -> Result<(), HookError> {
        say("hook after-restore: listener");
        self.reopen()
    }
    fn after_continue(&mut self) -> Result<(), HookError> {
        say("hook after-continue: listener");
        self.reopen()
    }
}

/// Only shows when its hooks run.
struct Marker;

impl Resource for Marker {
    fn before_checkpoint(&mut self) -> Result<(), HookError> {
        say("hook before-checkpoint: marker");
        Ok(())
    }
    fn after_restore(&mut self) -> Result<(), HookError> {
        say("hook after-restore: marker");
        Ok(())
    }
    fn after_continue(&mut self) -> Result<(), HookError> {
        say("hook after-continue: marker");
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(images) = value("--images") else {
        eprintln!("usage: tcp_listener --images DIR [--port P] [--socket PATH] [--exit-after]");
        std::process::exit(2);
    };
    let port: u16 = value("--port").map_or(0, |p| p.parse().expect("--port"));
    let mut options = Options::new(images);
    if let Some(socket) = value("--socket") {
        options = options.socket(socket);
    }
    if args.iter().any(|a| a == "--exit-after") {
        options = options.exit_after_dump();
    }

    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let addr = listener.local_addr().expect("local address");
    say(&format!("listening on {addr} pid {}", std::process::id()));
    let socket = Arc::new(Mutex::new(Some(listener)));

    let mut hooks = Hooks::new();
    hooks.register("marker", Marker).register(
        "listener",
        Listener {
            addr,
            socket: socket.clone(),
        },
    );
    let who = match selfdump::blocking::checkpoint_with(&mut hooks, options) {
        Ok(Outcome::Continued(report)) => {
            say(&format!(
                "continued: listening on {addr} again, frozen {} us",
                report.frozen.as_micros()
            ));
            "original"
        }
        Ok(Outcome::Restored(_)) => {
            say(&format!("restored: listening on {addr}"));
            "restored"
        }
        Err(e) => {
            say(&format!("checkpoint error: {e}"));
            "original"
        }
    };

    let listener = socket
        .lock()
        .unwrap()
        .take()
        .expect("the hooks reopened it");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = writeln!(stream, "hello from pid {} ({who})", std::process::id());
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
