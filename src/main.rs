//! `selfdump`: serve checkpoints, restore images, check CRIU.

mod run;

use lexopt::prelude::*;
use selfdump::server::engine::kdat;
use selfdump::server::{Criu, Policy, Server, check, restore};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
selfdump: let processes checkpoint themselves with CRIU

USAGE:
    selfdump serve [OPTIONS]      run the checkpoint service (as root)
    selfdump restore [OPTIONS] DIR  restore images, detached; prints the root pid
    selfdump run -- CMD [ARGS]    run CMD in a pid namespace of its own (as root), so
                                  that its checkpoints restore as many copies at once
    selfdump check [OPTIONS]      is CRIU usable here? (real dump and restore)
    selfdump check --pid PID      what in process PID would CRIU refuse? (preflight)
    selfdump help [COMMAND]       this text, or a command's options

Logging: RUST_LOG=info (default), debug, ...";

const SERVE_USAGE: &str = "\
selfdump serve: run the checkpoint service

OPTIONS:
    --socket PATH        socket to listen on [default: $SELFDUMP_SOCKET or /run/selfdump.sock]
    --socket-mode OCTAL  mode of the socket [default: 600]
    --socket-owner U:G   owner of the socket (numeric uid:gid)
    --allow-uid UID      also allow this uid (root is always allowed); repeatable
    --allow-gid GID      also allow members of this group; repeatable
    --allow-any          allow every caller that can open the socket
    --max-dumps N        dumps at once [default: 8]
    --max-dumps-per-uid N  dumps of one uid at once [default: 4]
    --max-connections N  connections at once; more are refused as busy [default: 256]
    --max-connections-per-uid N  connections of one uid at once [default: 64]
    --request-timeout SECS  time a client has to send its request [default: 5]
    --dump-timeout SECS  kill CRIU after this long [default: 300]
    --criu PATH          criu binary [default: found on PATH or /usr/local/sbin]
    --warm-workers N     criu swrk workers kept started ahead (saves CRIU's
                         start-up, 3-11 ms per dump; 0 for none) [default: 1]

Stops on SIGTERM or SIGINT after the dumps in flight finish; a second
signal stops at once (dumps in flight are abandoned: CRIU lets their
processes run on at its next step, their callers are told they have no
checkpoint to trust; exit code 1).

Under systemd (or any manager that speaks its protocols): with LISTEN_PID set
to this process and LISTEN_FDS >= 1, serves on the listening socket passed as
fd 3 instead of binding --socket (socket activation; see
systemd/selfdump.socket), and sends READY=1 to $NOTIFY_SOCKET once it serves
(Type=notify; see systemd/selfdump.service).";

const RESTORE_USAGE: &str = "\
selfdump restore: restore a checkpoint, detached from this command

USAGE: selfdump restore [--criu PATH] [--wait SECS] DIR
       selfdump restore --copies N [--lazy] DIR

Checks first that every pid, session and process group in the images is free
and names the process holding one that is not. Prints the restored root pid.
Images of a whole pid namespace (a program started with `selfdump run`)
restore into a fresh pid namespace: no pid of theirs needs to be free.

OPTIONS:
    --criu PATH   criu binary [default: found on PATH or /usr/local/sbin]
    --wait SECS   wait up to SECS for those ids to be free first (the previous
                  restored copy still dying or not reaped yet) [default: 0]
    --copies N    start N copies at once (images of a pid namespace only),
                  each in a fresh pid namespace; prints each root pid, one per
                  line, in copy order. In copy K, checkpoint() returns
                  Restored with copy Some(K) and a fresh random restore id.
                  All or nothing: if one copy fails, the others are killed.
    --lazy        with --copies: each copy runs before its memory is loaded
                  (CRIU lazy pages, one page daemon per copy). This command
                  then stays until every copy's memory is in; keep the images
                  until it exits. A copy whose daemon dies first is killed and
                  the reason logged (exit code 1).";

const RUN_USAGE: &str = "\
selfdump run: run a program in a pid namespace of its own

USAGE: selfdump run -- CMD [ARGS]

