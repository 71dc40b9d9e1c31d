//! A program that counts, checkpoints itself at one count, and goes on.
//! Run it with its output in a file so that a restored copy writes there too:
//!
//! ```text
//! cargo run --example counter -- --images /tmp/counter --at 5 --until 30 >> /tmp/counter.log
//! ```
//!
//! Options: `--images DIR` (required), `--at N` (checkpoint at this count,
//! default 5), `--until N` (stop after this count, default 30),
//! `--interval-ms MS` (default 200), `--children K` (start K sleeping
//! children first), `--threads T` (start T sleeping threads first), `--exit-after` (let CRIU end the process after the dump),
//! `--socket PATH`, `--connect PATH` (hold a connection to an outside unix
//! socket, which makes the dump fail).
//!
//! For the adversarial tests: `--nondumpable` (the process makes itself
//! non-dumpable first), `--alloc-mb N` (touch N MiB first, so that a dump
//! takes a while), and for the children `--child-nondumpable`,
//! `--child-setuid UID` (they switch all their ids to UID; needs root; the
//! kernel then marks them non-dumpable), `--child-dumpable` (they make
//! themselves dumpable again afterwards), `--child-exec "PATH ARGS"` (run
//! this command as each child instead), `--thread-setuid UID` (start a
//! thread that switches its own ids, and only its own, to UID).
//!
//! For the resource attacks: `--keepcaps-setuid UID` (started as root: keep
//! the permitted capabilities across a switch of every id to UID, with
//! the effective set empty, then become dumpable again), and two modes of
//! their own: `counter --flood SOCKET N` (open N connections to the
//! service, say `held N`, and sleep), and `counter --unclaimed N --images
//! DIR --socket PATH --claim-when FILE` (ask for N dumps of itself by hand
//! and never collect their results, printing `job I SERVICE SEQ`; once
//! FILE exists, ask for the first and the last result and print
//! `claim first: ...` and `claim last: ...`).
//!
//! For harnesses: `--at2 N --images2 DIR` (checkpoint a second time at
//! count N, into DIR: run from a restored copy, this is a second
//! generation; prints `checkpoint2 ...`), `--skip-preflight` (let CRIU
//! itself find what it refuses, instead of the preflight).

