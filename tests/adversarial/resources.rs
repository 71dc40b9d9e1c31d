//! Attacks on what the service holds (the resource rule: nothing a client
//! does makes the service exit or stop serving root) and on the caller
//! checks that issue 8 tightened: fd exhaustion under a 1024 fd limit,
//! results never collected, a caller with permitted capabilities, a
//! zombie child, and probing for other processes' job ids.

use crate::Ctx;
use crate::common::Guarded;
use crate::common::*;
use crate::serve::ServeProcess;
use crate::support::*;
use selfdump::proto::{self, JobId, Request, Response};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The counter example in one of its own modes (`--flood`, `--unclaimed`),
/// as `uid`, its output in a file next to `dir`.
fn counter_mode(dir: &Path, name: &str, args: &[&str], uid: Option<u32>) -> Program {
    let log = dir.join(format!("{name}.log"));
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut cmd = Command::new(example("counter"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let child = cmd.spawn_guarded().expect("start counter");
    Program {
        pid: child.id() as i32,
        child: Some(child),
        log,
    }
}

/// The fd limit of the `selfdump serve` under attack, soft and hard (so
/// raising the soft limit to the hard one gains nothing).
const FD_LIMIT: u64 = 1024;

/// `selfdump serve` on `NAME.sock` in `dir`, its fd limit [`FD_LIMIT`].
fn limited_serve(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, ServeProcess) {
    let socket = dir.join(format!("{name}.sock"));
    let serve = ServeProcess::start(
        &socket,
        &dir.join(format!("{name}.log")),
        extra,
        Some(FD_LIMIT),
    );
    (socket, serve)
}

/// How many fds process `pid` holds.
fn fd_count(pid: i32) -> usize {
    crate::fds::raw_fds(pid).len()
}

/// Several processes of another uid hold 2000 idle connections to a
/// `selfdump serve` whose fd limit is 1024, soft and hard. Three times:
///
/// 1. default limits: the flood beyond the per-uid limit is refused as
///    busy; root is served while the flood is held;
/// 2. connection limits raised far past what 1024 fds hold: the service
///    lowers its limits to fit its fds (and root is not held to the
///    global limit): still no fd runs out, root is served meanwhile;
/// 3. the soft fd limit of the running service lowered to 48 (as if set
///    far too low), then the flood: the fds run out (`EMFILE` at
///    `accept`, the caller's pidfd or the request's fd); the service must
///    not exit, must answer root and further connections at once (busy,
///    retry later) rather than leave them hanging, and once the flood
///    goes (and the limit is back) root is served.
pub fn fd_exhaustion(ctx: &mut Ctx) -> String {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-fds")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let flood = |socket: &Path, phase: &str| -> (Vec<Program>, String) {
        let flooders: Vec<Program> = (0..4)
            .map(|i| {
                counter_mode(
                    dir.path(),
                    &format!("flood-{phase}-{i}"),
                    &["--flood", socket.to_str().unwrap(), "500"],
                    Some(NOBODY),
                )
            })
            .collect();
        let held: Vec<String> = flooders
            .iter()
            .map(|f| f.wait_for("held", |l| l.starts_with("held") || l.contains("failed")))
            .collect();
        (flooders, held.join(", "))
    };
    let root_checkpoint = |socket: &Path| -> (String, Duration) {
        let images = images_dir();
        let asked = Instant::now();
        let mut root = Program::start_on(
            socket,
            images.path(),
            &args("--at 1 --until 2 --interval-ms 20"),
            None,
        );
        let line = outcome(&root);
        let took = asked.elapsed();
        assert!(root.wait().success());
        (line, took)
    };
    let mut said = Vec::new();

    // 1 and 2: the service stays within its fds, root is served meanwhile
    for (phase, extra) in [
        ("default", &[][..]),
        (
            "raised",
            &[
                "--max-connections",
                "4000",
                "--max-connections-per-uid",
                "4000",
            ][..],
        ),
    ] {
        let (socket, mut serve) = limited_serve(dir.path(), phase, extra);
        let before = fd_count(serve.pid());
        let (mut flooders, held) = flood(&socket, phase);
        let during = fd_count(serve.pid());
        let (line, took) = root_checkpoint(&socket);
        assert!(line.starts_with("checkpoint continued"), "{line}");
        serve.assert_running();
        let log = read(&serve.log);
        assert!(!log.contains("Too many open files"), "{log}");
        assert!(during < FD_LIMIT as usize - 64, "{during} fds held");
        let lowered = log
            .lines()
            .find(|l| l.contains("max_connections lowered"))
            .and_then(|l| l.split("lowered ").nth(1))
            .and_then(|l| l.split(" (raise").next())
            .map(|n| format!(" (lowered {n})"))
            .unwrap_or_default();
        if phase == "raised" {
            assert!(!lowered.is_empty(), "{log}");
        }
        said.push(format!(
            "{phase} limits{lowered}: {held}; service at {during} fds (from {before}), root \
             served meanwhile in {took:.1?}"
        ));
        for f in &mut flooders {
            f.kill();
        }
    }

    // 3. the fds do run out: the soft fd limit of the running service is
    // lowered far below what the flood takes; idle connections are not
    // cut meanwhile (a long request timeout)
    // (with its warm criu worker: its link is told apart from other fds
    // by what it leads to, see `fds.rs`)
    let (socket, mut serve) = limited_serve(dir.path(), "exhausted", &["--request-timeout", "60"]);
    // (identified once it has answered something: "serving on" is logged
    // before its signal handling opens its fds; and once its worker waits)
    let _ = refusal(exchange(&socket, &frame_with_body(b"x"), &[]));
    poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
        match crate::fds::waiting_workers_of(serve.pid()).len() {
            1 => Ok(()),
            n => Err(format!("{n} warm workers wait, not 1")),
        }
    });
    let before = crate::fds::fds_of(serve.pid());
    ctx.reached(format!(
        "phases 1-2: the flood held against limits default and raised, root served meanwhile; \
         phase 3: selfdump serve (pid {}, one warm worker) with {} fds identified",
        serve.pid(),
        before.len()
    ));
    let serve_pid = serve.pid();
    let set_limit = |n: u64| {
        rustix::process::prlimit(
            rustix::process::Pid::from_raw(serve_pid),
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(FD_LIMIT),
            },
        )
        .unwrap();
    };
    // a limit far too low for the flood (but above the fds the service
    // opened at start, its reserve fd among them)
    const LOW: u64 = 48;
    set_limit(LOW);
    let (mut flooders, held) = flood(&socket, "exhausted");
    poll_until(Duration::from_secs(30), Duration::from_millis(20), || {
        serve.assert_running();
        if read(&serve.log).contains("Too many open files") {
            return Ok(());
        }
        Err(format!(
            "the service never ran out of fds:\n{}",
            read(&serve.log)
        ))
    });
    // root now: answered at once (busy, out of fds), not left hanging
    let (meanwhile, answered_in) = root_checkpoint(&socket);
    assert!(
        meanwhile.contains("refused (Busy)") && meanwhile.contains("retry later"),
        "{meanwhile}"
    );
    serve.assert_running();
    // more connections meanwhile: all answered too
    let mut more = counter_mode(
        dir.path(),
        "flood-more",
        &["--flood", socket.to_str().unwrap(), "500"],
        Some(NOBODY),
    );
    let more_held = more.wait_for("held", |l| l.starts_with("held") || l.contains("failed"));
    serve.assert_running();
    more.kill();
    for f in &mut flooders {
        f.kill();
    }
    set_limit(FD_LIMIT);
    let (line, took) = root_checkpoint(&socket);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    // by identity: no fd the service did not hold before the flood (its
    // warm worker's link may be a new one: there is one again)
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let now = crate::fds::fds_of(serve.pid());
        let new = crate::fds::new_fds(&before, &now);
        if new.is_empty() && crate::fds::waiting_workers_of(serve.pid()).len() == 1 {
            return Ok(());
        }
        Err(format!(
            "the service holds fds it did not before the flood: {new:?} (before: {before:?})"
        ))
    });
    serve.assert_running();
    let log = read(&serve.log);
    let paths: Vec<&str> = [
        ("accepting a connection failed", "accept"),
        ("SO_PEERPIDFD failed (EMFILE", "the caller's pidfd"),
        ("cannot receive its fds", "the request's fd"),
    ]
    .into_iter()
    .filter(|(line, _)| log.contains(line))
    .map(|(_, path)| path)
    .collect();
    said.push(format!(
        "fd limit of the running service lowered to {LOW}, flood ({held}): out of fds at {}; \
         root answered in {answered_in:.1?}: `{}`; 500 more connections answered ({more_held}); \
         {} warning line(s) logged; service kept running; once the flood went and the limit \
         was back, root served in {took:.1?}, its fds the same {} as before (by identity)",
        paths.join(", "),
        short(&meanwhile),
        log.lines().filter(|l| l.contains("WARN")).count(),
        before.len(),
    ));
    ctx.reached(format!("phase 3: out of fds at {}", paths.join(", ")));
    let pid = serve.pid();
    ctx.adopt_process(socket, Box::new((serve, dir)), pid, 1);
    format!("survived: {}", said.join(" | "))
}

