//! A copy (`clone_stamp --exit`) that exits within milliseconds of its restore can make CRIU 4.1.1
//! fail ("Unable to detach") and hang; `restore_copies` must then end CRIU
//! and the copy at its deadline and say so, never wait for ever. That
//! CRIU hangs only sometimes; a CRIU that surely hangs with its copy (a
//! `criu restore` that waits for the copy instead of leaving it detached)
//! shows that the deadline is what ends it.

mod common;
use common::Guarded;

use common::*;
use selfdump::server::copies::restore_copies;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::RestoreSettings;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `clone_stamp` checkpointed under `selfdump run` through `service`
/// (`--exit`: the original and every copy exit right after their
/// checkpoint returns; else a copy waits to be killed).
fn checkpointed_clone_stamp(service: &Service, exit: bool) -> tempfile::TempDir {
    let images = images_dir();
    let (log, out) = append_log(images.path());
    // in a directory of its own: CRIU's parasite makes `proc.crtools` in
    // the dumped task's working directory, and two dumps at once in one
    // directory fail ("Can't create a directory (-17)")
    let status = Command::new(selfdump_bin())
        .current_dir(images.path())
        .args(["run", "--"])
        .arg(example("clone_stamp"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .args(exit.then_some("--exit"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status_guarded()
        .unwrap();
    assert!(status.success(), "{}", read(&log));
    images
}

/// A `criu restore` that hangs with what it restored, as CRIU 4.1.1 does
/// in its clean-up: it is not detached from the copy, so it waits for it.
fn hanging_criu() -> (tempfile::TempDir, selfdump::server::Criu) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("criu");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = restore ] && for a do shift; \
             [ \"$a\" = --restore-detached ] || set -- \"$@\" \"$a\"; done\n\
             exec {} \"$@\"\n",
            criu().path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o755)).unwrap();
    (dir, selfdump::server::Criu { path, log_level: 4 })
}

/// The tests look at every `criu restore` of this process: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_criu_that_hangs_with_its_copy_is_ended_at_the_deadline() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let service = Service::start();
    let images = checkpointed_clone_stamp(&service, false);
    let (_dir, hanging) = hanging_criu();
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    let deadline = Duration::from_secs(2);
    let settings = RestoreSettings {
        deadline,
        ..RestoreSettings::new(hanging, Some(key))
    };
    // (on a thread: without the deadline it would never return)
    let (done, result) = std::sync::mpsc::channel();
    let dir = images.path().to_path_buf();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(restore_copies(&settings, &dir, 2, false).map(|c| c.copies.len()));
    });
    let result = result
        .recv_timeout(deadline + Duration::from_secs(30))
        .expect("restore_copies did not return: the deadline never fired");
    let took = started.elapsed();
    let e = result.expect_err("a hanging CRIU's copies were handed out");
    assert!(
        e.to_string()
            .contains(&format!("did not finish within {deadline:?}")),
        "{e}"
    );
    assert!(
        took >= deadline,
        "ended after {took:?}, before its deadline"
    );
    nothing_of_the_copies_left();
}

#[test]
fn copies_that_exit_at_once_never_leave_the_restore_hanging() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let service = Service::start();
    let images = checkpointed_clone_stamp(&service, true);
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    let settings = RestoreSettings {
        deadline: Duration::from_secs(5),
        ..RestoreSettings::new(criu(), Some(key))
    };
    for round in 0..3 {
        let started = Instant::now();
        let result = restore_copies(&settings, images.path(), 4, false);
        let took = started.elapsed();
        eprintln!("round {round}: {took:?}: {result:?}");
        assert!(took < Duration::from_secs(15), "took {took:?}");
        if let Err(e) = result {
            let text = e.to_string();
            assert!(
                text.contains("did not finish within") || text.contains("detach"),
                "{text}"
            );
        }
    }
    nothing_of_the_copies_left();
}

/// Nothing of the copies is left (soon): no `criu restore`, no copy.
fn nothing_of_the_copies_left() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = own_children()
            .into_iter()
            .filter_map(|(pid, state, comm)| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                (state != 'Z'
                    && (comm.contains("clone_stamp")
                        || (comm == "criu" && cmdline.contains("restore"))))
                .then_some((pid, state, cmdline))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
