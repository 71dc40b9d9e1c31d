//! What used to leave a `Continued` checkpoint that did not restore, now
//! each a generation of its own: a tree that shrinks and grows between
//! checkpoints, another program into the same directory, a note and CRIU's
//! own log beside the images (plain `criu restore -D DIR/latest` writes
//! one), images from before generations. And directories that are not
//! directories of files (cgroupfs), and a `latest` that is not the
//! service's, refused saying why.

mod common;
use common::Guarded;

use common::looping::*;
use common::*;

#[test]
fn a_tree_that_shrinks_and_grows_restores_from_latest_each_time() {
    let service = Service::start();
    let images = images_dir();
    let looping = Looping::start(
        &service.socket,
        images.path(),
        true,
        &["--count", "5", "--churn"],
    );
    for i in 1..=5 {
        looping.go(i);
        let committed = looping.committed(i);
        let children = i % 4; // 1, 2, 3, then none, then 1 again
        let heard = restore_and_hear(images.path(), &looping);
        assert_eq!(
            heard,
            format!("gen {i} restored {committed} children {children} alive {children}")
        );
    }
    assert_generations_whole(images.path());
    let kept = wait_generations(images.path(), |now| now.len() == 3); // the default keep

    // `selfdump inspect` lists them, marks latest, and tells a damaged one
    let oldest = images.path().join(&kept[0]);
    let pages = image_files(&oldest)
        .into_iter()
        .find(|f| f.0.starts_with("pages-"))
        .unwrap();
    std::fs::remove_file(oldest.join(&pages.0)).unwrap();
    let out = std::process::Command::new(selfdump_bin())
        .arg("inspect")
        .arg(images.path())
        .output_guarded()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("generations: 3"), "{said}");
    let line_of = |name: &str| said.lines().find(|l| l.contains(name)).unwrap().to_owned();
    let oldest_line = line_of(&kept[0]);
    assert!(
        oldest_line.contains(&format!("DOES NOT VERIFY: {} missing", pages.0)),
        "{said}"
    );
    let newest = line_of(&kept[2]);
    assert!(
        newest.contains("latest ->") && newest.ends_with("verifies"),
        "{said}"
    );
    assert!(line_of(&kept[1]).ends_with("verifies"), "{said}");
    assert!(
        said.contains("5 tasks, root selfdump-init (1)"),
        "the init, pid 1, by its own name: {said}"
    );
}

#[test]
fn another_program_into_the_same_directory_restores_and_the_first_stays() {
    let service = Service::start();
    let images = images_dir();
    let mut counter = Program::start(
        &service,
        images.path(),
        &[
            "--children",
            "1",
            "--at",
            "1",
            "--until",
            "100000",
            "--interval-ms",
            "20",
        ],
    );
    counter.wait_for("its checkpoint", |l| l.starts_with("checkpoint continued"));
    let children = counter.children();
    counter.kill();
    for &child in &children {
        kill_and_reap(child);
    }
    let counters = latest(images.path()).unwrap();

    let looping = Looping::start(&service.socket, images.path(), true, &["--count", "1"]);
    looping.go(1);
    let loops = looping.committed(1);
    assert_eq!(latest(images.path()).as_deref(), Some(loops.as_str()));
    let heard = restore_and_hear(images.path(), &looping);
    assert!(
        heard.starts_with(&format!("gen 1 restored {loops}")),
        "{heard}"
    );
    // the counter's generation is whole and restores by its name
    let pid = restore(&images.path().join(&counters)).expect("the first program's generation");
    assert_eq!(pid, counter.pid);
    counter.wait_for("the counter's copy", |l| {
        l.starts_with("checkpoint restored")
    });
    kill_and_reap(pid);
    for child in children {
        kill_and_reap(child);
    }
    assert_generations_whole(images.path());
}

#[test]
fn a_note_and_criu_logs_beside_the_images_are_ignored_with_a_warning() {
    let service = Service::start();
    let images = images_dir();
    let looping = Looping::start(&service.socket, images.path(), true, &["--count", "2"]);
    looping.go(1);
    let first = looping.committed(1);
    std::fs::write(images.path().join("notes.txt"), b"why this checkpoint").unwrap();
    std::fs::write(images.path().join("latest/notes.txt"), b"and this one").unwrap();

    // plain CRIU restores the generation as it is, and leaves its log there
    let pids = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(criu().path)
        .args(["restore", "-d", "-o", "restore.log", "-v4", "-D"])
        .arg(images.path().join("latest"))
        .arg("--pidfile")
        .arg(pids.path().join("pid"))
        .status_guarded()
        .unwrap();
    assert!(status.success(), "criu restore -D DIR/latest");
    let pid: i32 = read(&pids.path().join("pid")).trim().parse().unwrap();
    wait_for_line(&looping.log, "the plain CRIU copy", |l| {
        l.starts_with(&format!("gen 1 restored {first}"))
    });
    kill_and_reap(pid);
    assert!(images.path().join("latest/restore.log").exists());

    let out = std::process::Command::new(selfdump_bin())
        .args(["restore", "--criu"])
        .arg(criu().path)
        .arg(images.path())
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("notes.txt is not part of the signed images: ignored")
            && !said.contains("restore.log"),
        "{said}"
    );
    assert!(!said.contains("after the dump"), "{said}");
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    wait_for_line(&looping.log, "the selfdump copy", |l| {
        read(&looping.log).matches(" restored ").count() >= 2 && l.contains(" restored ")
    });
    kill_and_reap(pid);

    looping.go(2);
    let second = looping.committed(2);
    assert!(!images.path().join(&second).join("notes.txt").exists());
    assert!(
        images.path().join("notes.txt").exists(),
        "the user's note stays"
    );
    assert_generations_whole(images.path());
}

