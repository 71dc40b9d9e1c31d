//! The CRIU that dumps a non-root caller runs as the caller, with one
//! capability: what the caller (uid 65534) can and cannot do to it. It can
//! signal it, which fails its own dump only, with an answer that says so;
//! it cannot ptrace it, read its memory, environment or fds, take an fd
//! from it, or reach the directory it writes into. And where CRIU cannot
//! run as the caller, the operator's fallback applies.

mod common;

use common::*;
use selfdump::server::Policy;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

const NOBODY: u32 = 65534;
/// `CAP_CHECKPOINT_RESTORE` alone, as `/proc/<pid>/status` shows a set.
const CHECKPOINT_RESTORE_ONLY: &str = "0000010000000000";

fn allow_nobody(b: selfdump::server::Builder) -> selfdump::server::Builder {
    b.policy(Policy {
        allow_uids: [NOBODY].into_iter().collect(),
        ..Policy::default()
    })
}

fn nobodys_dir() -> tempfile::TempDir {
    let dir = images_dir();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// Runs `work` on a thread whose every id is nobody's (and so holds no
/// capability), as a process of the caller's would.
fn as_nobody<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let dumpable = rustix::process::dumpable_behavior().unwrap();
    let result = std::thread::spawn(move || {
        let id = rustix::process::Uid::from_raw(NOBODY);
        let gid = rustix::process::Gid::from_raw(NOBODY);
        rustix::thread::set_thread_groups(&[]).unwrap();
        rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
        rustix::thread::set_thread_res_uid(id, id, id).unwrap();
        let caps = rustix::thread::capabilities(None).unwrap();
        assert!(caps.effective.is_empty() && caps.permitted.is_empty());
        work()
    })
    .join()
    .unwrap();
    // (a thread's id change makes the process non-dumpable)
    rustix::process::set_dumpable_behavior(dumpable).unwrap();
    result
}

