//! What every command-line user expects of `selfdump`, through the real
//! binary: `--version`, usage errors told apart from failures (exit 2, a
//! pointer to the command's help, the option's name in the message),
//! limits that make no sense refused rather than bent, `run`'s exit codes
//! as env and podman give them, each command's exit codes in its help,
//! and diagnoses that name the real cause (not root).

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

const NOBODY: u32 = 65534;

fn selfdump(args: &[&str]) -> Output {
    finished(Command::new(env!("CARGO_BIN_EXE_selfdump")).args(args))
}

fn as_nobody(args: &[&str]) -> Output {
    finished(
        Command::new(env!("CARGO_BIN_EXE_selfdump"))
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY),
    )
}

/// Runs `cmd` to its end; one still running after 60 s (a `serve` that
/// took a bad command line and started serving) is killed and fails.
fn finished(cmd: &mut Command) -> Output {
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{cmd:?} still ran after 60 s");
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_the_crate_and_the_protocol() {
    for flag in ["--version", "-V"] {
        let out = selfdump(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!(
                "selfdump {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                selfdump::proto::PROTOCOL_VERSION
            )
        );
    }
}

#[test]
fn a_usage_error_exits_2_and_points_at_the_commands_help() {
    // (args, what the message must name, the help it points at)
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], "USAGE", ""),
        (
            &["frobnicate"],
            "unknown command \"frobnicate\"",
            "`selfdump help`",
        ),
        (
            &["help", "nonsense"],
            "no command \"nonsense\"",
            "`selfdump help`",
        ),
        (&["--bogus"], "--bogus", "`selfdump help`"),
        (
            &["restore", "--copies", "abc", "/tmp"],
            "--copies \"abc\"",
            "`selfdump help restore`",
        ),
        (
            &["restore", "--copies", "0", "/tmp"],
            "--copies must be at least 1",
            "help restore",
        ),
        (
            &["restore", "--timeout", "0", "/tmp"],
            "--timeout must be more than 0",
            "help restore",
        ),
        (
            &["restore", "--wait", "-1", "/tmp"],
            "--wait -1",
            "help restore",
        ),
        (
            &["restore", "--lazy", "/tmp"],
            "--lazy goes with --copies",
            "help restore",
        ),
        (&["restore"], "which images?", "help restore"),
        (&["inspect"], "which images?", "help inspect"),
        (&["inspect", "--bogus", "/tmp"], "--bogus", "help inspect"),
        (&["check", "--pid", "abc"], "--pid \"abc\"", "help check"),
        (
            &["check", "--pid", "0"],
            "--pid wants a process id",
            "help check",
        ),
        (
            &["serve", "--max-dumps", "0"],
            "--max-dumps must be at least 1",
            "help serve",
        ),
        (
            &["serve", "--max-keep", "0"],
            "--max-keep must be at least 1",
            "help serve",
        ),
        (
            &["serve", "--max-connections", "0"],
            "--max-connections must be",
            "help serve",
        ),
        (
            &["serve", "--max-dumps-per-uid", "0"],
            "--max-dumps-per-uid must",
            "help serve",
        ),
        (
            &["serve", "--dump-timeout", "0"],
            "--dump-timeout must be more",
            "help serve",
        ),
        (
            &["serve", "--request-timeout", "x"],
            "--request-timeout \"x\"",
            "help serve",
        ),
        (
            &["serve", "--socket-mode", "999"],
            "--socket-mode wants",
            "help serve",
        ),
        (
            &["serve", "--socket-owner", "root"],
            "--socket-owner wants UID:GID",
            "help serve",
        ),
        (
            &["serve", "--allow-uid", "bob"],
            "--allow-uid \"bob\"",
            "help serve",
        ),
    ];
    // a serve that took its command line would serve here, not on /run
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    for (args, names, help) in cases {
        let mut args = args.to_vec();
        if args.first() == Some(&"serve") {
            args.extend(["--socket", socket.to_str().unwrap()]);
        }
        let out = selfdump(&args);
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "selfdump {args:?}: {said}");
        assert!(said.contains(names), "selfdump {args:?}: {said}");
        assert!(said.contains(help), "selfdump {args:?}: {said}");
        assert!(!said.contains("panicked"), "selfdump {args:?}: {said}");
    }
}

