//! The commit, retention, adoption and leftovers for a caller who is not
//! root (whose dumps CRIU cannot take on these machines: the files stand
//! in for what CRIU wrote), in a directory of the caller's.
use super::*;
use crate::server::fs::generations::files::Writer;
use crate::server::fs::generations::retention::retain;
use crate::server::fs::generations::{self, LATEST, new_name};
use crate::server::images::manifest::Manifest;
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

fn root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        crate::test_skip::skip(
            crate::test_skip::Limit::NotRoot,
            "the service's side of a commit runs as root",
        );
    }
    root
}

/// A directory of nobody's (in a root-owned 0755 one), and its fd.
fn callers_dir() -> (tempfile::TempDir, PathBuf, OwnedFd) {
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

/// What CRIU would have written: a private directory of root's in the
/// caller's directory, with a tree of one task and some files.
fn dumped(parent: &OwnedFd, files: &[(&str, &[u8])]) -> RootSubdir {
    let subdir = RootSubdir::create(
        parent.try_clone().unwrap(),
        ".selfdump-t-",
        nobody(),
        |_| {},
    )
    .unwrap();
    let pstree = criu_entries::PstreeEntry {
        pid: 42,
        ppid: 0,
        pgid: 42,
        sid: 42,
        threads: vec![42],
    }
    .encode_to_vec();
    let mut image = vec![0u8; 8];
    image.extend_from_slice(&(pstree.len() as u32).to_le_bytes());
    image.extend_from_slice(&pstree);
    create_file(&subdir.dir, "pstree.img", &image).unwrap();
    for (name, bytes) in files {
        create_file(&subdir.dir, name, bytes).unwrap();
    }
    subdir
}

fn job() -> JobId {
    JobId { service: 9, seq: 1 }
}

/// Seals and commits what `source` holds as a new generation.
fn commit(parent: &OwnedFd, source: &RootSubdir, key: &Key) -> io::Result<Committed> {
    let meta = ImageMeta {
        uid: NOBODY,
        ..ImageMeta::default()
    };
    let name = new_name(std::time::SystemTime::now()).unwrap();
    let source = Source {
        dir: source.dir(),
        writer: Writer::Root,
    };
    seal(parent, source, job(), &nobody(), key, &meta, true)?.commit(&name)
}

/// Commits a new generation from a fresh source, removed afterwards as
/// the service removes its staging directory; the generation's name.
fn commit_new(parent: &OwnedFd, key: &Key) -> String {
    let source = dumped(parent, &[]);
    let name = commit(parent, &source, key).unwrap().name;
    source.empty();
    source.remove(true);
    name
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.mode() & 0o7777)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_commit_makes_a_whole_generation_of_the_callers_and_switches_latest() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let key = Key::generate().unwrap();
    let victim = tempfile::tempdir().unwrap();
    // a caller's symlink where latest goes: replaced, never followed
    std::os::unix::fs::symlink(victim.path(), images.join(LATEST)).unwrap();
    let source = dumped(&fd, &[("pages-1.img", b"memory"), ("dump.log", b"log")]);
    let committed = commit(&fd, &source, &key).unwrap();
    let name = committed.name.clone();
    drop(committed);

    assert_eq!(
        std::fs::read_link(images.join(LATEST)).unwrap(),
        Path::new(&name)
    );
    assert_eq!(
        owner(&images.join(LATEST)).0,
        NOBODY,
        "switched as the caller"
    );
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
    let generation = images.join(&name);
    assert_eq!(owner(&generation), (NOBODY, 0o700));
    assert_eq!(
        names(&generation),
        ["dump.log", "pages-1.img", "pstree.img", "selfdump-manifest"]
    );
    for file in names(&generation) {
        assert_eq!(owner(&generation.join(&file)), (NOBODY, 0o600), "{file}");
    }
    let manifest = Manifest::verify(
        &std::fs::read(generation.join(MANIFEST_FILE)).unwrap(),
        &key,
    )
    .unwrap();
    let signed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(signed, ["pages-1.img", "pstree.img"], "logs are not signed");
    assert_eq!(manifest.meta.pids, [42]);
    // the staging directory is untouched (its owner removes it), and
    // nothing else of the service's is left
    let left: Vec<String> = names(&images)
        .into_iter()
        .filter(|n| n.starts_with(".selfdump-"))
        .collect();
    assert_eq!(left, std::slice::from_ref(&source.name));
}

