//! Faults in the middle of a dump: the caller dies, CRIU is killed, the
//! service dies and another takes its socket, and the dump runs out of
//! time. The caller must end up running and told, never left frozen.

use crate::Ctx;
use crate::common::*;
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// The caller is killed while frozen, mid-dump.
pub fn client_dies_mid_dump(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = frozen_caller(&socket, images.path(), 600);
    kill(program.pid);
    program.kill();
    wait_no_criu();
    assert_no_staging(images.path());
    assert!(
        !images.path().join("latest/pstree.img").exists()
            || images.path().join("latest/selfdump-manifest").exists(),
        "a partial image set was left"
    );
    let names: Vec<String> = image_files(images.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    format!("survived; the images dir holds {names:?}")
}

/// CRIU is killed mid-dump, with the caller frozen: the caller must end up
/// running and get an error.
pub fn criu_killed_mid_dump(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let mut said = Vec::new();
    // killed as soon as the tree is seized, and while it writes memory
    // (the parasite is in the caller then)
    let mut repeated = 0;
    let mut cases = vec![false, true].into_iter().peekable();
    while let Some(&during_memdump) = cases.peek() {
        let images = images_dir();
        let mut program = frozen_caller(&socket, images.path(), 100);
        if during_memdump {
            wait_for_memdump(images.path(), &program);
        }
        // stopped first, so that it is surely still at work when killed
        let Some(criu) = stop_dumping_criu(program.pid) else {
            assert!(repeated < 5, "CRIU always finished first");
            repeated += 1;
            program.kill();
            wait_no_criu();
            continue;
        };
        kill(criu);
        let when = if during_memdump {
            "during memdump"
        } else {
            "at the seize"
        };
        match outcome_or_death(&program) {
            Some(line) => {
                assert!(line.starts_with("checkpoint error"), "{line}");
                thawed_then_cleaned_up(&mut program, images.path());
                said.push(format!("{when}: thawed and told: {}", short(&line)));
            }
            None => {
                // CRIU killed while its parasite code ran inside the caller
                // takes the caller with it: CRIU's limitation when another
                // process kills it. Never left frozen, and cleaned up.
                program.kill();
                wait_no_criu();
                assert_no_staging(images.path());
                said.push(format!(
                    "{when}: the caller died with CRIU (its parasite was inside)"
                ));
            }
        }
        assert_no_generation(images.path());
        cases.next();
    }
    let repeated = match repeated {
        0 => String::new(),
        n => format!(" ({n} attempt(s) repeated: CRIU finished before it could be stopped)"),
    };
    format!("never left frozen: {}{repeated}", said.join(" | "))
}

/// The service dies between the freeze and the result query: the original
/// must hear "outcome unknown", never success and never "restored". Twice:
/// with a new service already listening on the socket when the original
/// asks (it knows nothing of the job), and with none.
pub fn service_restarted_between_freeze_and_result(ctx: &mut Ctx) -> String {
    let dir = tempfile::Builder::new()
        .prefix("selfdump-sock")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path().join("selfdump.sock");
    let mut said = Vec::new();
    let mut raced = 0;
    for restarted_first in [true, false] {
        let line = loop {
            let first = KillableService::start_at(&socket, |b| b);
            let images = images_dir();
            let mut program = frozen_caller(&socket, images.path(), 100);
            // CRIU writes memory only after the freeze hook sent `Frozen`
            wait_for_memdump(images.path(), &program);
            // held mid-dump until the service is gone, whatever the
            // machine's speed
            let Some(criu) = stop_dumping_criu(program.pid) else {
                assert!(raced < 5, "CRIU always finished first");
                raced += 1;
                program.kill();
                wait_no_criu();
                continue;
            };
            let second = restarted_first.then(|| {
                // the new service takes over the path (atomically: a
                // rename) while the old one dies
                let next = dir.path().join("next.sock");
                let second = KillableService::start_at(&next, |b| b);
                std::fs::rename(&next, &socket).unwrap();
                second
            });
            first.kill();
            signal(criu, rustix::process::Signal::CONT);
            let line = outcome(&program);
            assert_unknown(&line);
            if restarted_first {
                assert!(line.contains("does not know this job"), "{line}");
            }
            // the killed service leaves no root-owned staging directory
            thawed_then_cleaned_up(&mut program, images.path());
            drop(second);
            break line;
        };
        let case = if restarted_first {
            "restarted"
        } else {
            "no service"
        };
        said.push(format!("{case}: {}", short(&line)));
    }
    let last = KillableService::start_at(&socket, |b| b);
    ctx.adopt(socket, Box::new((last, dir)), 1);
    let raced = match raced {
        0 => String::new(),
        n => format!(" ({n} attempt(s) repeated: CRIU finished before it could be stopped)"),
    };
    format!("original told: {}{raced}", said.join(" | "))
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
        let images = images_dir();
        let mut program = frozen_caller(&socket, images.path(), 200);
        // the service's clock started before CRIU seized the caller, so
        // the deadline has passed by `asked + limit` at the latest
        let asked = std::time::Instant::now();
        wait_for_memdump(images.path(), &program);
        let Some(criu) = stop_dumping_criu(program.pid) else {
            // the dump ended before CRIU could be stopped: once more
            assert!(repeated < 5, "CRIU always finished first");
            repeated += 1;
            program.kill();
            wait_no_criu();
            continue;
        };
        // past the deadline, with the tree frozen (seized by CRIU, its
        // parasite inside, not counting) and CRIU stopped
        let counted = program.output().matches("count ").count();
        std::thread::sleep((limit + Duration::from_millis(500)).saturating_sub(asked.elapsed()));
        let seized = tracer(program.pid) == Some(criu);
        let frozen = seized && program.output().matches("count ").count() == counted;
        signal(criu, rustix::process::Signal::CONT);
        assert!(
            frozen,
            "the tree was not frozen at the deadline (seized: {seized})"
        );
        let line = outcome(&program);
        assert_abandoned(&line);
        thawed_then_cleaned_up(&mut program, images.path());
        assert_no_generation(images.path());
        break format!(
            "{limit:?} (struck while frozen, CRIU stopped mid-memdump): {}",
            short(&line)
        );
    };
    said.push(line);
    let repeated = match repeated {
        0 => String::new(),
        n => format!(" ({n} attempt(s) repeated: CRIU finished before it could be stopped)"),
    };
    format!(
        "dump abandoned, caller running: {}{repeated}",
        said.join(" | ")
    )
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
