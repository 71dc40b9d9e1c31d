//! The owner of a checkpoint restores it through the service, as it asked
//! for the dump: the service verifies the signed images, checks that the
//! caller owns them (root may restore anyone's), and answers with the
//! restored pid. `selfdump restore` run by a user who is not root goes
//! this way.

mod common;
use common::Guarded;

use common::*;
use selfdump::server::Policy;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key, MANIFEST_FILE, Manifest};
use selfdump::{Error, RestoreOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

fn service_allowing_nobody() -> Service {
    Service::start_with(|b| {
        b.policy(Policy {
            allow_uids: [NOBODY].into_iter().collect(),
            ..Policy::default()
        })
    })
}

/// `selfdump restore --socket S DIR` as `uid`: the pid, or the error text.
fn restore_as(uid: u32, service: &Service, images: &Path, extra: &[&str]) -> Result<i32, String> {
    let out = Command::new(selfdump_bin())
        .arg("restore")
        .args(extra)
        .arg("--socket")
        .arg(&service.socket)
        .arg(images)
        .env("RUST_LOG", "warn")
        .uid(uid)
        .gid(uid)
        .output_guarded()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn root_restores_through_the_service_again_and_again() {
    let service = Service::start();
    let (images, program) = checkpoint_and_kill(&service, 8);
    for round in 1..=3 {
        let options = RestoreOptions::new(images.path()).socket(&service.socket);
        let restored = if round == 2 {
            selfdump::blocking::restore(options)
        } else {
            async_io::block_on(selfdump::restore(options))
        }
        .expect("the service restores signed images");
        assert_eq!(restored.pid, program.pid);
        assert_eq!(restored.owner, 0);
        assert!(restored.verify <= restored.total);
        wait_for_line(&program.log, "the copy's memory check", |l| {
            read(&program.log).matches("memory intact").count() >= round && l == "memory intact"
        });
        kill_and_reap(restored.pid);
    }
}

#[test]
fn the_service_refuses_what_it_should_not_restore() {
    let service = service_allowing_nobody();
    let (images, program) = checkpoint_and_kill(&service, 8);

    // another uid's images
    let e = restore_as(NOBODY, &service, images.path(), &[]).unwrap_err();
    assert!(
        e.contains("restore refused (NotPermitted): these images are uid 0's"),
        "{e}"
    );
    assert!(process_state(program.pid).is_none());

    // unsigned images, trusted: root only
    let unsigned = images_dir();
    std::fs::copy(
        images.path().join("latest/pstree.img"),
        unsigned.path().join("pstree.img"),
    )
    .unwrap();
    let e = restore_as(NOBODY, &service, unsigned.path(), &["--trust-unsigned"]).unwrap_err();
    assert!(e.contains("only root may restore unsigned images"), "{e}");

    // tampered images, even from root
    let tampered = images_dir();
    Command::new("cp")
        .arg("-a")
        .arg(format!("{}/latest/.", images.path().display()))
        .arg(tampered.path())
        .status_guarded()
        .unwrap();
    std::fs::write(tampered.path().join("pstree.img"), b"no tree").unwrap();
    let options = RestoreOptions::new(tampered.path()).socket(&service.socket);
    match selfdump::blocking::restore(options) {
        Err(Error::Restore {
            kind: Some(_),
            message,
        }) => {
            assert!(
                message.contains("pstree.img changed since the dump"),
                "{message}"
            )
        }
        other => panic!("tampered images: {other:?}"),
    }
    assert!(process_state(program.pid).is_none());

    // the images of a non-root owner, asked for by that owner: a manifest
    // signed by the service's key that names nobody as the owner passes
    // the owner check; the tasks' credentials (root's, here) are then
    // found not to be the owner's. (A real non-root checkpoint restores as
    // its owner: tests/restore_as_owner.rs.)
    let forged = images_dir();
    Command::new("cp")
        .arg("-a")
        .arg(format!("{}/latest/.", images.path().display()))
        .arg(forged.path())
        .status_guarded()
        .unwrap();
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    let bytes = std::fs::read(forged.path().join(MANIFEST_FILE)).unwrap();
    let (mut manifest, ..) = Manifest::parse_unverified(&bytes).unwrap();
    manifest.meta.uid = NOBODY;
    manifest.meta.gid = NOBODY;
    std::fs::write(forged.path().join(MANIFEST_FILE), manifest.sign(&key)).unwrap();
    std::os::unix::fs::chown(forged.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let e = restore_as(NOBODY, &service, forged.path(), &[]).unwrap_err();
    assert!(
        e.contains("differ from the recorded owner (uid 65534"),
        "{e}"
    );
    assert!(process_state(program.pid).is_none());
}