use selfdump::{Options, Outcome, checkpoint};
use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") => return child(&args[1..]),
        Some("--flood") => return flood(&args[1..]),
        Some("--unclaimed") => return unclaimed(&args[1..]),
        _ => {}
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: u64| value(name).map_or(default, |v| v.parse().expect(name));
    if let Some(uid) = value("--keepcaps-setuid") {
        keep_caps_setuid(uid.parse().expect("--keepcaps-setuid UID"));
    }
    let Some(images) = value("--images") else {
        eprintln!(
            "usage: counter --images DIR [--at N] [--until N] [--interval-ms MS] [--children K] [--exit-after] [--socket PATH]"
        );
        std::process::exit(2);
    };
    let (at, until, interval) = (
        number("--at", 5),
        number("--until", 30),
        number("--interval-ms", 200),
    );
    let mut options = Options::new(&images);
    if args.iter().any(|a| a == "--exit-after") {
        options = options.exit_after_dump();
    }
    if let Some(socket) = value("--socket") {
        options = options.socket(socket);
    }
    if args.iter().any(|a| a == "--skip-preflight") {
        options = options.skip_preflight();
    }
    let second = value("--images2").map(|dir| (number("--at2", 0), dir));
    // Optionally hold a connection to a socket outside the tree (CRIU refuses that).
    let _outside =
        value("--connect").map(|p| std::os::unix::net::UnixStream::connect(p).expect("--connect"));
    if args.iter().any(|a| a == "--nondumpable") {
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .expect("PR_SET_DUMPABLE");
    }
    let ballast: Vec<u8> = vec![1u8; (number("--alloc-mb", 0) as usize) << 20];
    if let Some(uid) = value("--thread-setuid") {
        let uid: u32 = uid.parse().expect("--thread-setuid UID");
        let (ready, changed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // raw per-thread calls: the other threads keep their ids
            let (u, g) = (
                rustix::process::Uid::from_raw(uid),
                rustix::process::Gid::from_raw(uid),
            );
            rustix::thread::set_thread_res_gid(g, g, g).expect("setresgid");
            rustix::thread::set_thread_res_uid(u, u, u).expect("setresuid");
            let _ = ready.send(rustix::thread::gettid().as_raw_nonzero().get());
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let tid = changed.recv().expect("the thread changed ids");
        say(&format!("thread {tid} runs as uid {uid}"));
    }
    for _ in 0..number("--threads", 0) {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }
    let mut child_args = Vec::new();
    for flag in ["--child-nondumpable", "--child-dumpable"] {
        if args.iter().any(|a| a == flag) {
            child_args.push(flag.to_string());
        }
    }
    if let Some(uid) = value("--child-setuid") {
        child_args.extend(["--child-setuid".to_string(), uid]);
    }
    let child_exec = value("--child-exec");
    let children: Vec<u32> = (0..number("--children", 0))
        .map(|_| {
            let mut cmd = match &child_exec {
                Some(line) => {
                    let mut words = line.split_whitespace();
                    let mut cmd = std::process::Command::new(words.next().expect("a command"));
                    cmd.args(words);
                    cmd
                }
                None => {
                    let mut cmd =
                        std::process::Command::new(std::env::current_exe().expect("own path"));
                    cmd.arg("--child")
                        .args(&child_args)
                        .stdout(std::process::Stdio::piped());
                    cmd
                }
            };
            // (never waited for: the children live as long as the counter)
            #[allow(clippy::zombie_processes)]
            let mut child = cmd.spawn().expect("start a child");
            // a child of ours says when its ids and flags are set, so the
            // checkpoint never races its set-up, however slow the machine
            if let Some(mut ready) = child.stdout.take() {
                let mut byte = [0u8];
                std::io::Read::read_exact(&mut ready, &mut byte).expect("the child's set-up");
            }
            child.id()
        })
        .collect();
    say(&format!(
        "started pid {} children {children:?}",
        std::process::id()
    ));

    for count in 1..=until {
        say(&format!("count {count}"));
        if count == at {
            match async_io::block_on(checkpoint(options.clone())) {
                Ok(Outcome::Continued(r)) => say(&format!(
                    "checkpoint continued: frozen {} us, total {} us, memdump {} us, memwrite {} \
                     us, pages {} of {}, {} bytes, {} processes",
                    r.frozen.as_micros(),
                    r.total.as_micros(),
                    r.memdump.as_micros(),
                    r.memwrite.as_micros(),
                    r.pages_written,
                    r.pages_scanned,
                    r.bytes_written,
                    r.processes
                )),
                Ok(Outcome::Restored(info)) => {
                    say(&format!(
                        "checkpoint restored: job {} from {}",
                        info.job,
                        info.images_dir.display()
                    ));
                    // every byte of the ballast was 1 at the checkpoint
                    let intact = ballast.iter().all(|&b| b == 1);
                    say(if intact {
                        "memory intact"
                    } else {
                        "memory CORRUPT"
                    });
                }
                Err(e) => say(&format!("checkpoint error: {e}")),
            }
        }
        if let Some((at2, images2)) = &second
            && count == *at2
        {
            let mut options2 = Options::new(images2);
            if let Some(socket) = value("--socket") {
                options2 = options2.socket(socket);
            }
            match async_io::block_on(checkpoint(options2)) {
                Ok(Outcome::Continued(r)) => say(&format!(
                    "checkpoint2 continued: job {}, {} processes",
                    r.job, r.processes
                )),
                Ok(Outcome::Restored(info)) => say(&format!(
                    "checkpoint2 restored: job {} from {}",
                    info.job,
                    info.images_dir.display()
                )),
                Err(e) => say(&format!("checkpoint2 error: {e}")),
            }
        }
        std::thread::sleep(Duration::from_millis(interval));
    }
    say("done");
}