/// The job ids a `--unclaimed` counter printed.
fn printed_jobs(program: &Program) -> Vec<JobId> {
    program
        .output()
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("job ")?.split_whitespace().skip(1);
            Some(JobId {
                service: u64::from_str_radix(w.next()?, 16).ok()?,
                seq: w.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// A live process asks for many dumps by hand and never collects their
/// results: the service's fds stay bounded (a finished result holds
/// none), the per-uid cap expires the oldest results, whose owner is told
/// "result expired", and the newest is still handed out.
pub fn unclaimed_results(ctx: &mut Ctx) -> String {
    const JOBS: usize = 120;
    const CAP: usize = 50;
    let socket = ctx.service(|b| b.max_results_per_uid(CAP));
    let baseline = open_fds().len();
    let images = images_dir();
    let trigger = images.path().parent().unwrap().join(format!(
        "{}.claim",
        images.path().file_name().unwrap().to_string_lossy()
    ));
    let jobs_arg = JOBS.to_string();
    let mut owner = counter_mode(
        images.path().parent().unwrap(),
        &format!(
            "{}-unclaimed",
            images.path().file_name().unwrap().to_string_lossy()
        ),
        &[
            "--unclaimed",
            &jobs_arg,
            "--images",
            images.path().to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--claim-when",
            trigger.to_str().unwrap(),
        ],
        None,
    );
    let started = Instant::now();
    let mut peak = 0;
    while !owner.output().contains("jobs done") {
        peak = peak.max(open_fds().len());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            owner.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let jobs = printed_jobs(&owner);
    assert_eq!(jobs.len(), JOBS, "{}", owner.output());
    wait_no_criu();
    // the owner lives, its results are kept (up to the cap): no fd for them
    let mut held = 0;
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        held = open_fds().len();
        if held <= baseline {
            return Ok(());
        }
        Err(format!(
            "{held} fds with {JOBS} finished results kept, {baseline} before"
        ))
    });
    std::fs::write(&trigger, b"").unwrap();
    let first = owner.wait_for("the first claim", |l| l.starts_with("claim first"));
    let last = owner.wait_for("the last claim", |l| l.starts_with("claim last"));
    assert!(
        first.contains("Refused") && first.contains("result expired"),
        "{first}"
    );
    assert!(last.contains("Dumped(DumpReport"), "{last}");
    ctx.reached(format!(
        "{JOBS} results kept uncollected, the oldest expired by the cap, the newest handed out"
    ));
    assert!(owner.wait().success());
    // (the service closes its end of the owner's last connection in its
    // own time)
    let mut after_exit = open_fds().len();
    poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        after_exit = open_fds().len();
        match after_exit <= baseline {
            true => Ok(()),
            false => Err(format!("{after_exit} fds, {baseline} before")),
        }
    });
    let _ = std::fs::remove_file(&trigger);
    format!(
        "{JOBS} dumps in {took:.1?} never collected: service fds {baseline} before, peak {peak} \
         while dumping, {held} with the results kept (cap {CAP} per uid), {after_exit} after the \
         owner exited; the oldest answered `{}`, the newest handed out",
        short(first.split("message: ").nth(1).unwrap_or(&first))
    )
}

