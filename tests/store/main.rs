//! Checkpoints in an object store, against the real CRIU and a real S3
//! server (the local SeaweedFS `scripts/test.sh` starts) and `file://`
//! roots: a checkpoint taken by one service restores, as many copies, on a
//! "host" that holds only the first's public key (in its trust directory;
//! no key of its own) and its own empty cache; every kind of tampering is
//! refused before CRIU runs, naming the object (`tampering.rs`).

#[path = "../common/mod.rs"]
mod common;
mod support;
mod tampering;

use common::*;
use selfdump::server::manifest::MANIFEST_FILE;
use support::*;

#[test]
fn a_checkpoint_restores_as_copies_on_a_host_that_trusts_its_signer() {
    let service = Service::start();
    let first = first_key();
    for root in roots("copies") {
        let worker = Worker::start(&service, 16);
        let url = push(worker.dir(), &root.url);
        assert!(
            url.starts_with(&format!("{}/checkpoints/", root.url)),
            "{url}"
        );
        // a host that holds only the first's public key: no key of its own
        let host = Host::trusting(&[first.public()]);
        host.forget_own_key();

        let out = host.selfdump(&["restore", "--copies", "3", &url]);
        assert!(out.status.success(), "{}: {}", root.kind, text(&out));
        let copies = pids(&out);
        assert_eq!(copies.len(), 3);
        let lines = worker.wait_lines("restored: memory=ok", 3);
        for k in 0..3 {
            assert!(
                lines.iter().any(|l| l.contains(&format!("copy={k} "))),
                "{lines:?}"
            );
        }
        let cached = host.cached_chunks();
        assert!(
            !cached.is_empty(),
            "the chunks are kept in the host's cache"
        );
        assert!(
            text(&out).contains(" chunks fetched, 0 from the cache"),
            "{}",
            text(&out)
        );

        // copies and later restores fetch once: nothing from the store now
        let lazy = host.selfdump(&["restore", "--copies", "2", "--lazy", &url]);
        assert!(lazy.status.success(), "{}: {}", root.kind, text(&lazy));
        assert!(
            text(&lazy).contains(": 0 chunks fetched"),
            "{}",
            text(&lazy)
        );
        worker.wait_lines("restored: memory=ok", 5);
        assert_eq!(host.cached_chunks(), cached);

        // one restore (no copies), and what inspect says of it
        let one = host.selfdump(&["restore", &url]);
        assert!(one.status.success(), "{}: {}", root.kind, text(&one));
        worker.wait_lines("restored: memory=ok", 6);
        let shown = host.selfdump(&["inspect", &url]);
        assert!(
            text(&shown).contains(&format!("signature: verifies (key {})", first.id())),
            "{}",
            text(&shown)
        );
        let json = host.selfdump(&["inspect", "--json", &url]);
        let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
        assert_eq!(value["verifies"], true);
        assert_eq!(value["key_id"], first.id());
        for pid in copies.into_iter().chain(pids(&lazy)).chain(pids(&one)) {
            kill_and_reap(pid);
        }
    }
}

#[test]
fn key_public_prints_what_a_trust_directory_takes() {
    let host = Host::trusting(&[]);
    let out = std::process::Command::new(selfdump_bin())
        .args(["key", "public", "--key-file"])
        .arg(host.key_file())
        .output_guarded()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, host.key.public().to_file());
    let parsed = selfdump::server::trust::PublicKey::parse(&printed).unwrap();
    assert_eq!(parsed.id(), host.key.id());
    // and the service wrote the same beside its key, for users who cannot read it
    let beside = std::fs::read_to_string(host.dir.path().join("signing.pub")).unwrap();
    assert_eq!(beside, printed);
}

#[test]
fn the_store_commands_have_their_help() {
    for command in ["push", "pull", "export", "import", "key"] {
        let out = std::process::Command::new(selfdump_bin())
            .args(["help", command])
            .output_guarded()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.starts_with("selfdump "), "{command}: {help}");
        assert!(help.contains(command), "{command}: {help}");
        assert!(help.contains("EXIT CODES"), "{command}: {help}");
        // without its arguments: a usage error, pointing at the help
        let bare = std::process::Command::new(selfdump_bin())
            .arg(command)
            .output_guarded()
            .unwrap();
        let said = String::from_utf8_lossy(&bare.stderr);
        assert_eq!(bare.status.code(), Some(2), "{command}: {said}");
        assert!(
            said.contains(&format!("see `selfdump help {command}`")),
            "{command}: {said}"
        );
    }
}

