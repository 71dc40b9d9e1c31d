//! `Staging` against a caller that swaps names under it.
use super::*;
use rustix::fs::{Mode, OFlags};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const NOBODY: u32 = 65534;

fn nobody() -> Credentials {
    Credentials {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![],
    }
}

/// A directory of nobody's (in a root-owned 0755 one) and its fd.
fn callers_dir() -> (tempfile::TempDir, std::path::PathBuf, OwnedFd) {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let images = base.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::os::unix::fs::chown(&images, Some(NOBODY), Some(NOBODY)).unwrap();
    let fd = std::fs::File::open(&images).unwrap().into();
    (base, images, fd)
}

fn generation() -> String {
    crate::server::fs::generations::new_name(std::time::SystemTime::now()).unwrap()
}

fn job() -> JobId {
    JobId { service: 7, seq: 1 }
}

fn owner(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().uid()
}

fn root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        crate::test_skip::skip(
            crate::test_skip::Limit::NotRoot,
            "staging directories are root's",
        );
    }
    root
}

#[test]
fn staging_is_roots_private_and_empty_and_goes_back_to_the_caller() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let staging =
        Staging::create(fd, job(), nobody(), Key::generate().unwrap(), generation()).unwrap();
    let stat = rustix::fs::fstat(staging.dir()).unwrap();
    assert_eq!((stat.st_uid, stat.st_mode & 0o7777), (0, 0o700));
    let name = staging.subdir.name.clone();
    assert!(name.starts_with(".selfdump-0000000000000007-1-"), "{name}");
    let log = rustix::fs::openat(
        staging.dir(),
        DUMP_LOG,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .unwrap();
    rustix::io::write(&log, b"Error (criu): it failed\n").unwrap();
    let (kept, error) = staging.discard();
    assert_eq!(kept.as_deref(), Some(DUMP_LOG));
    assert_eq!(error.as_deref(), Some("it failed"));
    assert_eq!(owner(&images.join(DUMP_LOG)), NOBODY);
    assert!(!images.join(&name).exists(), "staging removed");
}

#[test]
fn a_callers_directory_swapped_in_is_refused_and_given_back() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let victim = tempfile::tempdir().unwrap();
    let made = images.join("made");
    let refused = Staging::create_racing(
        fd,
        job(),
        nobody(),
        Key::generate().unwrap(),
        generation(),
        |name| {
            std::fs::rename(images.join(name), &made).unwrap();
            std::fs::create_dir(images.join(name)).unwrap();
            let link = images.join(name).join(DUMP_LOG);
            std::os::unix::fs::symlink(victim.path().join("x"), &link).unwrap();
            std::os::unix::fs::chown(images.join(name), Some(NOBODY), Some(NOBODY)).unwrap();
        },
    )
    .unwrap_err();
    assert!(
        refused.to_string().contains("was filled (dump.log)"),
        "{refused}"
    );
    let swapped = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(".selfdump-"))
        .unwrap()
        .path();
    assert_eq!(owner(&swapped), NOBODY, "given back to the caller");
    assert_eq!(owner(&made), NOBODY, "made with the caller's credentials");
    assert!(!victim.path().join("x").exists());
}

#[test]
fn another_users_directory_swapped_in_is_left_alone() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let mut name_seen = String::new();
    let refused = Staging::create_racing(
        fd,
        job(),
        nobody(),
        Key::generate().unwrap(),
        generation(),
        |name| {
            name_seen = name.to_string();
            std::fs::rename(images.join(name), images.join("made")).unwrap();
            std::fs::create_dir(images.join(name)).unwrap();
            std::os::unix::fs::chown(images.join(name), Some(4242), Some(4242)).unwrap();
        },
    )
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("replaced by a directory of uid 4242"),
        "{refused}"
    );
    assert_eq!(owner(&images.join(&name_seen)), 4242, "not chowned");
}

#[test]
fn a_caller_that_may_not_write_cannot_stage() {
    if !root() {
        return;
    }
    let roots = tempfile::tempdir().unwrap();
    let fd: OwnedFd = std::fs::File::open(roots.path()).unwrap().into();
    let refused =
        Staging::create(fd, job(), nobody(), Key::generate().unwrap(), generation()).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("uid 65534 may not create files"),
        "{refused}"
    );
    assert_eq!(std::fs::read_dir(roots.path()).unwrap().count(), 0);
}