#[test]
fn a_commit_that_cannot_switch_latest_leaves_it_and_no_generation() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let key = Key::generate().unwrap();
    let first = commit_new(&fd, &key);
    // `latest` swapped for a directory of the caller's: rename fails
    std::fs::remove_file(images.join(LATEST)).unwrap();
    std::fs::create_dir_all(images.join(LATEST).join("x")).unwrap();
    std::os::unix::fs::chown(images.join(LATEST), Some(NOBODY), Some(NOBODY)).unwrap();
    let source = dumped(&fd, &[]);
    let failed = commit(&fd, &source, &key).unwrap_err();
    assert!(
        failed.to_string().contains("cannot switch latest"),
        "{failed}"
    );
    let left = names(&images);
    assert_eq!(left, [source.name.clone(), first, LATEST.to_owned()]);
    // nothing of root's but the staging directory, whose owner removes it
    for dir in std::fs::read_dir(&images).unwrap().flatten() {
        if dir.file_name().to_string_lossy() != source.name {
            assert_ne!(owner(&dir.path()).0, 0, "{:?} is root's", dir.path());
        }
    }
}

#[test]
fn retention_keeps_the_newest_latest_and_what_is_held() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let key = Key::generate().unwrap();
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(commit_new(&fd, &key));
    }
    // the oldest is being restored; the second oldest is what latest
    // names (two committers raced)
    let held = std::fs::File::open(images.join(&made[0])).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockShared).unwrap();
    std::fs::remove_file(images.join(LATEST)).unwrap();
    std::os::unix::fs::symlink(&made[1], images.join(LATEST)).unwrap();
    assert_eq!(retain(&fd, &nobody(), 1), [made[2].clone()]);
    assert_eq!(generations::list(&fd).unwrap().len(), 3);
    std::fs::remove_file(images.join(LATEST)).unwrap();
    std::os::unix::fs::symlink(&made[3], images.join(LATEST)).unwrap();
    assert_eq!(retain(&fd, &nobody(), 1), [made[1].clone()]);
    drop(held);
    assert_eq!(retain(&fd, &nobody(), 1), [made[0].clone()]);
    assert_eq!(generations::list(&fd).unwrap(), [made[3].clone()]);
}

#[test]
fn a_checkpoint_from_before_generations_is_adopted_not_lost() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let key = Key::generate().unwrap();
    for (name, bytes) in [
        ("pstree.img", &b"old tree"[..]),
        ("pages-1.img", b"old memory"),
        ("dump.log", b"old log"),
        ("notes.txt", b"the user's"),
    ] {
        std::fs::write(images.join(name), bytes).unwrap();
        std::os::unix::fs::chown(images.join(name), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let new = commit_new(&fd, &key);
    let generations = generations::list(&fd).unwrap();
    assert_eq!(generations.len(), 2, "{generations:?}");
    let adopted = generations.iter().find(|g| **g != new).unwrap();
    assert!(adopted < &new, "older than the new one: {adopted} {new}");
    assert_eq!(
        names(&images.join(adopted)),
        ["dump.log", "pages-1.img", "pstree.img"]
    );
    assert_eq!(
        std::fs::read(images.join(adopted).join("pages-1.img")).unwrap(),
        b"old memory"
    );
    let top: Vec<String> = names(&images)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        top,
        [
            adopted.clone(),
            new.clone(),
            LATEST.into(),
            "notes.txt".into()
        ]
    );
    assert_eq!(owner(&images.join(adopted)).0, NOBODY);
}

#[test]
fn the_callers_own_leftovers_go_as_the_caller_unless_held() {
    if !root() {
        return;
    }
    let (_base, images, fd) = callers_dir();
    let key = Key::generate().unwrap();
    let name = commit_new(&fd, &key);
    // a generation given back but never named, and a half-done switch of
    // latest to `name`; and one whose service still holds it
    let stale = images.join(".selfdump-dead-1");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("pages-1.img"), b"x").unwrap();
    for path in [&stale, &stale.join("pages-1.img")] {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let link = images.join(".selfdump-latest-0001");
    std::os::unix::fs::symlink(&name, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    let live = images.join(".selfdump-live-1");
    std::fs::create_dir(&live).unwrap();
    std::os::unix::fs::chown(&live, Some(NOBODY), Some(NOBODY)).unwrap();
    let held = std::fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let generation = std::fs::File::open(images.join(&name)).unwrap();
    rustix::fs::flock(&generation, rustix::fs::FlockOperation::LockExclusive).unwrap();

    let mut removed = crate::server::fs::leftovers::remove_stale(&fd, None, &nobody());
    removed.sort();
    assert_eq!(
        removed,
        [".selfdump-dead-1".to_string()],
        "the switch is live"
    );
    drop(generation); // its committer is done (or dead)
    let removed = crate::server::fs::leftovers::remove_stale(&fd, None, &nobody());
    assert_eq!(removed, [".selfdump-latest-0001".to_string()]);
    assert!(live.exists() && images.join(&name).exists());
    // another uid's leftovers are not this caller's to remove
    let other = Credentials {
        uid: 4242,
        gid: 4242,
        groups: vec![],
    };
    drop(held);
    assert!(crate::server::fs::leftovers::remove_stale(&fd, None, &other).is_empty());
}