#[test]
fn pushing_again_uploads_only_what_the_store_lacks() {
    let service = Service::start();
    let worker = Worker::start(&service, 8);
    for root in roots("dedup") {
        let push = |dir| async_io::block_on(selfdump::server::store::push(dir, &root.url)).unwrap();
        let first = push(worker.dir());
        assert_eq!(first.uploaded_chunks, first.chunks - duplicates(&first.url));
        let again = push(worker.dir());
        assert_eq!(
            (again.url.as_str(), again.uploaded_chunks),
            (first.url.as_str(), 0)
        );
        let object =
            selfdump::server::store::raw::get(&root.url, &format!("checkpoints/{}", first.id));
        assert_eq!(
            again.uploaded_bytes,
            object.unwrap().len() as u64,
            "only the object"
        );
        // a chunk the store lost is uploaded again, and only it
        let lost = biggest_chunk(&first.url);
        selfdump::server::store::raw::delete(&root.url, &format!("chunks/{lost}")).unwrap();
        let third = push(worker.dir());
        assert_eq!(third.uploaded_chunks, 1, "{}", root.kind);
    }
}

/// How many of a pushed checkpoint's chunks repeat an earlier one.
fn duplicates(url: &str) -> usize {
    let checkpoint = async_io::block_on(selfdump::server::store::inspect(url, None)).unwrap();
    let all: Vec<_> = checkpoint.chunks().map(|c| c.hash.clone()).collect();
    let unique: std::collections::HashSet<_> = all.iter().collect();
    all.len() - unique.len()
}

/// The hash of the longest chunk of a checkpoint (page data).
pub fn biggest_chunk(url: &str) -> String {
    let checkpoint = async_io::block_on(selfdump::server::store::inspect(url, None)).unwrap();
    checkpoint
        .chunks()
        .max_by_key(|c| c.len)
        .map(|c| c.hash.clone())
        .unwrap()
}

#[test]
fn a_pulled_or_imported_checkpoint_restores_as_a_local_one() {
    let service = Service::start();
    let first = first_key();
    let worker = Worker::start(&service, 8);
    let root = roots("pull").remove(0);
    let url = push(worker.dir(), &root.url);
    let host = Host::trusting(&[first.public()]);
    let pulled = tempfile::tempdir().unwrap();
    let out = host.selfdump(&["pull", &url, pulled.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let latest = pulled.path().join("latest");
    assert!(latest.join(MANIFEST_FILE).exists() && latest.join("pstree.img").exists());

    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("checkpoint.tar.zst");
    let out = host.selfdump(&[
        "export",
        worker.dir().to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let imported = tempfile::tempdir().unwrap();
    let out = host.selfdump(&[
        "import",
        file.to_str().unwrap(),
        imported.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let mut copies = Vec::new();
    for (what, dir) in [("pulled", pulled.path()), ("imported", imported.path())] {
        let out = host.selfdump(&["restore", "--copies", "1", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{what}: {}", text(&out));
        copies.extend(pids(&out));
    }
    // and through a second service, which trusts the first's key
    let second = Service::start_with(|b| b.signing_key(host.key.clone()).trust_dir(host.trust()));
    let options = selfdump::RestoreOptions::new(pulled.path()).socket(&second.socket);
    let restored = selfdump::blocking::restore(options).expect("the second service restores it");
    copies.push(restored.pid);
    worker.wait_lines("restored: memory=ok", 3);
    for pid in copies {
        kill_and_reap(pid);
    }

    // a damaged archive is refused, and leaves nothing behind
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let refused = tempfile::tempdir().unwrap();
    let out = host.selfdump(&[
        "import",
        file.to_str().unwrap(),
        refused.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(refused.path()).unwrap().count(),
        0,
        "{}",
        text(&out)
    );
}

#[test]
fn an_old_keyed_hash_checkpoint_restores_only_where_its_key_is() {
    let service = Service::start();
    let first = first_key();
    let worker = Worker::start(&service, 4);
    let manifest_path = worker.dir().join("latest").join(MANIFEST_FILE);
    let signed = std::fs::read(&manifest_path).unwrap();
    let (manifest, ..) = selfdump::server::manifest::Manifest::parse_unverified(&signed).unwrap();
    std::fs::write(&manifest_path, manifest.sign_legacy(&first)).unwrap();

    let here = restore_with(worker.dir(), &["--copies", "1"]);
    let pid = here.unwrap_or_else(|e| panic!("the host holding the key restores it: {e}"));
    kill_and_reap(pid);
    let elsewhere = Host::trusting(&[first.public()]);
    let out = elsewhere.selfdump(&["restore", "--copies", "1", worker.dir().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("signed the old way"), "{}", text(&out));
    assert!(elsewhere.restores_run().is_empty());
}

#[test]
fn a_restore_that_fails_before_its_files_are_hashed_keeps_none_of_them() {
    // a process's checkpoint (not a pid namespace's): its pid is in use
    // while the original runs, so the restore fails before CRIU restores
    // anything, and before the pages are hashed (they are hashed while
    // CRIU runs)
    let service = Service::start();
    let first = first_key();
    let root = roots("idinuse").remove(0);
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "1", "--until", "100000", "--interval-ms", "20"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    let url = push(images.path(), &root.url);
    let host = Host::trusting(&[first.public()]);
    let out = host.selfdump(&["restore", &url]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is in use by"), "{}", text(&out));
    assert!(!host.cached_chunks().is_empty(), "its chunks were verified");
    assert_eq!(
        host.cached_files(),
        Vec::<String>::new(),
        "files kept that no restore verified"
    );
    program.kill();
}
