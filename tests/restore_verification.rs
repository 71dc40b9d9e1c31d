//! Every restore verifies the images first: a manifest signed with the
//! service's key, every file as signed (nothing changed, added, removed or
//! replaced by a symlink), every task's credentials the recorded owner's.
//! Each tampered copy of one checkpoint is refused with the file or reason
//! named, and nothing of it runs.

mod common;
use common::Guarded;

use common::*;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key, MANIFEST_FILE, Manifest};
use std::path::{Path, PathBuf};
use std::process::Command;

fn named(images: &Path, prefix: &str) -> PathBuf {
    image_files(images)
        .into_iter()
        .find(|f| f.0.starts_with(prefix))
        .map(|f| images.join(f.0))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", images.display()))
}

/// Refused, naming `what`, and the dumped pid was not brought back.
fn assert_refused(images: &Path, pid: i32, what: &str) -> String {
    let error = restore_with(images, &[]).expect_err("tampered images restored");
    assert!(
        error.contains("restore refused") && error.contains(what),
        "{what}: {error}"
    );
    assert!(
        process_state(pid).is_none(),
        "pid {pid} runs after a refusal"
    );
    error
}

/// `selfdump restore DIR` that succeeds: the pid, and what it warned.
fn restore_warning(images: &Path) -> (i32, String) {
    let out = Command::new(selfdump_bin())
        .arg("restore")
        .arg("--criu")
        .arg(criu().path)
        .arg(images)
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (pid, stderr)
}

fn resign(images: &Path, key: &Key, edit: impl FnOnce(&mut Manifest)) {
    let bytes = std::fs::read(images.join(MANIFEST_FILE)).unwrap();
    let (mut manifest, ..) = Manifest::parse_unverified(&bytes).unwrap();
    edit(&mut manifest);
    std::fs::write(images.join(MANIFEST_FILE), manifest.sign(key)).unwrap();
}

#[test]
fn tampered_images_are_refused_with_the_file_named() {
    let service = Service::start_with(|b| {
        b.policy(selfdump::server::Policy {
            allow_uids: [65534].into_iter().collect(),
            ..Default::default()
        })
    });
    let (images, program) = checkpoint_and_kill(&service, 4);
    let pid = program.pid;
    let images = images.path();

    // a byte flipped in each kind of image file
    for prefix in [
        "core-",
        "pages-",
        "pstree",
        "files",
        "mm-",
        "pagemap-",
        "inventory",
        "fdinfo-",
    ] {
        let copy = copy_of(images);
        let file = named(copy.path(), prefix);
        let size = std::fs::metadata(&file).unwrap().len();
        flip_byte(&file, size / 2);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_refused(copy.path(), pid, &format!("{name} changed since the dump"));
    }
    let copy = copy_of(images);
    flip_byte(&copy.path().join(MANIFEST_FILE), 40);
    assert_refused(copy.path(), pid, "selfdump-manifest");

    // removed, added, replaced by a symlink
    let copy = copy_of(images);
    let pages = named(copy.path(), "pages-");
    std::fs::remove_file(&pages).unwrap();
    assert_refused(copy.path(), pid, "is missing");
    // a file the manifest does not list is no tampering anyone can tell
    // (a note, a log): ignored, named in a warning, never given to CRIU
    let copy = copy_of(images);
    std::fs::write(copy.path().join("extra.img"), b"x").unwrap();
    let (restored, warned) = restore_warning(copy.path());
    assert!(
        warned.contains("extra.img is not part of the signed images: ignored"),
        "{warned}"
    );
    assert!(!warned.contains("added after the dump"), "{warned}");
    assert_eq!(restored, pid);
    kill_and_reap(restored);
    let copy = copy_of(images);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(
        copy.path().join("pstree.img"),
        elsewhere.path().join("pstree.img"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("pstree.img"),
        copy.path().join("pstree.img"),
    )
    .unwrap();
    assert_refused(copy.path(), pid, "pstree.img is a symlink");

    // the manifest of another checkpoint swapped in
    let (other, _) = checkpoint_and_kill(&service, 1);
    let copy = copy_of(images);
    std::fs::copy(
        other.path().join("latest").join(MANIFEST_FILE),
        copy.path().join(MANIFEST_FILE),
    )
    .unwrap();
    // (its tasks' files have other names: theirs are missing here, and the
    // files both have differ)
    let error = assert_refused(copy.path(), pid, "restore refused");
    assert!(
        error.contains("is missing") || error.contains("changed since the dump"),
        "{error}"
    );

    // signed by another key
    let copy = copy_of(images);
    let stranger = Key::generate().unwrap();
    resign(copy.path(), &stranger, |m| m.key_id = stranger.id());
    let ours = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    assert_refused(
        copy.path(),
        pid,
        &format!(
            "signed by key {}, not by this service's key {}",
            stranger.id(),
            ours.id()
        ),
    );

    // signed with the right key, but the owner is not who the tasks are:
    // every task's credentials are checked against the recorded owner
    let copy = copy_of(images);
    resign(copy.path(), &ours, |m| m.meta.gid = 1234);
    assert_refused(
        copy.path(),
        pid,
        "differ from the recorded owner (uid 0, gid 1234)",
    );
    let copy = copy_of(images);
    resign(copy.path(), &ours, |m| m.meta.uid = 65534);
    assert_refused(
        copy.path(),
        pid,
        "differ from the recorded owner (uid 65534",
    );

    // unsigned images: only with --trust-unsigned, and only from root
    let copy = copy_of(images);
    std::fs::remove_file(copy.path().join(MANIFEST_FILE)).unwrap();
    assert_refused(copy.path(), pid, "not signed");
    // (a user who is not root restores through the service)
    let as_nobody = Command::new(selfdump_bin())
        .args(["restore", "--trust-unsigned", "--socket"])
        .arg(&service.socket)
        .arg(copy.path())
        .uid(65534)
        .output_guarded()
        .unwrap();
    assert!(!as_nobody.status.success());
    let said = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(
        said.contains("only root may restore unsigned images"),
        "{said}"
    );
    assert!(process_state(pid).is_none());
    let restored =
        restore_with(copy.path(), &["--trust-unsigned"]).expect("--trust-unsigned as root");
    assert_eq!(restored, pid);
    kill_and_reap(restored);

    // and the untouched images restore, again and again
    for _ in 0..2 {
        let restored = restore_with(images, &["--wait", "10"]).expect("the signed images restore");
        assert_eq!(restored, pid);
        kill_and_reap(restored);
    }
}

use std::os::unix::process::CommandExt;

/// `selfdump inspect --json`, whose exit code says what its verdict says
/// (0 restorable here, 1 not, 3 cannot tell).
fn inspect_json(images: &Path) -> serde_json::Value {
    let out = Command::new(selfdump_bin())
        .args(["inspect", "--json"])
        .arg(images)
        .output_guarded()
        .unwrap();
    let found: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let code = match found["verdict"]["restorable"].as_bool() {
        Some(true) => 0,
        Some(false) => 1,
        None => 3,
    };
    assert_eq!(out.status.code(), Some(code), "{found:#}");
    found
}

#[test]
fn inspect_shows_a_checkpoint_at_a_glance() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &[
            "--at",
            "1",
            "--until",
            "100000",
            "--interval-ms",
            "20",
            "--children",
            "1",
        ],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();

    let live = inspect_json(images.path());
    assert_eq!(live["signature"]["verifies"], true, "{live:#}");
    assert_eq!(live["signature"]["key_id"], key.id());
    assert_eq!(live["meta"]["uid"], 0);
    assert_eq!(live["meta"]["pid"], program.pid);
    let tree = live["tree"].as_array().unwrap();
    assert_eq!(tree.len(), 2, "the counter and its child: {live:#}");
    assert_eq!(tree[0]["pid"], program.pid);
    assert_eq!(tree[0]["command"], "counter");
    assert!(live["pages"].as_u64().unwrap() > 0);
    for file in live["files"].as_array().unwrap() {
        let state = file["state"].as_str().unwrap();
        assert!(["signed", "extra", "manifest"].contains(&state), "{file}");
    }
    let in_use = live["ids_in_use"]
        .as_str()
        .expect("the original still runs");
    assert!(in_use.contains(&program.pid.to_string()), "{in_use}");
    assert_eq!(live["verdict"]["restorable"], false, "{live:#}");

    let children = program.children();
    program.kill();
    for child in children {
        kill_and_reap(child);
    }
    let gone = inspect_json(images.path());
    assert!(gone["ids_in_use"].is_null(), "{gone:#}");
    assert_eq!(gone["verdict"]["restorable"], true, "{gone:#}");

    let generation = images.path().join("latest");
    flip_byte(&generation.join(MANIFEST_FILE), 10); // in the signature
    std::fs::write(generation.join("extra.img"), b"x").unwrap();
    let tampered = inspect_json(images.path());
    assert_eq!(tampered["signature"]["verifies"], false);
    assert_eq!(tampered["verdict"]["restorable"], false, "{tampered:#}");
    let extra = tampered["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "extra.img")
        .unwrap();
    assert_eq!(extra["state"], "not signed");

    let human = Command::new(selfdump_bin())
        .arg("inspect")
        .arg(images.path())
        .output_guarded()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("DOES NOT VERIFY") && human.contains("(counter)"),
        "{human}"
    );
}

