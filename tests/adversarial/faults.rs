//! Faults in the middle of a dump: the caller dies, CRIU is killed, the
//! service dies and another takes its socket, and the dump runs out of
//! time. The caller must end up running and told, never left frozen.

use crate::Ctx;
use crate::common::*;
use crate::serve::{ServeProcess, reap_when_done};
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// The caller is killed (SIGKILL) mid-dump, while CRIU is held stopped in
/// the middle of writing its memory: it dies for certain before CRIU can
/// end the dump, whatever the machine's speed. CRIU then fails, or hangs
/// waiting for the dead task (CRIU 4.1.1 does, at some steps) until the
/// service's dump time limit (5 s here) abandons it; either way the
/// service concludes the job as failed without saying the process runs on
/// (its log says so: nobody is left to ask), publishes nothing and
/// removes its staging directory.
pub fn client_dies_mid_dump(ctx: &mut Ctx) -> String {
    capture_service_log();
    let socket = ctx.service(|b| b.dump_timeout(Duration::from_secs(5)));
    let mut repeated = 0;
    let (images, concluded) = loop {
        let images = images_dir();
        let mut program = frozen_caller(&socket, images.path(), 600);
        wait_for_memdump(images.path(), &program);
        let Some(criu) = stop_dumping_criu(program.pid) else {
            assert!(repeated < 5, "CRIU always finished first");
            repeated += 1;
            program.kill();
            wait_no_criu();
            continue;
        };
        ctx.reached("CRIU held (SIGSTOP) while writing the frozen caller's memory");
        let pid = program.pid;
        kill(pid);
        // dead (a zombie: its tracer, CRIU, is stopped) before CRIU goes on
        poll_until(
            Duration::from_secs(10),
            Duration::from_millis(2),
            || match process_state(pid) {
                Some('Z') | None => Ok(()),
                state => Err(format!("the killed caller is still {state:?}")),
            },
        );
        ctx.reached("the caller died (SIGKILL) while CRIU held it");
        signal(criu, rustix::process::Signal::CONT);
        // (the dead caller is reaped once CRIU has let it go: after the
        // service's conclusion)
        let concluded = job_conclusion(pid, service_log);
        wait_no_criu();
        program.kill();
        break (images, concluded);
    };
    assert!(concluded.starts_with("failed: "), "{concluded}");
    assert!(
        !concluded.contains("left running") && !concluded.contains("runs on"),
        "the caller is dead, but the service says it runs on: {concluded}"
    );
    ctx.reached(format!("the service concluded: {}", short(&concluded)));
    assert_no_staging(images.path());
    assert_no_images(images.path(), 0);
    format!(
        "the dump failed and nothing was published; the service said: {}{}",
        short(&concluded),
        repeated_note(repeated)
    )
}

/// CRIU is killed mid-dump, with the caller frozen: the caller must end up
/// running and get an error. Or, when CRIU was killed while its parasite
/// code ran inside the caller, the caller dies with it (CRIU's limitation
/// when another process kills it): the service must then say so in its
/// conclusion of the job, and never report that the process runs on.
pub fn criu_killed_mid_dump(ctx: &mut Ctx) -> String {
    capture_service_log();
    let socket = ctx.service(|b| b);
    let mut said = Vec::new();
    // killed as soon as the tree is seized, and while it writes memory
    // (the parasite is in the caller then)
    let mut repeated = 0;
    for during_memdump in [false, true] {
        let told = loop {
            if let Some(told) = kill_held_criu(ctx, &socket, during_memdump) {
                break told;
            }
            assert!(repeated < 5, "CRIU always finished first");
            repeated += 1;
        };
        said.push(told);
    }
    format!(
        "never left frozen: {}{}",
        said.join(" | "),
        repeated_note(repeated)
    )
}

