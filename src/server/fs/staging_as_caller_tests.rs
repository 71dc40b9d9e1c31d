//! `Staging` for a CRIU that runs as the caller: it writes into a
//! directory of the caller's that the caller cannot reach, and only the
//! caller's own single-link regular files in it are published.
use super::*;
use crate::server::images::manifest::{MANIFEST_FILE, Manifest};
use rustix::fs::{Mode, OFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const NOBODY: u32 = 65534;

fn nobody() -> Credentials {
    Credentials {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![],
    }
}

/// A staging directory for nobody's CRIU in a directory of nobody's.
fn staging() -> Option<(tempfile::TempDir, PathBuf, Staging, Key)> {
    if !rustix::process::geteuid().is_root() {
        crate::test_skip::skip(
            crate::test_skip::Limit::NotRoot,
            "staging directories are root's",
        );
        return None;
    }
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let images = base.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::os::unix::fs::chown(&images, Some(NOBODY), Some(NOBODY)).unwrap();
    let fd: OwnedFd = std::fs::File::open(&images).unwrap().into();
    let key = Key::generate().unwrap();
    let job = JobId { service: 9, seq: 1 };
    let generation =
        crate::server::fs::generations::new_name(std::time::SystemTime::now()).unwrap();
    let mut staging = Staging::create(fd, job, nobody(), key.clone(), generation).unwrap();
    staging.for_criu_as_caller().unwrap();
    Some((base, images, staging, key))
}

/// Writes `name` into the staging directory as nobody would (its CRIU).
fn write_as_nobody(staging: &Staging, name: &str, bytes: &[u8]) {
    let dir = staging.dir().try_clone_to_owned().unwrap();
    nobody()
        .run(|| {
            let file = rustix::fs::openat(
                &dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR | Mode::RGRP | Mode::ROTH,
            )
            .unwrap();
            rustix::io::write(&file, bytes).unwrap();
        })
        .unwrap();
}

fn stat(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

#[test]
fn the_callers_criu_writes_where_the_caller_cannot_reach() {
    let Some((_base, images, staging, _)) = staging() else {
        return;
    };
    let outer = images.join(&staging.subdir.name);
    assert_eq!(stat(&outer), (0, 0o700), "the staging directory is root's");
    let inner = rustix::fs::fstat(staging.dir()).unwrap();
    assert_eq!((inner.st_uid, inner.st_mode & 0o7777), (NOBODY, 0o700));
    let reached = nobody()
        .run(|| std::fs::metadata(outer.join("criu")).map(drop))
        .unwrap();
    assert_eq!(
        reached.unwrap_err().kind(),
        std::io::ErrorKind::PermissionDenied
    );
    let (kept, _) = staging.discard();
    assert_eq!(kept, None);
    assert!(!outer.exists(), "removed, inner directory and all");
}

#[test]
fn the_callers_files_are_published_as_they_are_and_signed() {
    let Some((_base, images, staging, key)) = staging() else {
        return;
    };
    write_as_nobody(&staging, "pstree.img", b"tree");
    write_as_nobody(&staging, DUMP_LOG, b"log\n");
    let published = staging.publish(&ImageMeta::default()).unwrap();
    assert!(published.bytes > 0);
    let latest = images.join("latest");
    for name in ["pstree.img", DUMP_LOG, MANIFEST_FILE] {
        assert_eq!(stat(&latest.join(name)), (NOBODY, 0o600), "{name}");
    }
    let manifest =
        Manifest::verify(&std::fs::read(latest.join(MANIFEST_FILE)).unwrap(), &key).unwrap();
    let digest = manifest.file("pstree.img").unwrap();
    assert_eq!(digest.hash, *blake3::hash(b"tree").as_bytes());
    assert!(staging_names(&images).is_empty(), "staging removed");
}

#[test]
fn a_file_not_the_callers_or_with_another_link_is_refused_and_left_as_it_was() {
    for planted in ["root's", "linked"] {
        let Some((base, images, staging, _)) = staging() else {
            return;
        };
        write_as_nobody(&staging, "pstree.img", b"tree");
        // a file elsewhere with a second name in the staging directory,
        // as a CRIU the caller subverted could make
        let elsewhere = base.path().join("elsewhere");
        std::fs::write(&elsewhere, b"x").unwrap();
        if planted == "linked" {
            std::os::unix::fs::chown(&elsewhere, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let dir = staging.dir().try_clone_to_owned().unwrap();
        let source: OwnedFd = std::fs::File::open(&elsewhere).unwrap().into();
        rustix::fs::linkat(&source, "", &dir, "inventory.img", AtFlags::EMPTY_PATH).unwrap();
        let e = staging.publish(&ImageMeta::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("inventory.img is not a file the caller's CRIU wrote"),
            "{planted}: {e}"
        );
        let owner = if planted == "linked" { NOBODY } else { 0 };
        assert_eq!(
            stat(&elsewhere),
            (owner, 0o644),
            "{planted}: left as it was"
        );
        assert!(!images.join("latest").exists(), "{planted}: published");
        assert_eq!(
            std::fs::read_dir(&images).unwrap().count(),
            0,
            "{planted}: nothing left in the images directory"
        );
    }
}

fn staging_names(images: &Path) -> Vec<String> {
    std::fs::read_dir(images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".selfdump-"))
        .collect()
}
