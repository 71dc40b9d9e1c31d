//! Attacks on what the service holds (the resource rule: nothing a client
//! does makes the service exit or stop serving root) and on the caller
//! checks that issue 8 tightened: fd exhaustion under a 1024 fd limit,
//! results never collected, a caller with permitted capabilities, a
//! zombie child, and probing for other processes' job ids.

use crate::Ctx;
use crate::common::*;
use crate::support::*;
use selfdump::proto::{self, JobId, Request, Response};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    let child = cmd.spawn().expect("start counter");
    Program {
        pid: child.id() as i32,
        child: Some(child),
        log,
    }
}

/// `selfdump serve` in a process of its own whose fd limit is 1024, soft
/// and hard (so raising the soft limit to the hard one gains nothing).
/// Dropping it stops it as systemd would (SIGTERM, then it drains).
struct LimitedServe {
    child: Option<Child>,
    log: PathBuf,
}

impl LimitedServe {
    const LIMIT: u64 = 1024;

    fn start(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, Self) {
        use std::os::unix::process::CommandExt;
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(selfdump_bin());
        cmd.args(["serve", "--socket-mode", "666", "--socket"])
            .arg(&socket)
            .arg("--criu")
            .arg(criu().path)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(Self::LIMIT),
                    maximum: Some(Self::LIMIT),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(Into::into)
            });
        }
        let child = cmd.spawn().unwrap();
        let serve = Self {
            child: Some(child),
            log,
        };
        poll_until(Duration::from_secs(20), Duration::from_millis(10), || {
            if socket.exists() {
                return Ok(());
            }
            Err(format!(
                "selfdump serve did not listen: {}",
                read(&serve.log)
            ))
        });
        (socket, serve)
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn assert_running(&mut self) {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "selfdump serve exited ({status:?}):\n{}",
            read(&self.log)
        );
    }
}

impl Drop for LimitedServe {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        reap_orphaned_criu_helpers();
    }
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
        let (socket, mut serve) = LimitedServe::start(dir.path(), phase, extra);
        let before = serve.fds();
        let (mut flooders, held) = flood(&socket, phase);
        let during = serve.fds();
        let (line, took) = root_checkpoint(&socket);
        assert!(line.starts_with("checkpoint continued"), "{line}");
        serve.assert_running();
        let log = read(&serve.log);
        assert!(!log.contains("Too many open files"), "{log}");
        assert!(
            during < LimitedServe::LIMIT as usize - 64,
            "{during} fds held"
        );
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
    // (no warm criu worker: its socket would come and go with the pool's
    // refills, and the fd count before and after must mean the same)
    let (socket, mut serve) = LimitedServe::start(
        dir.path(),
        "exhausted",
        &["--request-timeout", "60", "--warm-workers", "0"],
    );
    // the limits are fitted to the fd limit as the server starts, after
    // the socket exists: lower it only once the service serves
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(10),
        || match read(&serve.log).contains("serving on") {
            true => Ok(()),
            false => Err(format!("the service never served:\n{}", read(&serve.log))),
        },
    );
    // (counted once it has answered something: "serving on" is logged
    // before its signal handling opens its fds)
    let _ = refusal(exchange(&socket, &frame_with_body(b"x"), &[]));
    let before = serve.fds();
    let serve_pid = serve.pid();
    let set_limit = |n: u64| {
        rustix::process::prlimit(
            rustix::process::Pid::from_raw(serve_pid),
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(LimitedServe::LIMIT),
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
    set_limit(LimitedServe::LIMIT);
    let (line, took) = root_checkpoint(&socket);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let now = serve.fds();
        if now <= before {
            return Ok(());
        }
        Err(format!(
            "the service holds {now} fds, {before} before the flood"
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
         was back, root served in {took:.1?}, fds back to {before}",
        paths.join(", "),
        short(&meanwhile),
        log.lines().filter(|l| l.contains("WARN")).count(),
    ));
    ctx.adopt(socket, Box::new((serve, dir)), 0);
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