/// One round of [`criu_killed_mid_dump`]: the CRIU dumping a caller is
/// held, then killed, at the seize or `during_memdump`; what the caller
/// and the service said, or `None` when CRIU finished before it could be
/// held (to be tried again).
fn kill_held_criu(ctx: &mut Ctx, socket: &Path, during_memdump: bool) -> Option<String> {
    let images = images_dir();
    let mut program = frozen_caller(socket, images.path(), 100);
    if during_memdump {
        wait_for_memdump(images.path(), &program);
    }
    // stopped first, so that it is surely still at work when killed
    let Some(criu) = stop_dumping_criu(program.pid) else {
        program.kill();
        wait_no_criu();
        return None;
    };
    let when = if during_memdump {
        "during memdump"
    } else {
        "at the seize"
    };
    ctx.reached(format!("CRIU held (SIGSTOP) {when}, then killed (SIGKILL)"));
    kill(criu);
    let concluded = job_conclusion(program.pid, service_log);
    assert!(
        concluded.starts_with("failed: ")
            && (concluded.contains("criu died") || concluded.contains("criu was killed")),
        "{concluded}"
    );
    let told = match outcome_or_death(&program) {
        Some(line) => {
            assert!(line.starts_with("checkpoint error"), "{line}");
            assert!(
                concluded.contains("left running"),
                "the caller runs on, but the service says otherwise: {concluded}"
            );
            thawed_then_cleaned_up(&mut program, images.path());
            format!("{when}: thawed and told: {}", short(&line))
        }
        None => {
            assert!(
                !concluded.contains("left running") && !concluded.contains("runs on"),
                "the caller died with CRIU, but the service says it runs on: {concluded}"
            );
            program.kill();
            wait_no_criu();
            assert_no_staging(images.path());
            format!(
                "{when}: the caller died with CRIU (its parasite was inside); the service \
                 said: {}",
                short(&concluded)
            )
        }
    };
    ctx.reached(format!("{when}: the service concluded the job as failed"));
    assert_no_generation(images.path());
    Some(told)
}

fn repeated_note(repeated: usize) -> String {
    match repeated {
        0 => String::new(),
        n => format!(" ({n} attempt(s) repeated: CRIU finished before it could be stopped)"),
    }
}

/// The service process (`selfdump serve`) is SIGKILLed between the freeze
/// and the result query, with CRIU held (SIGSTOP) in the middle of
/// writing memory: no destructor of the service runs. The original must
/// hear "outcome unknown", never success and never "restored". Twice:
/// with a new `selfdump serve` started on the same socket path before the
/// original asks (it knows nothing of the job), and with none. The
/// killed service's staging directory stays (nothing cleaned it up) and
/// goes with the next checkpoint into that directory.
pub fn service_restarted_between_freeze_and_result(ctx: &mut Ctx) -> String {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-sock")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path().join("selfdump.sock");
    let mut said = Vec::new();
    let mut raced = 0;
    for (n, restarted_first) in [true, false].into_iter().enumerate() {
        let case = if restarted_first {
            "restarted"
        } else {
            "no service"
        };
        let log = |i: usize| dir.path().join(format!("serve-{n}-{i}.log"));
        let (line, images, second) = loop {
            if let Some(killed) = kill_service_mid_dump(ctx, &socket, case, restarted_first, &log) {
                break killed;
            }
            assert!(raced < 5, "CRIU always finished first");
            raced += 1;
        };
        let next = second.unwrap_or_else(|| ServeProcess::start(&socket, &log(98), &[], None));
        staging_goes_with_the_next_checkpoint(ctx, case, &next.socket, images.path());
        said.push(format!("{case}: {}", short(&line)));
    }
    let last = ServeProcess::start(&socket, &dir.path().join("last.log"), &[], None);
    let pid = last.pid();
    ctx.adopt_process(socket, Box::new((last, dir)), pid, 1);
    format!(
        "original told: {}{}",
        said.join(" | "),
        repeated_note(raced)
    )
}

/// One round of [`service_restarted_between_freeze_and_result`]: a
/// `selfdump serve` on `socket` is SIGKILLed with CRIU held mid-memdump,
/// another started on the socket if `restarted_first`, and the original
/// told: its line, its images and the new service; `None` when CRIU
/// finished before it could be held (to be tried again).
fn kill_service_mid_dump(
    ctx: &mut Ctx,
    socket: &Path,
    case: &str,
    restarted_first: bool,
    log: &dyn Fn(usize) -> std::path::PathBuf,
) -> Option<(String, tempfile::TempDir, Option<ServeProcess>)> {
    let mut first = ServeProcess::start(socket, &log(0), &[], None);
    let images = images_dir();
    let mut program = frozen_caller(socket, images.path(), 100);
    // CRIU writes memory only after the freeze hook sent `Frozen`
    wait_for_memdump(images.path(), &program);
    // held mid-dump until the service is gone, whatever the machine's speed
    let Some(criu) = stop_dumping_criu(program.pid) else {
        program.kill();
        return None;
    };
    let killed = first.pid();
    let (status, orphans) = first.kill9();
    ctx.reached(format!(
        "{case}: the service process {killed} killed ({status}) with CRIU held mid-memdump"
    ));
    let second = restarted_first.then(|| {
        let second = ServeProcess::start(socket, &log(99), &[], None);
        assert_ne!(second.pid(), killed);
        ctx.reached(format!(
            "{case}: a new service process {} on the same socket",
            second.pid()
        ));
        second
    });
    signal(criu, rustix::process::Signal::CONT);
    let line = outcome(&program);
    assert_unknown(&line);
    if restarted_first {
        assert!(line.contains("does not know this job"), "{line}");
    }
    assert_runs_on(&program);
    program.kill();
    // the killed service's CRIUs (the held one, its warm worker) came to
    // this process, a subreaper
    for orphan in orphans {
        reap_when_done(orphan);
    }
    Some((line, images, second))
}

