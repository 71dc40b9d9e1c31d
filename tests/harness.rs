//! The README's harness path, end to end with small sizes: the `harness`
//! example warms up under `selfdump run`, checkpoints and exits; 8 copies
//! restored from its images each run the measured workload and report.

mod common;
use common::Guarded;

use common::*;
use std::process::{Command, Stdio};

#[test]
fn the_harness_example_warms_once_and_eight_copies_each_measure_and_report() {
    let service = Service::start();
    let images = images_dir();
    let (log, out) = append_log(images.path());
    // 1. warm up and checkpoint, isolated; the original exits after its dump
    let status = Command::new(selfdump_bin())
        .args(["run", "--"])
        .arg(example("harness"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .args(["--mb", "4", "--lookups", "20000"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .env("RUST_LOG", "warn")
        .status_guarded()
        .unwrap();
    let text = read(&log);
    assert!(status.success(), "{status:?}:\n{text}");
    assert!(text.contains("original warm: 524288 keys"), "{text}");
    assert!(text.contains("original checkpointed"), "{text}");

    // 2. 8 copies at once
    let restored = Command::new(selfdump_bin())
        .args(["restore", "--copies", "8", "--criu"])
        .arg(criu().path)
        .arg(images.path())
        .env("RUST_LOG", "info")
        .output_guarded()
        .unwrap();
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert!(restored.status.success(), "{stderr}");
    let pids = String::from_utf8_lossy(&restored.stdout).lines().count();
    assert_eq!(pids, 8, "{stderr}");

    // 3. each copy measured and reported, then exited
    let summary = Command::new(example("harness"))
        .arg("--summary")
        .arg(&log)
        .args(["--wait", "8"])
        .output_guarded()
        .unwrap();
    let shown = String::from_utf8_lossy(&summary.stdout);
    eprintln!("{shown}");
    assert!(summary.status.success(), "{shown}\n{}", read(&log));
    assert!(
        shown.contains("8 copies, 8 distinct restore ids"),
        "{shown}"
    );
    assert!(shown.contains("0 with a damaged table"), "{shown}");
    for k in 0..8 {
        assert!(shown.contains(&format!("result copy={k} ")), "{shown}");
    }
}
