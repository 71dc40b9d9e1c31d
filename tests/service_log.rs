//! The service log of `selfdump serve`, for an operator: each dump names
//! its images directory and options in words, a failed dump is a warning,
//! every refusal is logged (those at the accept at most once per 10 s), and
//! no Rust `Debug` value shows.

mod common;

use common::*;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const NOBODY: u32 = 65534;

/// `selfdump serve` (RUST_LOG=info into `log`), killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(socket: &Path, log: &Path) -> Serving {
    let child = Command::new(selfdump_bin())
        .args([
            "serve",
            "--socket-mode",
            "666",
            "--max-connections-per-uid",
            "1",
        ])
        .args(["--request-timeout", "120", "--socket"])
        .arg(socket)
        .arg("--criu")
        .arg(criu().path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap();
    let serving = Serving(child);
    wait_serving(log);
    serving
}

/// Waits (60 s at most) until the log has a line for which `pred` holds.
fn logged(log: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_for_line(log, what, pred)
}

#[test]
fn the_service_log_says_what_happened_in_words() {
    become_subreaper();
    let dir = images_dir();
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("serve.log");
    let _serving = serve(&socket, &log);

    // a dump: its images directory, its options in words
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut good = Program::start_on(
        &socket,
        &images,
        &["--at", "1", "--until", "1", "--interval-ms", "10"],
        None,
    );
    let line = good.outcome_or_state();
    assert!(
        line.starts_with("checkpoint continued"),
        "{line}; the service's log:\n{}",
        read(&log)
    );
    good.wait();
    let dumping = logged(&log, "the dump", |l| l.contains(": dumping pid "));
    assert!(
        dumping.contains(&format!(" into {}, by ", images.display())),
        "{dumping}"
    );
    assert!(dumping.contains("keep 3, leave running"), "{dumping}");

    // a dump CRIU fails: a warning
    let outside = tempfile::tempdir().unwrap();
    let path = outside.path().join("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let failing = dir.path().join("failing");
    std::fs::create_dir(&failing).unwrap();
    let mut bad = Program::start_on(
        &socket,
        &failing,
        &[
            "--connect",
            path.to_str().unwrap(),
            "--skip-preflight",
            "--at",
            "1",
            "--until",
            "1",
            "--interval-ms",
            "10",
        ],
        None,
    );
    let (_peer, _) = listener.accept().unwrap();
    let line = bad.outcome_or_state();
    assert!(line.starts_with("checkpoint error"), "{line}");
    bad.wait();
    let failed = logged(&log, "the failed dump", |l| l.contains(": failed: "));
    assert!(failed.contains(" WARN "), "{failed}");

    // a refusal of the policy (root only), and one at the accept (root's
    // one connection is taken by an idle one)
    let theirs = dir.path().join("nobody");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut denied = Program::start_on(
        &socket,
        &theirs,
        &["--at", "1", "--until", "1", "--interval-ms", "10"],
        Some(NOBODY),
    );
    let line = denied.outcome_or_state();
    assert!(line.contains("refused (NotPermitted)"), "{line}");
    denied.wait();
    logged(&log, "the policy's refusal", |l| {
        l.contains(&format!(
            "uid {NOBODY}: checkpoint refused (not permitted): "
        ))
    });
    let _idle = UnixStream::connect(&socket).unwrap();
    let refused = UnixStream::connect(&socket).unwrap();
    let mut buf = [0u8; 512];
    let _ = std::io::Read::read(&mut &refused, &mut buf);
    logged(&log, "the refusal at the accept", |l| {
        l.contains("a connection refused (busy): uid 0 already has 1 connections")
    });

    let text = read(&log);
    for debug in [
        "OwnedFd",
        "CacheFile",
        "DumpOptions {",
        "Refused {",
        "Some(",
    ] {
        assert!(
            !text.contains(debug),
            "a Debug value ({debug}) in the log:\n{text}"
        );
    }
    // and any other: the list above names only the values seen before
    for line in text.lines() {
        if let Some(value) = debug_value(line) {
            panic!("a Debug value ({value}) in the log:\n{text}");
        }
    }
}

/// Where `line` shows a Rust `Debug` value: a CamelCase name right before
/// `(` (a tuple struct or variant: `Some(`, `Refused(Refusal`) or before
/// `{ field: ` (a struct: `DumpOptions { leave_running: true`). Words in
/// capitals (`INFO`, `CRIU`, `SIGKILL`) are no type names, and prose puts
/// a space before its parentheses.
fn debug_value(line: &str) -> Option<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (at, _) in line.match_indices(|c: char| c.is_ascii_uppercase()) {
        if line[..at].chars().next_back().is_some_and(is_ident) {
            continue; // inside a word or a path
        }
        let name_len = line[at..]
            .find(|c: char| !is_ident(c))
            .unwrap_or(line.len() - at);
        let name = &line[at..at + name_len];
        if !name.contains(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        let rest = &line[at + name_len..];
        let field = rest.strip_prefix(" { ").is_some_and(|r| {
            let n = r.find(|c: char| !is_ident(c)).unwrap_or(0);
            n > 0 && r[n..].starts_with(": ")
        });
        if rest.starts_with('(') || field {
            return Some(line[at..].chars().take(60).collect());
        }
    }
    None
}

#[test]
fn debug_values_are_told_from_words() {
    for debug in [
        "installed: Installed(CacheFile(OwnedFd { fd: 4 }))",
        "dumping with DumpOptions { leave_running: true, keep: 3 }",
        "uid 65534: checkpoint Refused(Refusal { kind: NotPermitted, message: \"x\" })",
        "got Some(3)",
    ] {
        assert!(debug_value(debug).is_some(), "{debug}");
    }
    for words in [
        "[2026-12-07T05:10:22Z INFO  selfdump::server::builder] using /usr/local/sbin/criu \
         (CRIU 4.1.1)",
        "job aaf5827eec276c1f-1: dumping pid 8824 (uid 0) into /tmp/selfdump-imagesrMl7KB/x, \
         by root's CRIU; keep 3, leave running, shell job",
        "uid 65534: checkpoint refused (not permitted): Permission denied (os error 13)",
        "stopping on SIGTERM: draining 2 dump(s)",
    ] {
        assert_eq!(debug_value(words), None, "{words}");
    }
}
