//! Programs started with `selfdump run` (a pid namespace of their own):
//! the service dumps the whole namespace, and its images restore as many
//! copies at once, each told its number and a fresh restore id.

mod common;
use common::Guarded;

use common::*;

/// The images' signed description (what `selfdump inspect` shows).
fn read_meta(images: &Path) -> Result<selfdump::server::images::ImageMeta, String> {
    selfdump::server::inspect::inspect(images, None)
        .map_err(|e| e.to_string())?
        .meta
        .ok_or_else(|| "no manifest".to_owned())
}
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `selfdump run` (or another starter) and the namespace under it, stopped
/// on drop: SIGTERM, which the run and the init pass on to the program,
/// then SIGKILL to the init if need be. (SIGKILL to `selfdump run` alone
/// would leave the namespace running: nothing may kill the init when its
/// parent dies, or restored copies would die with CRIU.)
struct Run(Child);

impl Run {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(self.0.id() as i32).unwrap();
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status);
        }
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for init in children_of(self.0.id()) {
            kill_and_reap(init);
        }
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop();
    }
}

fn children_of(parent: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// `selfdump run -- clone_worker --images DIR ARGS`, output appended to `log`.
fn start_isolated(socket: &Path, images: &Path, log: &Path, args: &[&str]) -> Run {
    Run(start_isolated_with(socket, images, log, args, &[]))
}

fn start_isolated_with(
    socket: &Path,
    images: &Path,
    log: &Path,
    args: &[&str],
    before: &[&str],
) -> Child {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let (program, pre): (std::path::PathBuf, Vec<String>) = match before.split_first() {
        None => (selfdump_bin(), vec!["run".into(), "--".into()]),
        Some((first, rest)) => (
            first.into(),
            rest.iter()
                .map(|s| s.to_string())
                .chain([
                    selfdump_bin().display().to_string(),
                    "__init".into(),
                    "--".into(),
                ])
                .collect(),
        ),
    };
    // each program in a directory of its own: CRIU's parasite makes
    // `proc.crtools` in the dumped task's working directory, and two dumps
    // at once in one directory fail ("Can't create a directory (-17)")
    Command::new(program)
        .current_dir(images)
        .args(pre)
        .arg(example("clone_worker"))
        .arg("--images")
        .arg(images)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .env("RUST_LOG", "warn")
        .spawn_guarded()
        .expect("start selfdump run")
}

/// `selfdump restore --copies N DIR`: the root pids, in copy order.
fn restore_copies(images: &Path, n: u32) -> Vec<i32> {
    let out = Command::new(selfdump_bin())
        .args(["restore", "--copies", &n.to_string(), "--criu"])
        .arg(criu().path)
        .arg(images)
        .env("RUST_LOG", "info")
        .output_guarded()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore --copies failed: {stderr}");
    eprintln!("{}", stderr.trim());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("one pid a line"))
        .collect()
}

fn lines_with(log: &Path, needle: &str) -> Vec<String> {
    read(log)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn wait_lines(log: &Path, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = lines_with(log, needle);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {n} x {needle:?}; output:\n{}",
            read(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `copy=K id=HEX` of a `... restored: memory=...` line, and the memory verdict.
fn copy_of(line: &str) -> (u32, String, String) {
    let word = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_owned()
    };
    (
        word("copy=").parse().expect("a copy number"),
        word("id="),
        word("memory="),
    )
}

fn pid_ns(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .unwrap()
        .ino()
}

fn nspid(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Whether any process is in the pid namespace `ns` (a `/proc/PID/ns/pid`
/// link's target).
fn in_namespace_exists(ns: &Path) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
            && std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|t| t == ns)
    })
}

fn alive_ticks(log: &Path, who: &str) -> usize {
    lines_with(log, &format!("{who} alive")).len()
}