/// A uid-65534 caller that kept a full permitted set across its switch
/// from root (PR_SET_KEEPCAPS; effective set empty; dumpable again) is
/// refused before CRIU runs.
pub fn permitted_capabilities(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = dir_of(NOBODY);
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--keepcaps-setuid 65534 --at 1 --until 3 --interval-ms 20"),
        None,
    );
    let switched = program.wait_for("the switch", |l| l.starts_with("switched to uid"));
    // the words are "CapPrm:\t..." joined by spaces
    let words: Vec<&str> = switched.split_whitespace().collect();
    let value_of = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|v| u64::from_str_radix(v, 16).unwrap())
    };
    let (prm, eff) = (value_of("CapPrm:").unwrap(), value_of("CapEff:").unwrap());
    assert!(prm != 0 && eff == 0, "{switched}");
    let mut frozen = false;
    while !program.output().contains("checkpoint ") {
        frozen |= process_state(program.pid) == Some('t');
        std::thread::sleep(Duration::from_micros(500));
    }
    let line = outcome(&program);
    assert!(
        line.contains("refused (NotPermitted)") && line.contains("permitted capabilities"),
        "{line}"
    );
    assert!(!frozen, "the caller was frozen");
    ctx.reached("refused at the caller check, before any freeze");
    assert!(program.wait().success());
    assert!(image_files(images.path()).is_empty(), "nothing written");
    format!(
        "refused before any freeze (permitted {prm:#x}, effective {eff:#x}): {}",
        short(&line)
    )
}

