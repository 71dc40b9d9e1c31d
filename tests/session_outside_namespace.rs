//! A caller whose session leader is outside its pid namespace (its session
//! id reads as 0 there, as it does for jobs some CI runners start) cannot be
//! dumped by CRIU. The preflight says so with the fix, and the service
//! refuses before freezing anything, with the same fix, and keeps serving.

mod common;

use common::*;
use std::process::Command;

/// Runs a service and two counters in a new pid namespace, where the
/// counters' session leader (this test's session) is outside: one counter
/// with the preflight, one without. Returns (with preflight, without, serve
/// log, the session id seen inside), or None when this machine cannot make
/// a pid namespace.
fn checkpoint_in_new_pid_namespace() -> Option<(String, String, String, String)> {
    let work = images_dir();
    let dir = work.path();
    let script = r#"
        "$SELFDUMP" serve --socket "$DIR/s.sock" 2>"$DIR/serve.log" &
        i=0; until [ -S "$DIR/s.sock" ]; do sleep 0.05; i=$((i+1)); [ $i -gt 400 ] && exit 3; done
        set -- --socket "$DIR/s.sock" --images "$DIR" --at 1 --until 1 --interval-ms 5
        "$COUNTER" "$@" >"$DIR/with.out" 2>&1
        "$COUNTER" "$@" --skip-preflight >"$DIR/without.out" 2>&1
        sid=$(sed 's/.*) //' /proc/self/stat | cut -d' ' -f4)
        echo "$sid" >"$DIR/sid"
        kill $!; wait
    "#;
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", script])
        .env("SELFDUMP", selfdump_bin())
        .env("COUNTER", example("counter"))
        .env("DIR", dir)
        .output()
        .expect("run unshare");
    if !out.status.success() && !dir.join("with.out").exists() {
        eprintln!(
            "SKIPPED: cannot create a pid namespace here (unshare: {}); \
             the session check is not exercised",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some((
        read(&dir.join("with.out")),
        read(&dir.join("without.out")),
        read(&dir.join("serve.log")),
        read(&dir.join("sid")),
    ))
}

#[test]
fn caller_whose_session_leader_is_outside_its_pid_namespace_is_told_to_use_setsid() {
    let Some((with, without, serve_log, sid)) = checkpoint_in_new_pid_namespace() else {
        return;
    };
    assert_eq!(
        sid.trim(),
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
}