#[test]
fn a_program_started_with_selfdump_run_checkpoints_its_whole_namespace() {
    let service = Service::start();
    let images = images_dir();
    let log = images.path().with_extension("log");
    let mut run = start_isolated(
        &service.socket,
        images.path(),
        &log,
        &["--mb", "4", "--secs", "600"],
    );
    let ready = wait_lines(&log, "original ready", 1);
    // pid 1 is the init (its reactor thread is 2), then the program
    assert!(ready[0].contains("pid 3 "), "{ready:?}");
    let line = wait_lines(&log, "original c", 1).pop().unwrap();
    assert!(line.starts_with("original continued"), "{line}");
    assert!(line.ends_with("2 processes"), "init and program: {line}");
    eprintln!("{line}");

    let meta = read_meta(images.path()).unwrap();
    assert!(meta.pid_namespace, "{meta:?}");
    assert!(!meta.shell_job, "the init leads its own session: {meta:?}");
    assert!(
        meta.copy_slot
            .as_deref()
            .is_some_and(|s| s.starts_with("pipe:[")),
        "{meta:?}"
    );
    // the dump's root is the init, the host's pid of the namespace's pid 1
    assert_eq!(nspid(meta.pid), format!("{}\t1", meta.pid));
    // `selfdump inspect` says so, and needs no host pid free
    let out = Command::new(selfdump_bin())
        .arg("inspect")
        .arg(images.path())
        .output_guarded()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("namespace: a whole pid namespace"),
        "{shown}"
    );
    assert!(shown.contains("each told its number"), "{shown}");
    assert!(shown.contains("pids:      free here"), "{shown}");

    // `selfdump run` passes SIGTERM on (init, then program): 128 + 15
    let status = run.stop().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    // the namespace is gone with its init
    assert!(!Path::new(&format!("/proc/{}", meta.pid)).exists());
}

#[test]
fn eight_copies_of_one_image_run_at_once_each_told_its_number() {
    let service = Service::start();
    let images = images_dir();
    let log = images.path().with_extension("log");
    let mut original = start_isolated(
        &service.socket,
        images.path(),
        &log,
        &["--mb", "32", "--secs", "600"],
    );
    let line = wait_lines(&log, "original continued", 1).pop().unwrap();
    eprintln!("{line}");
    // the original keeps running: copies need none of its pids
    let started = Instant::now();
    let pids = restore_copies(images.path(), 8);
    eprintln!(
        "8 copies restored in {:?} (all 8 criu restores)",
        started.elapsed()
    );
    assert_eq!(pids.len(), 8);
    let restored = wait_lines(&log, "restored: memory=", 8);
    let copies: Vec<_> = restored.iter().map(|l| copy_of(l)).collect();
    let mut numbers: Vec<u32> = copies.iter().map(|c| c.0).collect();
    numbers.sort();
    assert_eq!(numbers, (0..8).collect::<Vec<_>>(), "{restored:#?}");
    let ids: std::collections::BTreeSet<_> = copies.iter().map(|c| c.1.clone()).collect();
    assert_eq!(ids.len(), 8, "restore ids repeat: {restored:#?}");
    assert!(copies.iter().all(|c| c.2 == "ok"), "{restored:#?}");
    // each a pid 1 in a namespace of its own, all alive at once
    let namespaces: std::collections::BTreeSet<_> = pids.iter().map(|&p| pid_ns(p)).collect();
    assert_eq!(namespaces.len(), 8);
    for &pid in &pids {
        assert_eq!(nspid(pid), format!("{pid}\t1"));
    }
    assert!(
        original.0.try_wait().unwrap().is_none(),
        "the original runs on"
    );

    // killing copy 3 (its init: the namespace goes) leaves the others running
    let id3 = copies.iter().find(|c| c.0 == 3).unwrap().1.clone();
    let namespace3 = std::fs::read_link(format!("/proc/{}/ns/pid", pids[3])).unwrap();
    kill_and_reap(pids[3]);
    // gone once no process is left in its namespace (the kernel kills them
    // with their init)
    assert!(
        poll_for(Duration::from_secs(10), || !in_namespace_exists(
            &namespace3
        )),
        "copy 3's namespace outlived its init"
    );
    let dead = format!("copy=3 id={id3}");
    let dead_ticks = alive_ticks(&log, &dead);
    let ticks_of = |k: u32| {
        let id = &copies.iter().find(|c| c.0 == k).unwrap().1;
        alive_ticks(&log, &format!("copy={k} id={id}"))
    };
    let before: Vec<usize> = (0..8).map(ticks_of).collect();
    // the others tick on: each twice more, waited for
    assert!(
        poll_for(Duration::from_secs(30), || {
            (0..8)
                .filter(|&k| k != 3)
                .all(|k| ticks_of(k) >= before[k as usize] + 2)
        }),
        "a copy stopped when copy 3 was killed: ticks {before:?} then {:?}",
        (0..8).map(ticks_of).collect::<Vec<_>>()
    );
    assert_eq!(alive_ticks(&log, &dead), dead_ticks, "copy 3 still runs");
    for k in (0..8).filter(|&k| k != 3) {
        assert!(Path::new(&format!("/proc/{}", pids[k as usize])).exists());
    }
    for (k, &pid) in pids.iter().enumerate() {
        if k != 3 {
            kill_and_reap(pid);
        }
    }
    original.stop();
}