/// Images whose page file was cut short made `criu restore` spin at 100%
/// CPU here, and the restore wait forever: signed images are refused (the
/// size differs), and an unsigned restore has a deadline, past which CRIU
/// and what it restored are killed.
#[test]
fn a_restore_has_a_deadline() {
    let service = Service::start();
    let (images, program) = checkpoint_and_kill(&service, 4);
    let pid = program.pid;
    let pages = named(&images.path().join("latest"), "pages-");
    let size = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    assert_refused(images.path(), pid, "changed since the dump");

    std::fs::remove_file(images.path().join("latest").join(MANIFEST_FILE)).unwrap();
    let started = std::time::Instant::now();
    let mut restore = Command::new(selfdump_bin())
        .args(["restore", "--trust-unsigned", "--timeout", "3", "--criu"])
        .arg(criu().path)
        .arg(images.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_guarded()
        .unwrap();
    let ended = poll_for(std::time::Duration::from_secs(20), || {
        restore.try_wait().unwrap().is_some()
    });
    let took = started.elapsed();
    if !ended {
        // (with its CRIU, in a process group of its own)
        let children = format!("/proc/{}/task/{}/children", restore.id(), restore.id());
        for criu in read(Path::new(&children)).split_whitespace() {
            let group = rustix::process::Pid::from_raw(criu.parse().unwrap()).unwrap();
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = restore.kill();
    }
    let out = restore.wait_with_output().unwrap();
    assert!(
        ended,
        "the restore still ran after {took:?}: its deadline never fired"
    );
    let result = match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    };
    match result {
        Ok(restored) => panic!("half a page file restored as pid {restored}"),
        // the deadline ended it, not some quicker failure of CRIU's
        Err(e) => assert!(e.contains("criu restore did not finish within 3s"), "{e}"),
    }
    assert!(
        took >= std::time::Duration::from_secs(3),
        "ended after {took:?}, before its deadline"
    );
    assert!(
        poll_for(std::time::Duration::from_secs(10), || {
            process_state(pid).is_none_or(|s| s == 'Z')
        }),
        "nothing of the cut images runs"
    );
}