/// The staging directory a SIGKILLed service left in `images` stays
/// (nothing cleaned it up) until the next checkpoint into the directory,
/// through the service on `socket`, removes it.
fn staging_goes_with_the_next_checkpoint(ctx: &mut Ctx, case: &str, socket: &Path, images: &Path) {
    let left = staging_dirs(images);
    assert!(!left.is_empty(), "a SIGKILLed service cleaned up?");
    next_checkpoint_through(socket, images);
    // (removed after the answer)
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || match staging_dirs(images).is_empty() {
            true => Ok(()),
            false => Err(format!(
                "the staging {left:?} of the killed service outlived the next checkpoint"
            )),
        },
    );
    ctx.reached(format!(
        "{case}: its staging {left:?} removed by the next checkpoint into the directory"
    ));
}

/// A checkpoint into `images` through the service on `socket`, which
/// continues.
fn next_checkpoint_through(socket: &Path, images: &Path) {
    let mut next = Program::start_on(
        socket,
        images,
        &args("--at 1 --until 2 --interval-ms 20"),
        None,
    );
    let line = outcome(&next);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(next.wait().success());
}

fn assert_unknown(line: &str) {
    assert!(
        line.starts_with("checkpoint error: outcome of checkpoint") && line.contains("unknown"),
        "{line}"
    );
}

/// The whole dump may take `dump_timeout`; past it the dump is abandoned
/// and the tree must end up running, not frozen. Twice, each time
/// independent of the machine's speed: with 1 ms (the limit strikes before
/// the freeze: nothing is that fast), and with the limit striking while
/// the tree is frozen for certain: CRIU is stopped (`SIGSTOP`) in the
/// middle of writing the frozen caller's memory, kept stopped past the
/// deadline, then let go on. (A 512 MiB dump under a 250 ms limit was
/// once used instead, and an idle machine beat the limit.)
pub fn dump_timeout_exceeded(ctx: &mut Ctx) -> String {
    let mut said = Vec::new();
    ctx.reached("a 1 ms limit, struck before the freeze");
    // before the freeze
    let socket = ctx.service(|b| b.dump_timeout(Duration::from_millis(1)));
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 100 --interval-ms 20"),
        None,
    );
    let line = outcome(&program);
    assert_abandoned(&line);
    thawed_then_cleaned_up(&mut program, images.path());
    assert_no_generation(images.path());
    said.push(format!("1 ms (before the freeze): {}", short(&line)));

    // while frozen
    let limit = Duration::from_secs(2);
    let socket = ctx.service(|b| b.dump_timeout(limit));
    let mut repeated = 0;
    let line = loop {
        if let Some(line) = time_out_while_frozen(ctx, &socket, limit) {
            break line;
        }
        // the dump ended before CRIU could be stopped: once more
        assert!(repeated < 5, "CRIU always finished first");
        repeated += 1;
    };
    said.push(line);
    format!(
        "dump abandoned, caller running: {}{}",
        said.join(" | "),
        repeated_note(repeated)
    )
}

/// The RPC channel of `criu` (a dumping `criu swrk`): its socket whose
/// peer this process (the service) holds, by inode.
fn rpc_channel(criu: i32) -> u64 {
    let peers = crate::fds::socket_peers();
    let ours: Vec<u64> = crate::fds::raw_fds(std::process::id() as i32)
        .iter()
        .filter_map(|(_, t)| crate::fds::socket_inode(&t.to_string_lossy()))
        .collect();
    let channel: std::collections::BTreeSet<u64> = crate::fds::raw_fds(criu)
        .iter()
        .filter_map(|(_, t)| crate::fds::socket_inode(&t.to_string_lossy()))
        .filter(|inode| peers.get(inode).is_some_and(|peer| ours.contains(peer)))
        .collect();
    assert_eq!(
        channel.len(),
        1,
        "CRIU {criu}'s channels to the service: {channel:?}"
    );
    channel.into_iter().next().unwrap()
}

/// Whether the service closed its end of `channel` (the kernel then
/// shows its peer as 0, or the socket is gone with CRIU).
fn channel_closed(channel: u64) -> bool {
    crate::fds::socket_peers()
        .get(&channel)
        .is_none_or(|&peer| peer == 0)
}