#[test]
fn a_copy_of_a_copy_restores_as_many_copies_again() {
    let service = Service::start();
    let images = images_dir();
    let again = images_dir();
    let log = images.path().with_extension("log");
    let again_arg = again.path().display().to_string();
    let mut original = start_isolated(
        &service.socket,
        images.path(),
        &log,
        &[
            "--mb",
            "8",
            "--secs",
            "600",
            "--again",
            &again_arg,
            "--again-copy",
            "1",
        ],
    );
    wait_lines(&log, "original continued", 1);
    original.stop();
    let first = restore_copies(images.path(), 2);
    let line = wait_lines(&log, "gen2 continued", 1).pop().unwrap();
    assert!(
        line.starts_with("copy=1 "),
        "copy 1 checkpoints again: {line}"
    );
    assert!(read_meta(again.path()).unwrap().pid_namespace);
    // the first generation may go: the second needs nothing of it
    for pid in first {
        kill_and_reap(pid);
    }
    let second = restore_copies(again.path(), 3);
    let restored = wait_lines(&log, "gen2 restored", 3);
    let mut numbers: Vec<u32> = restored.iter().map(|l| copy_of(l).0).collect();
    numbers.sort();
    assert_eq!(numbers, vec![0, 1, 2], "{restored:#?}");
    assert!(
        restored.iter().all(|l| l.ends_with("memory=ok")),
        "{restored:#?}"
    );
    for pid in second {
        kill_and_reap(pid);
    }
}

#[test]
fn a_namespace_whose_init_is_not_a_session_leader_is_refused_with_the_fix() {
    let service = Service::start();
    let images = images_dir();
    let log = images.path().with_extension("log");
    // `unshare -p -f` without `setsid`: the session leader is outside
    let _run = Run(start_isolated_with(
        &service.socket,
        images.path(),
        &log,
        &["--mb", "1", "--secs", "5"],
        &["unshare", "-p", "-f"],
    ));
    let line = wait_lines(&log, "original error", 1).pop().unwrap();
    assert!(
        line.contains("does not lead a session of its own"),
        "{line}"
    );
    assert!(line.contains("selfdump run"), "{line}");
}

