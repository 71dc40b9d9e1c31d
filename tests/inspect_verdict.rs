//! `selfdump inspect` ends with a one-line verdict (would `selfdump
//! restore` restore it here, now; and if not, why) and exits with the code
//! that says the same: 0 restorable, 1 not, 3 cannot tell. Its output is
//! for people (times, sizes with units, CRIU's statistics of the dump, no
//! empty lines) and, with `--json`, for programs (ids as strings, the
//! verdict as a field). A restore of what is not a checkpoint says so.

mod common;
use common::Guarded;

use common::*;
use selfdump::server::manifest::MANIFEST_FILE;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

fn inspect(args: &[&str], dir: &Path) -> Output {
    Command::new(selfdump_bin())
        .arg("inspect")
        .args(args)
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output_guarded()
        .unwrap()
}

/// Its exit code, and its output (stdout and stderr).
fn said(out: &Output) -> (Option<i32>, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The verdict line of a human report.
fn verdict(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("verdict:   "))
        .unwrap_or_else(|| panic!("no verdict: {text}"))
}

#[test]
fn what_is_no_checkpoint_is_called_so_and_exits_1() {
    let empty = images_dir();
    let other = images_dir();
    std::fs::write(other.path().join("notes.txt"), b"hello").unwrap();
    for dir in [empty.path(), other.path()] {
        let (code, text) = said(&inspect(&[], dir));
        assert_eq!(code, Some(1), "{text}");
        assert!(verdict(&text).starts_with("not a checkpoint"), "{text}");
        assert!(!text.contains("tree:"), "no empty tree shown: {text}");
        assert!(!text.contains("signature:"), "{text}");
        let restored = restore(dir).expect_err("nothing to restore");
        assert!(restored.contains("not a checkpoint"), "{restored}");
    }
    let (code, text) = said(&inspect(&[], &empty.path().join("missing")));
    assert_eq!(code, Some(1), "{text}");
}

#[test]
fn a_checkpoint_is_restorable_once_its_ids_are_free_and_inspect_says_so() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "1", "--until", "100000", "--interval-ms", "20"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));

    // the original runs: its pids are taken
    let (code, text) = said(&inspect(&[], images.path()));
    assert_eq!(code, Some(1), "{text}");
    assert!(verdict(&text).starts_with("not now: "), "{text}");
    assert!(verdict(&text).contains("--wait"), "{text}");

    program.kill();
    let (code, text) = said(&inspect(&[], images.path()));
    assert_eq!(code, Some(0), "{text}");
    assert!(verdict(&text).starts_with("restorable here"), "{text}");
    // for people: readable times and sizes, CRIU's statistics, nothing empty
    let line = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label}: {text}"))
            .to_owned()
    };
    assert!(line("made:").contains(" ago) on "), "{text}");
    assert!(line("size:").contains(" KiB in "), "{text}");
    let dump = line("dump:");
    assert!(
        dump.contains("frozen ") && dump.contains(" ms") && dump.contains("pages written of"),
        "{dump}"
    );
    assert!(!text.contains(" bytes,"), "sizes with units: {text}");
    for l in text.lines() {
        assert!(!l.trim().is_empty(), "an empty line: {text}");
        assert!(!l.trim_end().ends_with(':'), "a label with nothing: {text}");
    }

    // for programs: ids as strings, the verdict and CRIU's statistics
    let out = inspect(&["--json"], images.path());
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = json["meta"]["job"]
        .as_str()
        .expect("the job id as a string");
    let job: selfdump::proto::JobId = job.parse().unwrap();
    assert!(text.contains(&job.to_string()), "the same job: {text}");
    assert_eq!(json["verdict"]["restorable"], true, "{json:#}");
    assert!(json["verdict"]["summary"].is_string(), "{json:#}");
    let stats = &json["stats"];
    let written = stats["pages_written"].as_u64().unwrap();
    assert!(written > 0, "{stats}");
    assert!(
        stats["pages_scanned"].as_u64().unwrap() >= written,
        "{stats}"
    );
    assert!(stats["frozen_us"].as_u64().unwrap() > 0, "{stats}");

    // without the key, the signature cannot be checked: it cannot tell
    let (code, text) = said(&inspect(&["--key-file", "/nonexistent"], images.path()));
    assert_eq!(code, Some(3), "{text}");
    assert!(verdict(&text).contains("signing key"), "{text}");

    // a user who cannot read the images cannot tell either
    let out = Command::new(selfdump_bin())
        .arg("inspect")
        .arg(images.path())
        .uid(65534)
        .gid(65534)
        .output_guarded()
        .unwrap();
    let (code, text) = said(&out);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("cannot tell"), "{text}");
}

#[test]
fn damaged_or_unsigned_images_are_not_restorable_and_inspect_says_why() {
    let service = Service::start();
    let (images, _program) = checkpoint_and_kill(&service, 1);

    let cut = copy_of(images.path());
    let pages = image_files(cut.path())
        .into_iter()
        .find(|f| f.0.starts_with("pages-"))
        .unwrap()
        .0;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(cut.path().join(&pages))
        .unwrap();
    file.set_len(4096).unwrap();
    let (code, text) = said(&inspect(&[], cut.path()));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        verdict(&text).starts_with(&format!(
            "{pages} changed since the dump (4096 bytes, signed "
        )),
        "{text}"
    );

    let garbled = copy_of(images.path());
    std::fs::write(garbled.path().join(MANIFEST_FILE), b"garbage").unwrap();
    let (code, text) = said(&inspect(&[], garbled.path()));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        verdict(&text).starts_with("its signature does not verify"),
        "{text}"
    );

    // plain CRIU's images: restorable with --trust-unsigned only
    let unsigned = copy_of(images.path());
    std::fs::remove_file(unsigned.path().join(MANIFEST_FILE)).unwrap();
    let (code, text) = said(&inspect(&[], unsigned.path()));
    assert_eq!(code, Some(1), "{text}");
    assert!(verdict(&text).contains("--trust-unsigned"), "{text}");
    let refused = restore(unsigned.path()).expect_err("unsigned images restored");
    assert!(
        refused.contains("not made by a selfdump service") && refused.contains("--trust-unsigned"),
        "{refused}"
    );
}