#[test]
fn images_from_before_generations_restore_and_the_next_checkpoint_adopts_them() {
    let service = Service::start();
    let made = images_dir();
    let first = Looping::start(&service.socket, made.path(), true, &["--count", "1"]);
    first.go(1);
    let old = first.committed(1);
    // a directory of images as checkpoints were made before generations
    let images = images_dir();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/latest/.", made.path().display()))
        .arg(images.path())
        .status_guarded()
        .unwrap();
    assert!(copied.success());
    std::fs::set_permissions(
        images.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(images.path().join("notes.txt"), b"mine").unwrap();
    let heard = restore_and_hear(images.path(), &first);
    assert!(
        heard.starts_with(&format!("gen 1 restored {old}")),
        "{heard}"
    );

    let next = Looping::start(&service.socket, images.path(), true, &["--count", "1"]);
    next.go(1);
    let new = next.committed(1);
    assert_eq!(latest(images.path()).as_deref(), Some(new.as_str()));
    let all = generations(images.path());
    assert_eq!(all.len(), 2, "{all:?}");
    let adopted = all.iter().find(|g| **g != new).unwrap().clone();
    assert!(adopted < new, "named for its own time: {adopted}");
    let top: Vec<String> = image_files(images.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(
        top,
        [
            adopted.clone(),
            new.clone(),
            "latest".into(),
            "notes.txt".into()
        ]
    );
    assert_generations_whole(images.path());
    let heard = restore_and_hear(images.path(), &next);
    assert!(
        heard.starts_with(&format!("gen 1 restored {new}")),
        "{heard}"
    );
    let heard = restore_and_hear(&images.path().join(&adopted), &first);
    assert!(
        heard.starts_with(&format!("gen 1 restored {old}")),
        "{heard}"
    );
}

/// A cgroup2 (or cgroup) directory this test may make, removed on drop.
struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Where a cgroup filesystem is mounted here (cgroup2 first), from
/// `/proc/mounts`; else one mounted for the test (on `scratch`).
fn cgroup_mount(scratch: &std::path::Path) -> std::path::PathBuf {
    if let Some(mounted) = mounted_cgroup() {
        return mounted;
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(scratch)
        .status_guarded()
        .unwrap();
    assert!(
        status.success(),
        "no cgroup filesystem, and none can be mounted"
    );
    scratch.to_path_buf()
}

/// Unmounts what [`cgroup_mount`] mounted, if it did.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.0)
            .status_guarded();
    }
}

fn mounted_cgroup() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let of = |kind: &str| {
        mounts.lines().find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(2) == Some(&kind)).then(|| std::path::PathBuf::from(fields[1]))
        })
    };
    of("cgroup2").or_else(|| of("cgroup"))
}

#[test]
fn an_images_directory_on_cgroupfs_is_refused_before_anything_is_made() {
    let scratch = tempfile::tempdir().unwrap();
    let root = cgroup_mount(scratch.path());
    let _unmount = (root == scratch.path()).then(|| Unmount(root.clone()));
    let cgroup = Cgroup(root.join(format!("selfdump-test-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).unwrap();
    let before = image_files(&cgroup.0);
    let service = Service::start();
    let logs = tempfile::tempdir().unwrap();
    let looping = Looping::start_logged(
        &service.socket,
        &cgroup.0,
        &logs.path().join("loop.log"),
        &["--count", "1"],
    );
    looping.go(1);
    let line = looping.outcome(1);
    assert!(
        line.contains("refused (BadDirectory)")
            && line.contains("(a pseudo filesystem: a directory there is a cgroup)"),
        "{line}"
    );
    assert_eq!(
        image_files(&cgroup.0),
        before,
        "something was made in the cgroup"
    );
}

#[test]
fn a_latest_that_is_not_the_services_is_refused_or_replaced_never_followed() {
    let service = Service::start();
    let images = images_dir();
    let checkpoint = |what: &str| {
        let mut program = Program::start(
            &service,
            images.path(),
            &["--at", "1", "--until", "2", "--interval-ms", "20"],
        );
        let line = program.wait_for(what, |l| l.starts_with("checkpoint "));
        assert!(program.wait().success());
        line
    };
    let victim = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(victim.path(), images.path().join("latest")).unwrap();
    let line = checkpoint("a refusal of latest -> elsewhere");
    assert!(
        line.contains("refused (BadDirectory)")
            && line.contains("not to a generation in the same directory"),
        "{line}"
    );
    std::fs::remove_file(images.path().join("latest")).unwrap();
    std::fs::create_dir(images.path().join("latest")).unwrap();
    let line = checkpoint("a refusal of a directory named latest");
    assert!(line.contains("latest is not a symlink"), "{line}");
    std::fs::remove_dir(images.path().join("latest")).unwrap();

    // a plain name that is itself a symlink: a restore will not follow it,
    // and the next commit replaces `latest`, not what it points to
    std::os::unix::fs::symlink(victim.path(), images.path().join("evil")).unwrap();
    std::os::unix::fs::symlink("evil", images.path().join("latest")).unwrap();
    let refused = restore(images.path()).unwrap_err();
    assert!(refused.contains("latest -> evil"), "{refused}");
    let line = checkpoint("a checkpoint");
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(latest(images.path()).unwrap().starts_with("gen-"));
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
    assert_generations_whole(images.path());
}