#[test]
fn run_exits_as_env_and_podman_do() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("data");
    std::fs::write(&not_executable, b"not a program").unwrap();
    let not_executable = not_executable.to_str().unwrap();
    // (args, exit code, what the message says)
    let cases: &[(&[&str], i32, &str)] = &[
        (&["run", "--", "/nonexistent/program"], 127, "No such file"),
        (&["run", "--", not_executable], 126, "Permission denied"),
        (&["run", "--", "sh", "-c", "exit 7"], 7, ""),
        (&["run", "--", "sh", "-c", "kill -TERM $$"], 128 + 15, ""),
        (&["run"], 125, "which program?"),
        (&["run", "--bogus"], 125, "--bogus"),
    ];
    for (args, code, says) in cases {
        let out = selfdump(args);
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "selfdump {args:?}: {said}");
        assert!(said.contains(says), "selfdump {args:?}: {said}");
    }
    // not root: `run` itself failed, not the program
    let out = as_nobody(&["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
}

#[test]
fn every_commands_help_lists_its_exit_codes() {
    for command in ["serve", "restore", "run", "inspect", "check"] {
        let out = selfdump(&["help", command]);
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("EXIT CODES"), "{command}: {help}");
    }
    let overview = String::from_utf8_lossy(&selfdump(&["--help"]).stdout).into_owned();
    assert!(overview.contains("EXIT CODES"), "{overview}");
    assert!(overview.contains("selfdump --version"), "{overview}");
}

#[test]
fn output_into_a_closed_pipe_is_no_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_selfdump"))
        .arg("--help")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the help is written
    let out = child.wait_with_output().unwrap();
    let said = stderr(&out);
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(out.status.code(), Some(0), "{said}");
}

#[test]
fn serve_as_non_root_says_it_needs_root_and_leaves_the_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = dir.path().join("s.sock");
    let out = as_nobody(&["serve", "--socket", socket.to_str().unwrap()]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.starts_with("selfdump serve: needs root: "), "{said}");
    assert!(
        !said.contains("remove"),
        "never advise removing the key: {said}"
    );
    assert!(!socket.exists(), "nothing was bound");
}

#[test]
fn a_key_the_service_cannot_use_is_to_be_fixed_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    std::fs::write(&key, b"too short").unwrap();
    let socket = dir.path().join("s.sock");
    let out = selfdump(&[
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("keep it"), "{said}");
    assert!(!said.contains("remove"), "{said}");
}

#[test]
fn check_as_non_root_says_what_needs_root() {
    let out = as_nobody(&["check"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.starts_with("selfdump check: needs root: "), "{said}");
    assert!(said.contains("CAP_SYS_ADMIN"), "{said}");
    assert!(!said.contains("FAIL"), "{said}");
}

#[test]
fn a_failing_criu_check_says_what_criu_said_even_on_stdout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let criu = dir.path().join("criu");
    // a CRIU that says why on stdout, as CRIU 4.1.1 does for a missing
    // capability
    std::fs::write(
        &criu,
        "#!/bin/sh\ncase \"$1\" in\n--version) echo 'Version: 4.1.1';;\n\
         check) echo 'CRIU needs to have the CAP_SYS_ADMIN capability: '; exit 1;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&criu, PermissionsExt::from_mode(0o755)).unwrap();
    let out = selfdump(&["check", "--criu", criu.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let line = said
        .lines()
        .find(|l| l.starts_with("FAIL criu check"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains("needs to have the CAP_SYS_ADMIN"), "{line}");
}