/// The dump time limit strikes while the tree is frozen for certain: CRIU
/// is held (SIGSTOP) in the middle of writing the frozen caller's memory
/// until the service abandons the dump, then let go on. The caller's
/// answer, or `None` when CRIU finished before it could be held.
fn time_out_while_frozen(ctx: &mut Ctx, socket: &Path, limit: Duration) -> Option<String> {
    let images = images_dir();
    // before the request: the service's clock starts later
    let begun = std::time::Instant::now();
    let mut program = frozen_caller(socket, images.path(), 200);
    wait_for_memdump(images.path(), &program);
    let Some(criu) = stop_dumping_criu(program.pid) else {
        program.kill();
        wait_no_criu();
        return None;
    };
    ctx.reached("CRIU held (SIGSTOP) mid-memdump, the caller frozen");
    // the service abandons the dump at the deadline by closing its end
    // of CRIU's channel: waited for (an event), watching meanwhile
    // that the tree stays frozen (seized by CRIU, its parasite inside,
    // not counting)
    let channel = rpc_channel(criu);
    let counted = program.output().matches("count ").count();
    let mut frozen = true;
    poll_until(Duration::from_secs(60), Duration::from_millis(1), || {
        if channel_closed(channel) {
            return Ok(());
        }
        frozen &= tracer(program.pid) == Some(criu)
            && program.output().matches("count ").count() == counted;
        Err(format!(
            "the service never abandoned the dump (past {limit:?})"
        ))
    });
    let abandoned_after = begun.elapsed();
    assert!(frozen, "the tree thawed while CRIU was stopped");
    assert!(
        abandoned_after >= limit,
        "abandoned after {abandoned_after:?}, before the {limit:?} limit"
    );
    ctx.reached(format!(
        "the service abandoned the dump (closed CRIU's channel) at its deadline, \
         {abandoned_after:.1?} after the caller started, the tree frozen until then"
    ));
    // CRIU notices, takes its parasite out and lets the tree go
    signal(criu, rustix::process::Signal::CONT);
    let line = outcome(&program);
    assert_abandoned(&line);
    thawed_then_cleaned_up(&mut program, images.path());
    assert_no_generation(images.path());
    Some(format!(
        "{limit:?} (struck while frozen, CRIU stopped mid-memdump): {}",
        short(&line)
    ))
}

fn assert_abandoned(line: &str) {
    assert!(
        line.contains("exceeded its time limit") && line.contains("it was abandoned"),
        "{line}"
    );
}

/// A caller with 256 MiB to dump, counting until `until`, once CRIU has
/// frozen it.
fn frozen_caller(socket: &Path, images: &Path, until: u32) -> Program {
    let program = Program::start_on(
        socket,
        images,
        &args(&format!(
            "--alloc-mb 256 --at 1 --until {until} --interval-ms 20"
        )),
        None,
    );
    program.wait_for("count 1", |l| l == "count 1");
    wait_frozen(program.pid);
    program
}

/// After the fault: the caller runs on; then it is killed, CRIU is gone and
/// no staging directory is left in `images`.
fn thawed_then_cleaned_up(program: &mut Program, images: &Path) {
    assert_runs_on(program);
    program.kill();
    wait_no_criu();
    assert_no_staging(images);
}

/// Waits until CRIU writes memory images into the staging directory (or
/// the dump already ended: a fast machine may be done between two looks;
/// [`stop_dumping_criu`] then finds no CRIU and the attempt is repeated).
fn wait_for_memdump(dir: &Path, program: &Program) {
    poll_until(Duration::from_secs(30), Duration::from_micros(500), || {
        if program.output().contains("checkpoint ") {
            return Ok(());
        }
        let staging = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(".selfdump-"));
        let writing = staging.is_some_and(|s| {
            std::fs::read_dir(s.path())
                .map(|d| {
                    d.flatten()
                        .any(|f| f.file_name().to_string_lossy().starts_with("pagemap-"))
                })
                .unwrap_or(false)
        });
        if writing {
            return Ok(());
        }
        Err(format!(
            "criu never wrote memory; the caller said: {}",
            program.output()
        ))
    });
}

/// The caller's outcome line, or `None` once it died; fails if it does
/// neither within 60 s (left frozen, or never told).
fn outcome_or_death(program: &Program) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(line) = program
            .output()
            .lines()
            .find(|l| l.starts_with("checkpoint "))
        {
            return Some(line.to_owned());
        }
        if process_state(program.pid).is_none_or(|s| s == 'Z') {
            return None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the caller neither got an outcome nor died within 60 s: state {:?}",
            process_state(program.pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