#[test]
fn a_namespace_whose_init_is_not_the_callers_own_is_refused() {
    const NOBODY: u32 = 65534;
    let service = Service::start_with(|b| {
        b.policy(selfdump::server::Policy {
            allow_uids: [NOBODY].into(),
            ..Default::default()
        })
    });
    let images = images_dir();
    std::os::unix::fs::chown(images.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let log = images.path().with_extension("log");
    // a root init (the selfdump init run through unshare + setsid), the
    // program as uid 65534 under it
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let _run = Run(Command::new("unshare")
        .args(["-p", "-f", "setsid"])
        .arg(selfdump_bin())
        .args([
            "__init",
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(example("clone_worker"))
        .arg("--images")
        .arg(images.path())
        .arg("--socket")
        .arg(&service.socket)
        .args(["--mb", "1", "--secs", "5"])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn_guarded()
        .unwrap());
    let line = wait_lines(&log, "original error", 1).pop().unwrap();
    assert!(line.contains("the init of your pid namespace"), "{line}");
    assert!(line.contains("uid 0"), "{line}");
}

/// Whether CRIU can restore lazily here (userfaultfd for non-cooperative
/// processes); the lazy tests say so and skip when it cannot.
fn lazy_pages_supported() -> bool {
    let ok = Command::new(criu().path)
        .args(["check", "--feature", "uffd-noncoop"])
        .output_guarded()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(
            Limit::NoUffd,
            "`criu check --feature uffd-noncoop` fails: lazy restores are not tested",
        );
    }
    ok
}

/// A checkpointed `clone_worker` of `mb` MiB whose original is gone.
fn isolated_images(mb: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let service = Service::start();
    let images = images_dir();
    let log = images.path().with_extension("log");
    let mut original = start_isolated(
        &service.socket,
        images.path(),
        &log,
        &["--mb", mb, "--secs", "600"],
    );
    eprintln!(
        "{}",
        wait_lines(&log, "original continued", 1).pop().unwrap()
    );
    original.stop();
    (images, log)
}

#[test]
fn lazy_copies_run_before_their_memory_is_in_and_get_all_of_it() {
    if !lazy_pages_supported() {
        return;
    }
    let (images, log) = isolated_images("64");
    let started = Instant::now();
    let mut restore = Command::new(selfdump_bin())
        .args(["restore", "--copies", "2", "--lazy", "--criu"])
        .arg(criu().path)
        .arg(images.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_guarded()
        .unwrap();
    let mut stdout = std::io::BufReader::new(restore.stdout.take().unwrap());
    let mut pids = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        pids.push(line.trim().parse::<i32>().expect("a pid"));
    }
    eprintln!(
        "2 lazy copies of 64 MiB running after {:?}",
        started.elapsed()
    );
    let out = restore.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}", stderr.trim());
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("all pages loaded").count(), 2, "{stderr}");
    let restored = wait_lines(&log, "restored: memory=", 2);
    assert!(
        restored.iter().all(|l| l.ends_with("memory=ok")),
        "{restored:#?}"
    );
    let mut numbers: Vec<u32> = restored.iter().map(|l| copy_of(l).0).collect();
    numbers.sort();
    assert_eq!(numbers, vec![0, 1]);
    for pid in pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "copy {pid} died"
        );
        kill_and_reap(pid);
    }
}

/// A CRIU whose page daemon (`criu lazy-pages`) the test controls: the
/// daemon writes its pid to `pid_file`, and is stopped (SIGSTOP: stopped
/// for certain, or ended) as soon as `criu restore` is done, before the
/// restore command hears of the copy: from then on it serves no page
/// until the test lets it go or kills it. Every command is CRIU's own
/// otherwise.
fn criu_with_held_page_daemon(pid_file: &Path) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("criu");
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
         lazy-pages) echo $$ >{pids}.tmp && mv {pids}.tmp {pids}; exec {real} \"$@\" ;;\n\
         restore) {real} \"$@\"; s=$?; d=$(cat {pids}); kill -STOP $d\n\
           while grep -qs '^State:.[RSD]' /proc/$d/status; do :; done; exit $s ;;\n\
         *) exec {real} \"$@\" ;;\n\
         esac\n",
        real = criu().path.display(),
        pids = pid_file.display(),
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, PermissionsExt::from_mode(0o755)).unwrap();
    (dir, wrapper)
}