/// The fields of `/proc/<pid>/status` that say who a process is.
fn identity(pid: i32) -> Vec<(String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let wanted = [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
    ];
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| wanted.contains(k))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// CRIU's open fds (read as root): its channel to the service, the
/// directory it writes into, the images it is writing...
fn open_fds_of(criu: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{criu}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Lets a stopped CRIU go on when dropped, even when an assertion fails
/// first (else its dump would wait for its time limit).
struct Held(i32);

impl Drop for Held {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

/// A nobody program whose dump is held (its CRIU stopped, still tracing
/// it) mid-dump; tries again if a dump ends before CRIU could be stopped.
fn held_mid_dump(socket: &Path, images: &Path) -> (Program, i32) {
    for _ in 0..5 {
        let mut program = Program::start_on(
            socket,
            images,
            &[
                "--alloc-mb",
                "256",
                "--at",
                "1",
                "--until",
                "100000",
                "--interval-ms",
                "20",
            ],
            Some(NOBODY),
        );
        if wait_seized(program.pid, Duration::from_secs(60))
            && let Some(criu) = stop_dumping_criu(program.pid)
        {
            return (program, criu);
        }
        program.kill();
    }
    panic!("CRIU always finished before it could be stopped");
}

#[test]
fn the_callers_criu_runs_as_the_caller_with_one_capability_out_of_its_reach() {
    let service = Service::start_with(allow_nobody);
    let images = nobodys_dir();
    let (program, criu) = held_mid_dump(&service.socket, images.path());
    let held = Held(criu);

    let who = identity(criu);
    eprintln!(
        "/proc/{criu}/status of the CRIU dumping uid {NOBODY}'s pid {}:",
        program.pid
    );
    for (k, v) in &who {
        eprintln!("  {k}:\t{v}");
    }
    let field = |k: &str| who.iter().find(|f| f.0 == k).unwrap().1.clone();
    assert_eq!(field("Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(field("Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(field("Groups"), "");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(field(set), CHECKPOINT_RESTORE_ONLY, "{set}: one capability");
    }
    assert_eq!(field("NoNewPrivs"), "1");

    let fds = open_fds_of(criu);
    assert!(
        fds.len() >= 4,
        "CRIU holds its channel, its directory...: {fds:?}"
    );
    let staging = images.path().join(&staging_dirs(images.path())[0]);
    let tried = as_nobody(move || attack(criu, &fds, &staging));
    let expected = [
        "signal: allowed",
        "ptrace attach: EPERM",
        "mem: EACCES",
        "environ: EACCES",
        "fd links: EACCES",
        "fd opens: EACCES",
        "cwd: EACCES",
        "pidfd_getfd: EPERM",
        "staging directory: EACCES",
        "directory CRIU writes into: EACCES",
    ];
    assert_eq!(tried, expected);

    drop(held);
    let line = program.outcome_or_state();
    assert!(line.starts_with("checkpoint continued"), "{line}");
}

/// What uid nobody gets when it goes for its CRIU, one line per attempt
/// (per kind of attempt, for all of CRIU's `fds`: the same answer for
/// every fd, or each answer).
fn attack(criu: i32, fds: &[i32], staging: &Path) -> Vec<String> {
    use rustix::io::Errno;
    let errno = |r: Result<(), Errno>| match r {
        Ok(()) => "allowed".to_owned(),
        Err(Errno::PERM) => "EPERM".to_owned(),
        Err(Errno::ACCESS) => "EACCES".to_owned(),
        Err(e) => format!("errno {}", e.raw_os_error()),
    };
    let io = |r: std::io::Result<()>| errno(r.map_err(|e| Errno::from_io_error(&e).unwrap()));
    let pid = rustix::process::Pid::from_raw(criu).unwrap();
    let proc = |f: &str| format!("/proc/{criu}/{f}");
    let mut out = vec![format!(
        "signal: {}",
        errno(rustix::process::test_kill_process(pid))
    )];
    let attached = nix::sys::ptrace::attach(nix::unistd::Pid::from_raw(criu))
        .map_err(|e| Errno::from_raw_os_error(e as i32));
    out.push(format!("ptrace attach: {}", errno(attached)));
    out.push(format!(
        "mem: {}",
        io(std::fs::File::open(proc("mem")).map(drop))
    ));
    out.push(format!(
        "environ: {}",
        io(std::fs::read(proc("environ")).map(drop))
    ));
    let per_fd = |what: &str, each: &dyn Fn(i32) -> String| {
        let mut answers: Vec<String> = fds.iter().map(|&fd| each(fd)).collect();
        answers.dedup();
        format!("{what}: {}", answers.join(", "))
    };
    let fd = |n: i32| proc(&format!("fd/{n}"));
    out.push(per_fd("fd links", &|n| {
        io(std::fs::read_link(fd(n)).map(drop))
    }));
    out.push(per_fd("fd opens", &|n| {
        io(std::fs::File::open(fd(n)).map(drop))
    }));
    out.push(format!(
        "cwd: {}",
        io(std::fs::read_link(proc("cwd")).map(drop))
    ));
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    out.push(per_fd("pidfd_getfd", &|n| {
        let taken =
            rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty());
        errno(taken.map(|fd| assert!(fd.as_raw_fd() >= 0)))
    }));
    out.push(format!(
        "staging directory: {}",
        io(std::fs::read_dir(staging).map(drop))
    ));
    out.push(format!(
        "directory CRIU writes into: {}",
        io(std::fs::metadata(staging.join("criu")).map(drop))
    ));
    out
}

/// The uid of a process.
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_caller_that_kills_its_criu_fails_its_own_dump_only_and_is_told_so() {
    // CRIU starts 2 s late: the caller kills it before it touches the tree,
    // whatever the machine's speed
    let (_wrapper, slow) = slow_criu(2);
    let service = Service::start_with(|b| allow_nobody(b).criu(slow).warm_workers(0));
    let images = nobodys_dir();
    let program = Program::start_as(
        &service,
        images.path(),
        &["--at", "1", "--until", "100000", "--interval-ms", "20"],
        Some(NOBODY),
    );
    let mut criu = None;
    assert!(
        poll_for(Duration::from_secs(30), || {
            criu = own_children()
                .into_iter()
                .find(|(pid, _, comm)| comm == "slow-criu" && uid_of(*pid) == Some(NOBODY))
                .map(|(pid, ..)| pid);
            criu.is_some()
        }),
        "no CRIU of uid {NOBODY} started"
    );
    let group = rustix::process::Pid::from_raw(criu.unwrap()).unwrap();
    let killed = as_nobody(move || {
        rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
    });
    assert_eq!(killed, Ok(()), "the caller may signal its own CRIU");
    let line = program.outcome_or_state();
    assert!(
        line.starts_with("checkpoint error: ")
            && line.contains("criu was killed by signal 9 (SIGKILL)")
            && line.contains("ran as your uid 65534, so any process of that uid may signal"),
        "{line}"
    );
    let counted = program.output().matches("count ").count();
    program.wait_for("counting on", |l| {
        l.starts_with("count ") && program.output().matches("count ").count() > counted + 2
    });

    // nobody else's dump suffers: root checkpoints through the same service
    let other = images_dir();
    let mut root = Program::start(&service, other.path(), &["--at", "1", "--until", "2"]);
    let line = root.outcome_or_state();
    assert!(line.starts_with("checkpoint continued"), "{line}");
    root.wait();
}
