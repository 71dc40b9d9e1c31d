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

/// Whether this process may make a pid namespace; else why not (a
/// machine limit: a container without CAP_SYS_ADMIN in its user namespace).
fn pid_namespace_allowed() -> Result<(), String> {
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
        .expect("run unshare (util-linux: scripts/install-test-tools.sh installs it)");
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// Waits for `path`, made by `inside` once its service and counters are
/// done; fails, with what the namespace's shell and service said, if
/// `inside` ends without making it. A slow machine is waited for.
fn wait_for_file(path: &Path, inside: &mut std::process::Child, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if let Some(status) = inside.try_wait().unwrap() {
            if path.exists() {
                return;
            }
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut inside.stderr.take().unwrap(), &mut stderr);
            panic!(
                "the namespace's script ended ({status}) before it was ready (exit status 3: its \
                 service never listened); its stderr: {stderr}\nservice log:\n{}",
                read(&dir.join("serve.log"))
            );
        }
        assert!(
            Instant::now() < deadline,
            "the namespace's service never got ready (its shell still runs)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn callers_hidden_by_pid_namespaces_are_refused_with_what_to_do() {
    if let Err(why) = pid_namespace_allowed() {
        return skip(
            Limit::NoPidNamespace,
            &format!("`unshare --pid` fails ({why}): the namespace checks are not exercised"),
        );
    }
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
    wait_for_file(&dir.join("ready"), &mut inside, dir);
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
