//! Resource hooks: order, abort and undo, and a TCP listener closed before
//! a real checkpoint and reopened in the original and in a restored copy.

mod common;
use common::Guarded;

use common::*;
use selfdump::hooks::Phase;
use selfdump::{Error, HookError, Hooks, Options, Resource};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Calls = Arc<Mutex<Vec<String>>>;

/// Records its hook calls; fails `before_checkpoint` when told to.
struct Recorder {
    name: &'static str,
    calls: Calls,
    fail_before: bool,
}

impl Recorder {
    fn record(&self, phase: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{phase} {}", self.name));
    }
}

impl Resource for Recorder {
    fn before_checkpoint(&mut self) -> Result<(), HookError> {
        self.record("before");
        if self.fail_before {
            return Err(format!("{} cannot be put away", self.name).into());
        }
        Ok(())
    }
    fn after_restore(&mut self) -> Result<(), HookError> {
        self.record("restore");
        Ok(())
    }
    fn after_continue(&mut self) -> Result<(), HookError> {
        self.record("continue");
        Ok(())
    }
}

fn hooks(failing: Option<&'static str>) -> (Hooks, Calls) {
    let calls = Calls::default();
    let mut hooks = Hooks::new();
    for name in ["a", "b", "c", "d"] {
        hooks.register(
            name,
            Recorder {
                name,
                calls: calls.clone(),
                fail_before: failing == Some(name),
            },
        );
    }
    (hooks, calls)
}

fn no_service() -> Options {
    Options::new(std::env::temp_dir()).socket("/nonexistent/selfdump.sock")
}

#[test]
fn a_failing_before_checkpoint_aborts_and_undoes_the_ones_that_ran() {
    let (mut hooks, calls) = hooks(Some("b"));
    let err = selfdump::blocking::checkpoint_with(&mut hooks, no_service()).unwrap_err();
    // d and c ran (reverse order), b failed: a never ran; c and d are given
    // back in order of registration; nothing tried to reach the service.
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "before d",
            "before c",
            "before b",
            "continue c",
            "continue d"
        ]
    );
    let Error::Hook(failure) = &err else {
        panic!("expected a hook error, got {err:?}")
    };
    assert_eq!(failure.phase, Phase::BeforeCheckpoint);
    assert_eq!(failure.failures.len(), 1);
    assert_eq!(failure.failures[0].0, "b");
    assert!(failure.outcome.is_none());
    assert_eq!(
        err.to_string(),
        "before-checkpoint hook of \"b\" failed: b cannot be put away (nothing was dumped)"
    );
}

#[test]
fn a_failed_checkpoint_gives_every_resource_back_in_order() {
    let (mut hooks, calls) = hooks(None);
    let err = async_io::block_on(hooks.checkpoint(no_service())).unwrap_err();
    assert!(matches!(err, Error::NoService { .. }), "{err:?}");
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "before d",
            "before c",
            "before b",
            "before a",
            "continue a",
            "continue b",
            "continue c",
            "continue d"
        ]
    );
}

fn greeting(addr: &str) -> String {
    let stream = TcpStream::connect(addr).expect("connect to the example");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// The lines of `output` that start with "hook ", from the first line
/// starting with `from`.
fn hook_lines<'a>(output: &'a str, from: &str) -> Vec<&'a str> {
    let start = output
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in:\n{output}"));
    output[start..]
        .lines()
        .filter(|l| l.starts_with("hook ") && !l.starts_with("hook: "))
        .collect()
}

#[test]
fn tcp_listener_is_closed_for_the_checkpoint_and_reopened_in_both_processes() {
    let service = Service::start();
    let images = images_dir();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("tcp.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut original = std::process::Command::new(example("tcp_listener"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn_guarded()
        .unwrap();
    let pid = original.id() as i32;
    let line = wait_for_line(&log, "the continued original", |l| {
        l.starts_with("continued: ")
    });
    let addr = line
        .strip_prefix("continued: listening on ")
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .trim_end_matches(',')
        .to_owned();
    assert_eq!(greeting(&addr), format!("hello from pid {pid} (original)"));
    let output = read(&log);
    assert_eq!(
        hook_lines(&output, "listening on"),
        [
            "hook before-checkpoint: listener",
            "hook before-checkpoint: marker",
            "hook after-continue: marker",
            "hook after-continue: listener"
        ],
        "{output}"
    );

    let _ = original.kill();
    let _ = original.wait();
    let restored = restore(images.path()).expect("restore");
    assert_eq!(restored, pid);
    wait_for_line(&log, "the restored copy", |l| {
        l == format!("restored: listening on {addr}")
    });
    assert_eq!(greeting(&addr), format!("hello from pid {pid} (restored)"));
    let output = read(&log);
    assert_eq!(
        hook_lines(&output, "continued: "),
        ["hook after-restore: marker", "hook after-restore: listener"],
        "{output}"
    );
    kill_and_reap(restored);
}