Starts `selfdump __init` as pid 1 of a new pid namespace, leader of a session
of its own, and CMD as its child. The init passes SIGTERM, SIGINT, SIGHUP,
SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH and SIGALRM on to CMD, reaps orphans,
and exits with CMD's status (128+N if a signal N ended it); so does this
command, which passes the same signals on to the init. When CMD calls
selfdump::checkpoint(), the service dumps the whole namespace, and the
images restore as many copies at once (`selfdump restore --copies N`).

SIGKILL to this command does not end the namespace (no parent-death signal
is set: a restored copy's init would get it when CRIU exits); SIGKILL the
init (this command's child) for that. Needs root (CAP_SYS_ADMIN). The
namespace shares the host's /proc: inside
it, getpid() is the namespace's number (CMD is pid 3) while /proc/<pid> is
the host's; read /proc/self, not /proc/<getpid()>.";

const CHECK_USAGE: &str = "\
selfdump check: is CRIU usable on this machine?

USAGE: selfdump check [--criu PATH] [--scratch DIR]
       selfdump check --pid PID [--tcp-established] [--ext-unix-sk]

Without --pid: checks that criu is installed, is version 4 or newer, passes
`criu check`, and can really dump and restore a tiny process (in DIR,
default /tmp).

With --pid: lists what in process PID and its children would make CRIU
refuse the dump or fail the restore (connections to unix sockets outside
the tree, TCP connections, deleted files, files written without O_APPEND,
io_uring, a tracer), each with its fd and what to do: the same preflight
that selfdump::checkpoint() runs. --tcp-established and --ext-unix-sk say
the dump will use those options. Exits 1 if CRIU would refuse the dump.";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("selfdump: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn run() -> Res<ExitCode> {
    let mut parser = lexopt::Parser::from_env();
    let command = match parser.next()? {
        Some(lexopt::Arg::Value(v)) => v.string()?,
        Some(lexopt::Arg::Long("help") | lexopt::Arg::Short('h')) | None => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(other) => return Err(other.unexpected().into()),
    };
    match command.as_str() {
        "serve" => serve(parser),
        "restore" => restore_cmd(parser),
        "run" | "__init" => run_cmd(&command, parser),
        "check" => check_cmd(parser),
        "help" => {
            let topic = parser.next()?.map(|a| match a {
                lexopt::Arg::Value(v) => v.string().unwrap_or_default(),
                _ => String::new(),
            });
            println!(
                "{}",
                match topic.as_deref() {
                    Some("serve") => SERVE_USAGE,
                    Some("restore") => RESTORE_USAGE,
                    Some("run") => RUN_USAGE,
                    Some("check") => CHECK_USAGE,
                    _ => USAGE,
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}; see `selfdump help`").into()),
    }
}

fn help_requested(arg: &lexopt::Arg<'_>, usage: &str) -> bool {
    if matches!(arg, lexopt::Arg::Long("help") | lexopt::Arg::Short('h')) {
        println!("{usage}");
        return true;
    }
    false
}

fn serve(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    // First, before any thread exists: it edits the environment.
    let activated = selfdump::server::systemd::listener()?;
    let mut socket = std::env::var_os("SELFDUMP_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(selfdump::server::DEFAULT_SOCKET));
    let mut builder = Server::builder();
    let mut policy = Policy::root_only();
    let mut criu = Criu {
        path: check::find_criu(),
        ..Criu::default()
    };
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, SERVE_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("socket") => socket = parser.value()?.into(),
            Long("socket-mode") => {
                builder = builder.socket_mode(u32::from_str_radix(&parser.value()?.string()?, 8)?)
            }
            Long("socket-owner") => {
                let v = parser.value()?.string()?;
                let (u, g) = v.split_once(':').ok_or("--socket-owner wants UID:GID")?;
                builder = builder.socket_owner(u.parse()?, g.parse()?);
            }
            Long("allow-uid") => {
                policy.allow_uids.insert(parser.value()?.parse()?);
            }
            Long("allow-gid") => {
                policy.allow_gids.insert(parser.value()?.parse()?);
            }
            Long("allow-any") => policy.allow_any = true,
            Long("warm-workers") => builder = builder.warm_workers(parser.value()?.parse()?),
            Long("max-dumps") => builder = builder.max_dumps(parser.value()?.parse()?),
            Long("max-dumps-per-uid") => {
                builder = builder.max_dumps_per_uid(parser.value()?.parse()?)
            }
            Long("max-connections") => builder = builder.max_connections(parser.value()?.parse()?),
            Long("max-connections-per-uid") => {
                builder = builder.max_connections_per_uid(parser.value()?.parse()?)
            }
            Long("request-timeout") => {
                builder = builder.request_timeout(Duration::from_secs(parser.value()?.parse()?))
            }
            Long("dump-timeout") => {
                builder = builder.dump_timeout(Duration::from_secs(parser.value()?.parse()?))
            }
            Long("criu") => criu.path = parser.value()?.into(),
            other => return Err(other.unexpected().into()),
        }
    }
    async_io::block_on(async {
        let (major, minor, sub) = criu
            .version()
            .await
            .map_err(|e| format!("{e}; is CRIU >= 4 installed? try `selfdump check`"))?;
        if major < 4 {
            return Err(format!(
                "criu {major}.{minor}.{sub} is too old; selfdump needs CRIU 4 or newer"
            )
            .into());
        }
        log::info!("using {} (CRIU {major}.{minor}.{sub})", criu.path.display());
        let kdat = {
            let criu = criu.clone();
            blocking::unblock(move || kdat::ensure_cache(&criu)).await
        };
        log::info!("CRIU kernel-feature cache: {kdat:?}");
        let builder = builder.criu(criu).policy(policy);
        let server = match activated {
            Some(listener) => {
                log::info!("serving on the socket passed by the service manager (fd 3)");
                builder.listener(listener)?
            }
            None => {
                let server = builder.bind(&socket)?;
                log::info!("serving on {}", socket.display());
                server
            }
        };
        let signals =
            async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])?;
        // Ready once the signals are ours: a stop request from now on is
        // handled (finish the dumps in flight), not fatal.
        match selfdump::server::systemd::notify("READY=1") {
            Ok(true) => log::debug!("told the service manager READY=1"),
            Ok(false) => {}
            Err(e) => log::warn!("cannot notify the service manager: {e}"),
        }
        // The handle, not `run_until`'s future: this is what an embedder
        // wires to its own stop request.
        let stop = server.shutdown_handle();
        let on_signal = async move {
            use futures_lite::StreamExt;
            let mut signals = signals;
            if let Some(Ok(signal)) = signals.next().await {
                log::info!(
                    "received {signal:?}: refusing new checkpoints, finishing dumps in flight, \
                     then exiting"
                );
            }
            let _ = selfdump::server::systemd::notify("STOPPING=1");
            stop.shutdown();
            // `run` returns once drained. A second signal stops waiting:
            // dropping `run` closes the channels of the CRIUs in flight,
            // which then let their trees run on, and removes their staging
            // directories; their callers learn they have no checkpoint.
            if let Some(Ok(signal)) = signals.next().await {
                log::warn!(
                    "received {signal:?} again: exiting now; dumps in flight are abandoned \
                     (their processes run on, their callers are told the outcome is unknown)"
                );
                return Ok(false);
            }
            std::future::pending().await
        };
        use futures_lite::FutureExt;
        let drained = async { server.run().await.map(|()| true) }
            .or(on_signal)
            .await;
        kdat::remove_cache(&kdat);
        if !drained? {
            return Err("stopped by a second signal before the dumps in flight finished".into());
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn restore_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut criu = Criu {
        path: check::find_criu(),
        ..Criu::default()
    };
    let mut dir = None;
    let mut wait = Duration::ZERO;
    let (mut copies, mut lazy) = (None, false);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, RESTORE_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("criu") => criu.path = parser.value()?.into(),
            Long("wait") => wait = Duration::from_secs_f64(parser.value()?.parse()?),
            Long("copies") => copies = Some(parser.value()?.parse::<u32>()?),
            Long("lazy") => lazy = true,
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let dir = dir.ok_or("restore needs the images directory: selfdump restore DIR")?;
    let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if lazy && copies.is_none() {
        return Err("--lazy goes with --copies N (use --copies 1 for one copy)".into());
    }
    if let Some(n) = copies {
        return copies_cmd(&criu, &dir, n, lazy);
    }
    let pid = restore::restore_waiting(&criu, &dir, wait).map_err(|e| match e {
        e @ restore::RestoreError::IdInUse { .. } if !wait.is_zero() => {
            format!("after waiting {wait:?}: {e}")
        }
        e => e.to_string(),
    })?;
    println!("{pid}");
    log::info!("restored {} as pid {pid}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `selfdump restore --copies N [--lazy] DIR`.
fn copies_cmd(criu: &Criu, dir: &std::path::Path, n: u32, lazy: bool) -> Res<ExitCode> {
    use std::io::Write;
    let copies = selfdump::server::copies::restore_copies(criu, dir, n, lazy)?;
    let mut out = std::io::stdout().lock();
    for copy in &copies.copies {
        writeln!(out, "{}", copy.pid)?;
    }
    out.flush()?;
    drop(out);
    if !lazy {
        return Ok(ExitCode::SUCCESS);
    }
    let died = copies
        .supervise()
        .into_iter()
        .filter(|(_, pages)| !matches!(pages, selfdump::server::copies::Pages::Loaded(_)))
        .count();
    if died > 0 {
        return Err(
            format!("{died} lazy cop(y/ies) lost their page daemon and were killed").into(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `selfdump run -- CMD ARGS` and the init it starts (`__init`).
fn run_cmd(command: &str, mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut words: Vec<std::ffi::OsString> = Vec::new();
    while let Some(arg) = parser.next()? {
        if words.is_empty() && help_requested(&arg, RUN_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Value(v) => {
                // the program and everything after it, verbatim
                words.push(v);
                words.extend(parser.raw_args()?);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    if words.is_empty() {
        return Err("run needs a program: selfdump run -- CMD [ARGS]".into());
    }
    let program = words.remove(0);
    let code = if command == "run" {
        run::run(program, words)?
    } else {
        run::init(program, words)?
    };
    Ok(code)
}

/// `selfdump check --pid PID`: the preflight of another process.
fn check_pid(preflight: selfdump::preflight::Preflight) -> Res<ExitCode> {
    use selfdump::preflight::Severity;
    let findings = preflight.run()?;
    for finding in &findings {
        println!("{finding}");
    }
    let refused = findings
        .iter()
        .filter(|f| f.severity == Severity::Refused)
        .count();
    println!(
        "verdict: {}",
        match (refused, findings.len()) {
            (0, 0) => "nothing found; CRIU should dump this process".to_owned(),
            (0, n) => format!("{n} risk(s), nothing CRIU would refuse"),
            (r, _) => format!("CRIU would refuse this process ({r} finding(s)); fix them first"),
        }
    );
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut criu = Criu {
        path: check::find_criu(),
        ..Criu::default()
    };
    let mut scratch = std::env::temp_dir();
    let mut preflight: Option<selfdump::preflight::Preflight> = None;
    let (mut tcp, mut ext_unix) = (false, false);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, CHECK_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("criu") => criu.path = parser.value()?.into(),
            Long("scratch") => scratch = parser.value()?.into(),
            Long("pid") => {
                preflight =
                    Some(selfdump::preflight::Preflight::new().pid(parser.value()?.parse()?))
            }
            Long("tcp-established") => tcp = true,
            Long("ext-unix-sk") => ext_unix = true,
            other => return Err(other.unexpected().into()),
        }
    }
    if let Some(preflight) = preflight {
        return check_pid(preflight.tcp_established(tcp).ext_unix_sk(ext_unix));
    }
    let findings = check::check(&criu, &scratch);
    for f in &findings {
        println!(
            "{} {:<40} {}",
            if f.ok { "ok  " } else { "FAIL" },
            f.what,
            f.detail
        );
    }
    let ok = findings.iter().all(|f| f.ok) && findings.len() == 4;
    println!(
        "{}",
        if ok {
            "verdict: selfdump can checkpoint and restore on this machine"
        } else {
            "verdict: NOT usable; fix the first FAIL above"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