/// A caller with an unreaped zombie child, root and uid 65534: not refused
/// as non-dumpable (a zombie's /proc files are root's), and dumped, zombie
/// and all (uid 65534's by a CRIU running as itself).
pub fn zombie_child(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let mut said = Vec::new();
    for uid in [0, NOBODY] {
        let images = dir_of(uid);
        let mut program = Program::start_on(
            &socket,
            images.path(),
            &args("--children 1 --child-exec /bin/true --at 4 --until 8 --interval-ms 100"),
            (uid != 0).then_some(uid),
        );
        let child = program.children()[0];
        program.wait_for("count 3", |l| l == "count 3");
        poll_until(
            Duration::from_secs(10),
            Duration::from_millis(5),
            || match process_state(child) {
                Some('Z') => Ok(()),
                other => Err(format!("the child is not a zombie yet: {other:?}")),
            },
        );
        let line = outcome(&program);
        assert_eq!(process_state(child), Some('Z'), "still a zombie after");
        assert!(!line.contains("not dumpable"), "{line}");
        assert!(
            line.starts_with("checkpoint continued") && line.contains("2 processes"),
            "uid {uid}: {line}"
        );
        assert!(images.path().join("latest/pstree.img").exists());
        ctx.reached(format!("uid {uid}: dumped with its zombie child"));
        let what = format!("uid {uid}: dumped with its zombie: {}", short(&line));
        assert_runs_on(&program);
        assert!(program.wait().success());
        // reparented to this process (a subreaper): reap it
        kill_and_reap(child);
        said.push(what);
    }
    said.join(" | ")
}

/// A result query for another live process's job is answered exactly as
/// for a job that does not exist.
pub fn job_id_probing(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let name = images.path().file_name().unwrap().to_string_lossy();
    let trigger = images
        .path()
        .parent()
        .unwrap()
        .join(format!("{name}.claim"));
    let mut owner = counter_mode(
        images.path().parent().unwrap(),
        &format!("{name}-probe"),
        &[
            "--unclaimed",
            "1",
            "--images",
            images.path().to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--claim-when",
            trigger.to_str().unwrap(),
        ],
        None,
    );
    owner.wait_for("its job", |l| l.starts_with("jobs done"));
    let job = printed_jobs(&owner)[0];
    let made_up = JobId {
        seq: job.seq + 1000,
        ..job
    };
    // byte for byte the frame that says "unknown job" for that id
    let ask = |id: JobId| -> (Response, bool) {
        let frame = exchange(&socket, &proto::encode_frame(&Request::Result(id)), &[]);
        let mut bytes = frame.header.to_bytes().to_vec();
        bytes.extend_from_slice(&frame.body);
        let same = bytes == proto::encode_frame(&Response::UnknownJob(id));
        (
            proto::decode_body::<Response>(frame.header, &frame.body).unwrap(),
            same,
        )
    };
    let (theirs, theirs_same) = ask(job);
    let (none, none_same) = ask(made_up);
    assert_eq!(theirs, Response::UnknownJob(job));
    assert_eq!(none, Response::UnknownJob(made_up));
    assert!(
        theirs_same && none_same,
        "the frames differ from UnknownJob's"
    );
    ctx.reached("another live process's job asked for: answered as unknown");
    // the job did exist: its owner gets it
    std::fs::write(&trigger, b"").unwrap();
    let claimed = owner.wait_for("the claim", |l| l.starts_with("claim first"));
    assert!(claimed.contains("Dumped(DumpReport"), "{claimed}");
    assert!(owner.wait().success());
    let _ = std::fs::remove_file(&trigger);
    format!(
        "another process's live job {job} and a made-up id {made_up} both answered with \
         exactly the UnknownJob frame; the owner then got its result"
    )
}
