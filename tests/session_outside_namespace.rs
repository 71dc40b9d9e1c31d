//! Pid namespaces that hide something from one side:
//!
//! - a caller whose session leader is outside its pid namespace (its
//!   session id reads as 0 there, as it does for jobs some CI runners
//!   start) cannot be dumped by CRIU: the preflight says so with the fix,
//!   and the service refuses before freezing anything, with the same fix;
//! - a caller the service cannot see at all (it is outside the service's
//!   pid namespace, so the kernel reports its pid as 0) is refused, saying
//!   why.
//!
//! Both times the service goes on serving.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// In a new pid namespace: a service, then two counters whose session
/// leader (this test's session) is outside, one with the preflight and one
/// without; then `ready`, and the service runs until `go` appears.
const INSIDE: &str = r#"
    "$SELFDUMP" serve --socket "$DIR/s.sock" 2>"$DIR/serve.log" &
    i=0; until [ -S "$DIR/s.sock" ]; do sleep 0.05; i=$((i+1)); [ $i -gt 400 ] && exit 3; done
    set -- --socket "$DIR/s.sock" --images "$DIR" --at 1 --until 1 --interval-ms 5
    "$COUNTER" "$@" >"$DIR/with.out" 2>&1
    "$COUNTER" "$@" --skip-preflight >"$DIR/without.out" 2>&1
    sed 's/.*) //' /proc/self/stat | cut -d' ' -f4 >"$DIR/sid"
    touch "$DIR/ready"
    i=0; until [ -e "$DIR/go" ]; do sleep 0.05; i=$((i+1)); [ $i -gt 400 ] && break; done
    kill $!; wait
"#;

/// Waits for `path`; `false` once `inside` ended without making it (no
/// pid namespace here). A slow machine is waited for, never skipped.
fn wait_for_file(path: &Path, inside: &mut std::process::Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if inside.try_wait().unwrap().is_some() {
            return path.exists();
        }
        assert!(
            Instant::now() < deadline,
            "the namespace's service never got ready (its shell still runs)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn callers_hidden_by_pid_namespaces_are_refused_with_what_to_do() {
    let work = images_dir();
    let dir = work.path();
    let mut inside = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", INSIDE])
        .env("SELFDUMP", selfdump_bin())
        .env("COUNTER", example("counter"))
        .env("DIR", dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare");
    if !wait_for_file(&dir.join("ready"), &mut inside) {
        let _ = inside.kill();
        let out = inside.wait_with_output().unwrap();
        eprintln!(
            "SKIPPED: cannot create a pid namespace here (unshare: {}); \
             the namespace checks are not exercised",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    // This test process is outside the service's namespace: invisible to it.
    let outsider = selfdump::blocking::checkpoint(
        selfdump::Options::new(dir)
            .socket(dir.join("s.sock"))
            .skip_preflight(),
    );
    std::fs::write(dir.join("go"), "").unwrap();
    assert!(inside.wait().unwrap().success(), "the namespace script");

    let (with, without) = (read(&dir.join("with.out")), read(&dir.join("without.out")));
    let serve_log = read(&dir.join("serve.log"));
    assert_eq!(
        read(&dir.join("sid")).trim(),
        "0",
        "the namespace does not hide the session leader, so this tests nothing"
    );
    assert!(
        with.contains("checkpoint error: checkpoint not attempted")
            && with.contains("session leader is outside its pid namespace")
            && with.contains("setsid"),
        "the preflight should name the problem and the fix: {with}"
    );
    let service = without
        .lines()
        .find(|l| l.starts_with("checkpoint "))
        .unwrap_or_default();
    assert!(
        service.starts_with("checkpoint error")
            && service.contains("outside the service's pid namespace")
            && service.contains("setsid"),
        "the service should refuse with the fix: {without}\nservice log:\n{serve_log}"
    );
    assert!(
        with.contains("\ndone") && without.contains("\ndone"),
        "both programs should go on after the refusal: {with} / {without}"
    );
    let err = outsider.expect_err("a caller the service cannot see is refused");
    assert!(
        err.to_string()
            .contains("pid namespace the service cannot see"),
        "{err}\nservice log:\n{serve_log}"
    );
    assert!(
        !serve_log.contains("panicked"),
        "the service must not panic: {serve_log}"
    );
}
