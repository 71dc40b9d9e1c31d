//! A copy (`clone_stamp --exit`) that exits within milliseconds of its restore can make CRIU 4.1.1
//! fail ("Unable to detach") and hang; `restore_copies` must then end CRIU
//! and the copy at its deadline and say so, never wait for ever.

mod common;

use common::*;
use selfdump::server::copies::restore_copies;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::RestoreSettings;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn copies_that_exit_at_once_never_leave_the_restore_hanging() {
    let service = Service::start();
    let images = images_dir();
    let (log, out) = append_log(images.path());
    // the original and every copy exit right after their checkpoint returns
    let status = Command::new(selfdump_bin())
        .args(["run", "--"])
        .arg(example("clone_stamp"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .arg("--exit")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    assert!(status.success(), "{}", read(&log));
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
    // nothing of the copies is left (soon): no `criu restore`, no copy
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