/// A child that sleeps until its parent dies (the kernel then kills it).
fn child(args: &[String]) {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    if let Some(uid) = args
        .iter()
        .position(|a| a == "--child-setuid")
        .and_then(|i| args.get(i + 1))
    {
        let uid: u32 = uid.parse().expect("--child-setuid UID");
        // one thread: the per-thread id calls change the whole process
        let (u, g) = (
            rustix::process::Uid::from_raw(uid),
            rustix::process::Gid::from_raw(uid),
        );
        rustix::thread::set_thread_groups(&[]).expect("setgroups");
        rustix::thread::set_thread_res_gid(g, g, g).expect("setresgid");
        rustix::thread::set_thread_res_uid(u, u, u).expect("setresuid");
    }
    if args.iter().any(|a| a == "--child-nondumpable") {
        set_dumpable_behavior(DumpableBehavior::NotDumpable).expect("PR_SET_DUMPABLE");
    }
    if args.iter().any(|a| a == "--child-dumpable") {
        set_dumpable_behavior(DumpableBehavior::Dumpable).expect("PR_SET_DUMPABLE");
    }
    // after the id change, which clears it
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // set up: tell the parent, then let go of the pipe (stdout is /dev/null
    // from here on, so the dumped child holds no half-closed pipe)
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"r");
    let _ = out.flush();
    drop(out);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::FromRawFd;
        // SAFETY: fd 1 is open (the pipe written above); it is only
        // replaced here, and `forget` keeps it from being closed
        let mut stdout = unsafe { std::os::fd::OwnedFd::from_raw_fd(1) };
        let _ = rustix::io::dup2(&null, &mut stdout);
        std::mem::forget(stdout);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Switches every id to `uid` keeping the permitted capabilities (the
/// kernel empties the effective set), then makes the process dumpable
/// again (the switch made it non-dumpable). Still one thread here.
fn keep_caps_setuid(uid: u32) {
    use rustix::process::{DumpableBehavior, Gid, Uid, set_dumpable_behavior};
    rustix::thread::set_keep_capabilities(true).expect("PR_SET_KEEPCAPS");
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(uid));
    rustix::thread::set_thread_groups(&[]).expect("setgroups");
    rustix::thread::set_thread_res_gid(g, g, g).expect("setresgid");
    rustix::thread::set_thread_res_uid(u, u, u).expect("setresuid");
    set_dumpable_behavior(DumpableBehavior::Dumpable).expect("PR_SET_DUMPABLE");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps: Vec<&str> = status.lines().filter(|l| l.starts_with("Cap")).collect();
    say(&format!("switched to uid {uid}: {}", caps.join(" ")));
}

/// `--flood SOCKET N`: holds N idle connections to the service.
fn flood(args: &[String]) {
    let (socket, n) = (&args[0], args[1].parse::<usize>().expect("N"));
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(c) => held.push(c),
            Err(e) => {
                say(&format!("connect failed after {}: {e}", held.len()));
                break;
            }
        }
    }
    say(&format!("held {}", held.len()));
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// `--unclaimed N`: N dumps of this process asked for by hand, results
/// never collected; then (once `--claim-when FILE` exists) the first and
/// the last are asked for.
fn unclaimed(args: &[String]) {
    use async_io::Async;
    use selfdump::proto::{
        DumpOptions, JobId, Request, Response, decode_body, encode_frame, read_frame, write_frame,
    };
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let n: usize = args[0].parse().expect("--unclaimed N");
    let (images, socket, trigger) = (value("--images"), value("--socket"), value("--claim-when"));
    let ask = |request: &Request, dir: Option<&std::fs::File>| -> Option<Response> {
        async_io::block_on(async {
            let stream = Async::<UnixStream>::connect(&socket).await.ok()?;
            let fds: Vec<_> = dir.iter().map(|d| d.as_fd()).collect();
            write_frame(&stream, &encode_frame(request), &fds)
                .await
                .ok()?;
            let frame = read_frame(&stream).await.ok()??;
            decode_body(frame.header, &frame.body).ok()
        })
    };
    let mut jobs: Vec<JobId> = Vec::new();
    for i in 0..n {
        let dir = std::fs::File::open(&images).expect("images dir");
        let options = DumpOptions::default();
        // the earlier dumps may still be finishing: retry while busy
        let mut answer = None;
        for _ in 0..500 {
            answer = ask(&Request::Checkpoint(options), Some(&dir));
            match &answer {
                Some(Response::Refused(r)) if r.kind == selfdump::proto::RefusalKind::Busy => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        match answer {
            Some(Response::Frozen(notice)) => {
                let job = notice.job;
                say(&format!("job {i} {:016x} {}", job.service, job.seq));
                jobs.push(job);
            }
            other => say(&format!("job {i} not started: {other:?}")),
        }
    }
    say(&format!("jobs done: {}", jobs.len()));
    while !std::path::Path::new(&trigger).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, job) in [("first", jobs.first()), ("last", jobs.last())] {
        let Some(job) = job else { continue };
        say(&format!(
            "claim {name}: {:?}",
            ask(&Request::Result(*job), None)
        ));
    }
    say("done");
}