/// `selfdump restore --copies 1 --lazy` of `images` through `criu`; the
/// copy's pid and the running command, or its output if it printed none.
fn lazy_restore(images: &Path, criu: &Path) -> Result<(i32, std::process::Child), String> {
    let mut restore = Command::new(selfdump_bin())
        .args(["restore", "--copies", "1", "--lazy", "--criu"])
        .arg(criu)
        .arg(images)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_guarded()
        .unwrap();
    let mut stdout = std::io::BufReader::new(restore.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    match line.trim().parse::<i32>() {
        Ok(pid) => Ok((pid, restore)),
        Err(_) => {
            let out = restore.wait_with_output().unwrap();
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

#[test]
fn a_lazy_copy_whose_page_daemon_dies_is_killed_with_the_reason() {
    if !lazy_pages_supported() {
        return;
    }
    let (images, _log) = isolated_images("512");
    let held = tempfile::tempdir().unwrap();
    let pid_file = held.path().join("daemon.pid");
    let (_wrapper_dir, wrapper) = criu_with_held_page_daemon(&pid_file);
    // the daemon is held once the copy is restored, unless it had loaded
    // every page by then (a fast machine): then once more
    let mut attempts = 0;
    let (pid, restore, daemon) = loop {
        let _ = std::fs::remove_file(&pid_file);
        let (pid, mut restore) =
            lazy_restore(images.path(), &wrapper).unwrap_or_else(|e| panic!("no copy: {e}"));
        let daemon: i32 = read(&pid_file).trim().parse().expect("the daemon's pid");
        if process_state(daemon) == Some('T') {
            break (pid, restore, daemon);
        }
        // it had ended: the restore ends too
        attempts += 1;
        assert!(attempts < 5, "the daemon always loaded every page first");
        let _ = restore.wait();
        kill_and_reap(pid);
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let out = restore.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}", stderr.trim());
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("all pages loaded"), "{stderr}");
    assert!(stderr.contains("lazy-pages daemon ended"), "{stderr}");
    assert!(stderr.contains("the copy was killed"), "{stderr}");
    assert!(
        stderr.contains("lazy-pages.log"),
        "names the daemon's log: {stderr}"
    );
    // the daemon's log is kept for the operator: this test's goes
    if let Some(dir) = stderr
        .split_whitespace()
        .find(|w| w.ends_with("/lazy-pages.log"))
        .and_then(|log| Path::new(log).parent())
    {
        assert!(dir.join("lazy-pages.log").exists(), "the log is kept");
        let _ = std::fs::remove_dir_all(dir);
    }
    // the copy is gone (a zombie at most, until reaped), never hanging
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(process_state(pid), None | Some('Z')) {
        assert!(
            Instant::now() < deadline,
            "the copy still runs: {:?}",
            process_state(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_and_reap(pid);
}

#[test]
fn the_library_twin_starts_a_program_isolated_that_checkpoints_unchanged() {
    let service = Service::start();
    let images = images_dir();
    let (log, out) = append_log(images.path());
    let mut cmd = selfdump::isolate::Isolated::new(example("clone_worker"))
        .args(["--mb", "1", "--secs", "600", "--socket"])
        .arg(&service.socket)
        .arg("--images")
        .arg(images.path())
        .selfdump(selfdump_bin())
        .command();
    let mut child = Run(cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn_guarded()
        .unwrap());
    let line = wait_lines(&log, "original c", 1).pop().unwrap();
    assert!(line.starts_with("original continued"), "{line}");
    assert!(read_meta(images.path()).unwrap().pid_namespace);
    // SIGINT passed on: 128 + 2
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.0.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    assert_eq!(child.0.wait().unwrap().code(), Some(128 + 2));
}

#[test]
fn a_plain_restore_of_isolated_images_needs_no_free_pid_and_has_no_copy_number() {
    let service = Service::start();
    let images = images_dir();
    let log = images.path().with_extension("log");
    // the original keeps running: its pids (1, 3 in its namespace) stay taken
    let _original = start_isolated(
        &service.socket,
        images.path(),
        &log,
        &["--mb", "1", "--secs", "600"],
    );
    wait_lines(&log, "original continued", 1);
    let pid = restore(images.path()).expect("restores beside the original");
    let line = wait_lines(&log, "restored: memory=", 1).pop().unwrap();
    assert!(line.starts_with("copy=none id="), "{line}");
    assert!(line.ends_with("memory=ok"), "{line}");
    let id = line.split_whitespace().nth(1).unwrap();
    assert_ne!(id, "id=00000000000000000000000000000000", "{line}");
    kill_and_reap(pid);
}

#[test]
fn copies_of_images_of_a_single_process_are_refused_saying_why() {
    let service = Service::start();
    let images = images_dir();
    let mut program = Program::start(
        &service,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
    );
    program.wait_for("the checkpoint", |l| l.starts_with("checkpoint continued"));
    program.wait();
    assert!(!read_meta(images.path()).unwrap().pid_namespace);
    let out = Command::new(selfdump_bin())
        .args(["restore", "--copies", "2", "--criu"])
        .arg(criu().path)
        .arg(images.path())
        .output_guarded()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not of a whole pid namespace"), "{stderr}");
    assert!(stderr.contains("selfdump run"), "{stderr}");
    assert!(out.stdout.is_empty(), "no copy started");
}

#[test]
fn a_process_that_entered_the_namespace_from_outside_is_refused() {
    let service = Service::start();
    let images = images_dir();
    let log = images.path().with_extension("log");
    let run = start_isolated(
        &service.socket,
        images.path(),
        &log,
        &["--mb", "1", "--secs", "600"],
    );
    wait_lines(&log, "original continued", 1);
    let init = children_of(run.0.id());
    assert_eq!(init.len(), 1, "one init under selfdump run");
    // `nsenter -p` forks its child into the namespace: its parent is outside
    let entered = images_dir();
    let entered_log = entered.path().with_extension("log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&entered_log)
        .unwrap();
    let mut nsenter = Command::new("nsenter")
        .arg("-t")
        .arg(init[0].to_string())
        .arg("-p")
        .arg("--")
        .arg(example("clone_worker"))
        .arg("--images")
        .arg(entered.path())
        .arg("--socket")
        .arg(&service.socket)
        .args(["--mb", "1", "--secs", "1"])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn_guarded()
        .unwrap();
    let line = wait_lines(&entered_log, "original ", 2).pop().unwrap();
    assert!(line.starts_with("original error"), "{line}");
    assert!(
        line.contains("entered the namespace from outside"),
        "{line}"
    );
    let _ = nsenter.wait();
}

/// The `.selfdump-restore-*` directories (verified sets) in `images`.
fn verified_sets(images: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(images)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".selfdump-restore-")
        })
        .map(|e| e.path())
        .collect()
}

/// One round from `images`: `n` copies, each `Restored` with its memory
/// intact (its `restored: memory=ok` line), all killed before returning.
fn round_of_copies(
    images: &selfdump::server::copies::VerifiedImages,
    settings: &selfdump::server::restore::RestoreSettings,
    log: &Path,
    n: u32,
    lazy: bool,
) -> selfdump::server::copies::Copies {
    let before = lines_with(log, "restored: memory=").len();
    let copies = images
        .restore_copies(settings, n, lazy)
        .expect("a round of copies");
    assert_eq!(copies.copies.len(), n as usize);
    let restored = wait_lines(log, "restored: memory=", before + n as usize);
    let new = &restored[before..];
    assert!(new.iter().all(|l| l.ends_with("memory=ok")), "{new:#?}");
    let mut numbers: Vec<u32> = new.iter().map(|l| copy_of(l).0).collect();
    numbers.sort();
    assert_eq!(numbers, (0..n).collect::<Vec<_>>(), "{new:#?}");
    copies
}

#[test]
fn images_verified_once_restore_round_after_round_without_hashing_again() {
    use selfdump::server::copies::VerifiedImages;
    use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
    use selfdump::server::restore::{RestoreError, RestoreSettings};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (images, log) = isolated_images("8");
    // (every CRIU it starts is recorded: that none ran is then a fact)
    let recording = RecordingCriu::new();
    let settings = RestoreSettings::new(
        recording.criu.clone(),
        Some(Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap()),
    );
    let verified = VerifiedImages::open(&settings, images.path()).unwrap();
    assert!(verified.hashed() > 8 << 20, "hashes the pages once");
    let lazy = lazy_pages_supported();
    for round in 0..4 {
        // the last round lazily, where CRIU can
        let copies = round_of_copies(&verified, &settings, &log, 2, lazy && round == 3);
        eprintln!(
            "round {round}: 2 copies running after {:?}, verification {:?}, {} bytes hashed",
            copies.elapsed, copies.verify, copies.hashed
        );
        match round {
            0 => assert_eq!(
                copies.hashed,
                verified.hashed(),
                "the first round's is open's"
            ),
            _ => assert_eq!(copies.hashed, 0, "round {round} hashed the images again"),
        }
        for copy in &copies.copies {
            kill_and_reap(copy.pid);
        }
        copies.supervise();
    }
    // the verified set is made in the generation `latest` names
    let generation = images.path().join("latest");
    assert_eq!(verified_sets(&generation).len(), 1, "one verified set");

    // root's checkpoint is hard-linked into the verified set: the files in
    // the images directory are the same inodes
    let set = verified_sets(&generation).pop().unwrap();
    let linked: Vec<(String, u64)> = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    let (name, _) = linked
        .iter()
        .find(|(name, ino)| {
            let original = std::fs::symlink_metadata(generation.join(name)).unwrap();
            original.ino() == *ino && original.nlink() >= 2
        })
        .unwrap_or_else(|| panic!("no image file is hard-linked: {linked:?}"))
        .clone();
    let original = generation.join(&name);
    let mode = std::fs::metadata(&original).unwrap().permissions().mode();
    assert_eq!(mode & 0o022, 0, "{name}: only root writes it ({mode:o})");
    // a mistake of root's that would let others rewrite verified bytes
    std::fs::set_permissions(&original, PermissionsExt::from_mode(mode | 0o002)).unwrap();
    let before = lines_with(&log, "restored: memory=").len();
    let ran = recording.commands().len();
    match verified.restore_copies(&settings, 2, false) {
        Err(RestoreError::Refused(why)) => {
            assert!(why.contains(&name), "names the file: {why}");
            assert!(
                why.contains("changed since the images were verified; verify them again"),
                "{why}"
            );
        }
        other => panic!("a changed set must be refused: {other:?}"),
    }
    // no CRIU was started for it (other tests of this process start CRIUs
    // of their own meanwhile: no child count here), so no copy ran
    assert_eq!(
        recording.started_since(ran),
        Vec::<String>::new(),
        "a refused round started CRIU"
    );
    assert_eq!(
        lines_with(&log, "restored: memory=").len(),
        before,
        "nothing ran"
    );
    // chowned to nobody (its mode back): refused as well
    std::fs::set_permissions(&original, PermissionsExt::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(&original, Some(65534), None).unwrap();
    let refused = verified.restore_copies(&settings, 1, false).unwrap_err();
    assert!(refused.to_string().contains(&name), "{refused}");
    drop(verified);
    assert!(
        verified_sets(&generation).is_empty(),
        "the verified set is removed with its last holder"
    );

    // a round's copies keep the set while they may need it, even once the
    // `VerifiedImages` is gone
    std::os::unix::fs::chown(&original, Some(0), None).unwrap();
    let verified = VerifiedImages::open(&settings, images.path()).unwrap();
    let copies = round_of_copies(&verified, &settings, &log, 1, lazy);
    drop(verified);
    assert_eq!(
        verified_sets(&generation).len(),
        1,
        "dropped under the round's copies"
    );
    for copy in &copies.copies {
        kill_and_reap(copy.pid);
    }
    copies.supervise();
    assert!(verified_sets(&generation).is_empty());
}
