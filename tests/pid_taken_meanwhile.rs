//! A restore whose pid is taken after the check: `selfdump restore` checks
//! that the images' ids are free, but any process may take one before
//! CRIU clones the task (CRIU then fails with "Can't fork for PID: File
//! exists"). The restore says so, waits for the id again and tries once
//! more. Alone in its test binary: it steers the kernel's next pid
//! (`ns_last_pid`), which would disturb tests running beside it.

mod common;
use common::Guarded;

use common::*;
use std::process::Command;
use std::time::Duration;

/// A process started with `pid` (by `ns_last_pid`), or `None` if another
/// process took that pid first (tried again by the caller).
fn squat(pid: i32) -> Option<std::process::Child> {
    const LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    std::fs::write(LAST_PID, (pid - 1).to_string())
        .unwrap_or_else(|e| panic!("root cannot steer the next pid ({LAST_PID}: {e})"));
    let mut child = Command::new("sleep").arg("600").spawn_guarded().unwrap();
    // the next ids are the images' thread ids: steer this process's next
    // threads (and anyone's next process) away from them
    let pid_max: i32 = read("/proc/sys/kernel/pid_max".as_ref())
        .trim()
        .parse()
        .unwrap();
    let away = if pid + 200 < pid_max { pid + 200 } else { 300 };
    let _ = std::fs::write(LAST_PID, away.to_string());
    if child.id() as i32 == pid {
        return Some(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_pid_taken_after_the_check_is_waited_for_and_the_restore_tried_again() {
    use std::io::BufRead;
    let service = Service::start();
    let (images, program) = checkpoint_and_kill(&service, 0);
    let pid = program.pid;
    assert!(
        poll_for(Duration::from_secs(10), || process_state(pid).is_none()),
        "the original is gone"
    );
    // CRIU (started while the images are verified) takes its request 3 s
    // after the ids were found free: the pid is taken then
    let (_wrap, slow) = slow_criu(3);
    let mut restore = Command::new(selfdump_bin())
        .args(["restore", "--wait", "60", "--criu"])
        .arg(&slow.path)
        .arg(images.path())
        .env("RUST_LOG", "warn,selfdump::server::restore=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_guarded()
        .unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(restore.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let checked = said
        .iter()
        .find(|l| l.contains("the images' ids are free"))
        .unwrap_or_default();
    assert!(!checked.is_empty(), "the restore never checked the ids");
    // (the wrapper: a child of the restore named after its script)
    let restorer = restore.id() as i32;
    let mut wrapper = None;
    assert!(
        poll_for(Duration::from_secs(30), || {
            wrapper = children_of(restorer)
                .into_iter()
                .map(|(child, ..)| child)
                .find(|&child| comm(child).as_deref() == Some("slow-criu"));
            wrapper.is_some()
        }),
        "the restore never started CRIU"
    );
    // (and once the wrapper has forked its `sleep`: a fork of its own in the
    // instant the next pid is steered would take the pid itself)
    let wrapper_pid = wrapper.unwrap();
    assert!(
        poll_for(Duration::from_secs(30), || !children_of(wrapper_pid)
            .is_empty()),
        "the CRIU wrapper never started its sleep"
    );
    // (a race lost to another process or thread taking the pid first is
    // tried again, for as long as CRIU waits: a thread that took it, such as
    // an idle worker of a thread pool, lets it go when it exits)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut squatter = None;
    while squatter.is_none() && std::time::Instant::now() < deadline {
        squatter = squat(pid);
    }
    let Some(squatter) = squatter.as_mut() else {
        let holder = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| s.lines().take(4).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|_| "nobody now".into());
        kill_and_reap(wrapper.unwrap());
        let _ = restore.kill();
        let _ = restore.wait();
        panic!("another process or thread took pid {pid} first, for 2 s ({holder})");
    };
    // the first CRIU fails on the taken pid; the restore says it tries again
    let warned = said
        .iter()
        .find(|l| l.contains("trying once more"))
        .unwrap_or_default();
    // the pid is freed while the restore waits: the second CRIU restores
    let _ = squatter.kill();
    let _ = squatter.wait();
    let status = restore.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut restore.stdout.take().unwrap(), &mut out).unwrap();
    let all = reader.join().unwrap();
    assert!(warned.contains("trying once more"), "{all}");
    assert!(warned.contains(&format!("{pid}")), "names the pid: {all}");
    assert!(status.success(), "{all}");
    let restored: i32 = out.trim().parse().unwrap();
    assert_eq!(restored, pid);
    wait_for_line(&program.log, "the restored copy", |l| {
        l.starts_with("checkpoint restored: ")
    });
    kill_and_reap(restored);
}
