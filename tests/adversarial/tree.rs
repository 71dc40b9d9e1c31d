//! Attacks through the caller's process tree: children and threads that
//! run with other privileges (setuid, dropped to nobody, non-dumpable), and
//! a caller that is non-dumpable itself.

use crate::Ctx;
use crate::common::*;
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A caller (uid nobody) whose child runs a setuid-root binary: the CRIU
/// that dumps it runs as nobody, and the kernel refuses it the seize of
/// that child, before the freeze (so before the service's own check of the
/// frozen tree); the service then checks the tree and names the task.
pub fn setuid_child_in_tree(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let bin = tempfile::Builder::new()
        .prefix("selfdump-suid")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let sleeper = bin.path().join("suid-sleep");
    std::fs::copy("/bin/sleep", &sleeper).unwrap();
    std::fs::set_permissions(&sleeper, PermissionsExt::from_mode(0o4755)).unwrap();
    let images = dir_of(NOBODY);
    let command = format!("{} 600", sleeper.display());
    let mut counter_args = args("--children 1 --child-exec");
    counter_args.push(&command);
    counter_args.extend(args("--at 3 --until 6 --interval-ms 100"));
    let mut program = Program::start_on(&socket, images.path(), &counter_args, Some(NOBODY));
    let child = program.children()[0];
    let line = outcome(&program);
    assert_refused_by_criu_as_caller(&line, &format!("task pid {child} (suid-sleep)"), "setuid");
    ctx.reached("refused by the caller's own CRIU, which could not seize the task (before the freeze); the task named");
    let said = after_veto(ctx, &mut program, Some(child), images.path(), NOBODY, &line);
    said.replace(
        "vetoed at the freeze",
        "refused by its CRIU before the freeze",
    )
}

/// The CRIU running as the caller could not seize a task, and the answer
/// names it (`task`) and why (`why`).
fn assert_refused_by_criu_as_caller(line: &str, task: &str, why: &str) {
    assert!(
        line.contains("criu dump failed: ")
            && line.contains(task)
            && line.contains(why)
            && line.contains("runs as your uid and could not seize it")
            && line.contains("Unseizable"),
        "{line}"
    );
}

/// A root caller whose child dropped to nobody (the kernel marks it
/// non-dumpable): vetoed, because every task must pass the caller checks.
pub fn privilege_dropped_child_of_root(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--children 1 --child-setuid 65534 --at 3 --until 6 --interval-ms 100"),
        None,
    );
    let child = program.children()[0];
    let line = outcome(&program);
    assert!(
        line.contains(&format!("task pid {child} (counter)")) && line.contains("not dumpable"),
        "{line}"
    );
    after_veto(ctx, &mut program, Some(child), images.path(), 0, &line)
}

/// A root caller with one thread that switched its own ids to nobody: the
/// walk covers every thread, and this one fails the checks.
pub fn thread_of_another_uid(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--thread-setuid 65534 --at 2 --until 5 --interval-ms 50"),
        None,
    );
    let said = program.wait_for("the thread", |l| l.starts_with("thread "));
    let tid: i32 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    let line = outcome(&program);
    assert!(
        line.contains(&format!(
            "thread {tid} (counter) of the caller (pid {})",
            program.pid
        )) && line.contains("not dumpable"),
        "{line}"
    );
    after_veto(ctx, &mut program, None, images.path(), 0, &line)
}

/// An unprivileged caller with a child that made itself non-dumpable: as
/// with a setuid child, its CRIU (nobody's) may not seize it.
pub fn nondumpable_child_in_tree(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = dir_of(NOBODY);
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--children 1 --child-nondumpable --at 3 --until 6 --interval-ms 100"),
        Some(NOBODY),
    );
    let child = program.children()[0];
    let line = outcome(&program);
    assert_refused_by_criu_as_caller(
        &line,
        &format!("task pid {child} (counter)"),
        "not dumpable",
    );
    ctx.reached(
        "refused by the caller's own CRIU, which could not seize the task (before the freeze); \
         the task named",
    );
    after_veto(ctx, &mut program, Some(child), images.path(), NOBODY, &line)
}

/// A caller that made itself non-dumpable is refused before CRIU runs.
pub fn nondumpable_caller(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = dir_of(NOBODY);
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--nondumpable --at 1 --until 3 --interval-ms 20"),
        Some(NOBODY),
    );
    let line = outcome(&program);
    assert!(
        line.contains("refused (NotPermitted)") && line.contains("not dumpable"),
        "{line}"
    );
    assert!(program.wait().success());
    assert!(image_files(images.path()).is_empty(), "nothing written");
    ctx.reached("refused at the caller check, before CRIU");
    format!("refused before CRIU: {}", short(&line))
}

/// After a veto at the freeze: the caller (of `uid`) counts on and ends
/// well, its `child` is reaped, and no image is left.
fn after_veto(
    ctx: &mut Ctx,
    program: &mut Program,
    child: Option<i32>,
    images: &Path,
    uid: u32,
    line: &str,
) -> String {
    if line.contains("dump refused after the freeze") {
        ctx.reached("the freeze: the frozen tree walked, the dump vetoed");
    }
    assert_runs_on(program);
    assert!(program.wait().success());
    if let Some(child) = child {
        kill_and_reap(child);
    }
    assert_no_images(images, uid);
    format!("vetoed at the freeze: {}", short(line))
}
