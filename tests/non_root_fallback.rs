//! Where CRIU cannot run as a non-root caller (here: a service whose
//! bounding set lacks `CAP_CHECKPOINT_RESTORE`, as in a container), the
//! operator chooses: refuse non-root checkpoints (the default) or have
//! root's CRIU dump them. `selfdump check` says which engine non-root
//! callers get, having tried it.

mod common;
use common::Guarded;

use common::*;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const NOBODY: u32 = 65534;

/// `selfdump serve` allowing nobody, with `CAP_CHECKPOINT_RESTORE` taken
/// out of its bounding set, once it listens; its log in `log`.
fn serve_without_checkpoint_restore(socket: &Path, log: &Path, extra: &[&str]) -> Child {
    let serve = Command::new("setpriv")
        .arg("--bounding-set=-checkpoint_restore")
        .arg(selfdump_bin())
        .args([
            "serve",
            "--socket-mode",
            "666",
            "--allow-uid",
            "65534",
            "--socket",
        ])
        .arg(socket)
        .arg("--criu")
        .arg(criu().path)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn_guarded()
        .unwrap();
    wait_serving(log);
    serve
}

fn stop(mut serve: Child) {
    signal(serve.id() as i32, rustix::process::Signal::TERM);
    let _ = serve.wait();
}

/// Nobody's checkpoint through `socket`: its `checkpoint ...` line.
fn nobody_checkpoints(socket: &Path) -> (tempfile::TempDir, String) {
    let images = images_dir();
    std::os::unix::fs::chown(images.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut program = Program::start_on(
        socket,
        images.path(),
        &["--at", "1", "--until", "3", "--interval-ms", "20"],
        Some(NOBODY),
    );
    let line = program.outcome_or_state();
    assert!(program.wait().success(), "the caller runs on");
    (images, line)
}

fn socket_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-sock")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

#[test]
fn non_root_checkpoints_are_refused_by_default_where_criu_cannot_run_as_the_caller() {
    let dir = socket_dir();
    let (socket, log) = (dir.path().join("s.sock"), dir.path().join("serve.log"));
    let serve = serve_without_checkpoint_restore(&socket, &log, &[]);
    let (images, line) = nobody_checkpoints(&socket);
    assert!(
        line.contains("refused (Unsupported)")
            && line.contains("cannot run CRIU as your uid")
            && line.contains("bounding set lacks CAP_CHECKPOINT_RESTORE")
            && line.contains("--non-root-fallback root"),
        "{line}"
    );
    assert!(image_files(images.path()).is_empty(), "nothing ran");
    // root's own checkpoints are not affected
    let root_images = images_dir();
    let mut root = Program::start_on(
        &socket,
        root_images.path(),
        &["--at", "1", "--until", "2"],
        None,
    );
    let root_line = root.outcome_or_state();
    assert!(root_line.starts_with("checkpoint continued"), "{root_line}");
    root.wait();
    stop(serve);
    let logged = read(&log);
    assert!(
        logged.contains("non-root callers: refused (the configured fallback)"),
        "{logged}"
    );
}

#[test]
fn with_the_root_fallback_root_criu_dumps_non_root_callers() {
    let dir = socket_dir();
    let (socket, log) = (dir.path().join("s.sock"), dir.path().join("serve.log"));
    let serve = serve_without_checkpoint_restore(&socket, &log, &["--non-root-fallback", "root"]);
    let (images, line) = nobody_checkpoints(&socket);
    stop(serve);
    assert!(
        read(&log).contains("non-root callers: root's CRIU (the configured fallback)"),
        "{}",
        read(&log)
    );
    if has_cap_sys_resource() {
        assert!(line.starts_with("checkpoint continued"), "{line}");
        for (name, uid, mode) in image_files(images.path()) {
            assert_eq!((uid, mode), (NOBODY, 0o600), "{name}");
        }
    } else {
        // root's CRIU took it, and here cannot dump another uid
        assert!(
            line.contains("criu dump failed")
                && line.contains("the service lacks CAP_SYS_RESOURCE"),
            "{line}"
        );
    }
}

#[test]
fn selfdump_check_says_which_engine_non_root_callers_get_having_tried_it() {
    let check = |bounded: bool| {
        let mut cmd = Command::new("setpriv");
        if bounded {
            cmd.arg("--bounding-set=-checkpoint_restore");
        }
        let out = cmd
            .arg(selfdump_bin())
            .args(["check", "--criu"])
            .arg(criu().path)
            .output_guarded()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|l| l.contains("dumps of non-root callers"))
            .unwrap_or_else(|| panic!("{stdout}"))
            .to_owned();
        (out.status.success(), line)
    };
    let (ok, line) = check(false);
    assert!(ok, "{line}");
    assert!(
        line.starts_with("ok ")
            && line.contains("CRIU runs as the caller")
            && line.contains("a dump and restore as uid 65534 took"),
        "{line}"
    );
    let (ok, line) = check(true);
    assert!(ok, "root callers still work: {line}");
    assert!(
        line.starts_with("NOTE ")
            && line.contains("bounding set lacks CAP_CHECKPOINT_RESTORE")
            && line.contains("--non-root-fallback root"),
        "{line}"
    );
}
