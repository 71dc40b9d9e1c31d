//! `selfdump`: serve checkpoints, restore images, check CRIU.

mod run;

use lexopt::prelude::*;
use selfdump::server::{Criu, Policy, Server, check, manifest, restore};
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
    selfdump inspect [OPTIONS] DIR  what a checkpoint holds (--json for scripts)
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
    --key-file PATH      the key that signs the images; made on first start
                         (root's, 0600) [default: /var/lib/selfdump/signing.key]

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

USAGE: selfdump restore [OPTIONS] DIR
       selfdump restore --copies N [--lazy] [OPTIONS] DIR

Verifies the images first: their manifest must be signed with the service's
key, every file must be as signed (nothing changed, added or removed), and
every task's credentials must be the recorded owner's; CRIU then reads only
the verified files. Checks that every pid, session and process group in the
images is free and names the process holding one that is not. Prints the
restored root pid.

Images of a whole pid namespace (a program started with `selfdump run`)
restore into a fresh pid namespace: no pid of theirs needs to be free.

OPTIONS:
    --criu PATH       criu binary [default: found on PATH or /usr/local/sbin]
    --wait SECS       wait up to SECS for those ids to be free first (the
                      previous restored copy still dying or not reaped yet)
                      [default: 0]
    --key-file PATH   the signing key [default: /var/lib/selfdump/signing.key]
    --trust-unsigned  also restore images without a manifest (made by plain
                      CRIU), unchecked; root only, with a warning
    --timeout SECS    kill CRIU, and what it restored, past this [default: 60]
    --socket PATH     the service's socket, for a user who is not root
                      [default: $SELFDUMP_SOCKET or /run/selfdump.sock]
    --copies N        start N copies at once (images of a pid namespace only),
                      each in a fresh pid namespace; prints each root pid, one per
                      line, in copy order. In copy K, checkpoint() returns
                      Restored with copy Some(K) and a fresh random restore id.
                      All or nothing: if one copy fails, the others are killed.
    --lazy            with --copies: each copy runs before its memory is loaded
                      (CRIU lazy pages, one page daemon per copy). This command
                      then stays until every copy's memory is in, holding the
                      verified images until then. A copy whose daemon dies first
                      is killed and the reason logged (exit code 1).

Run by a user who is not root, it asks the service (`selfdump serve`) to
restore the images: the service verifies them the same way and restores
only the caller's own images (--copies needs root).";

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

const INSPECT_USAGE: &str = "\
selfdump inspect: what a checkpoint holds

USAGE: selfdump inspect [--json] [--key-file PATH] DIR

Shows the tree (pids, commands, threads), the owner, the options, sizes and
pages, when and by which service the images were made, whether their
signature verifies and with which key (the key is read when this command can
read it, as root), and whether their pids are free here. Files are checked
for presence and size, not hashed (a restore hashes them).

OPTIONS:
    --json           one JSON object, for scripts
    --key-file PATH  the signing key [default: /var/lib/selfdump/signing.key]";

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
        "inspect" => inspect_cmd(parser),
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
                    Some("inspect") => INSPECT_USAGE,
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
    // SAFETY: no other thread exists yet, and nothing took fds 3.. before.
    let activated = unsafe { selfdump::server::systemd::listener() }?;
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
            Long("key-file") => builder = builder.key_file(PathBuf::from(parser.value()?)),
            other => return Err(other.unexpected().into()),
        }
    }
    // Room for connections and dumps: systemd's default soft limit is 1024.
    match selfdump::server::raise_fd_limit() {
        Ok(n) => log::info!("fd limit: {n}"),
        Err(e) => log::warn!("cannot raise the fd limit to the hard limit: {e}"),
    }
    async_io::block_on(async {
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
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    let mut trust_unsigned = false;
    let mut deadline = Duration::from_secs(60);
    let mut socket = None;
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, RESTORE_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("criu") => criu.path = parser.value()?.into(),
            Long("wait") => wait = Duration::from_secs_f64(parser.value()?.parse()?),
            Long("copies") => copies = Some(parser.value()?.parse::<u32>()?),
            Long("lazy") => lazy = true,
            Long("key-file") => key_file = parser.value()?.into(),
            Long("trust-unsigned") => trust_unsigned = true,
            Long("timeout") => deadline = Duration::from_secs_f64(parser.value()?.parse()?),
            Long("socket") => socket = Some(PathBuf::from(parser.value()?)),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let dir = dir.ok_or("restore needs the images directory: selfdump restore DIR")?;
    if !rustix::process::geteuid().is_root() {
        if copies.is_some() {
            return Err(
                "--copies restores as root (run it with sudo); the service restores \
                        one copy for its owner"
                    .into(),
            );
        }
        // the owner of a checkpoint: through the service, which verifies
        // the images and that they are the caller's
        let mut options = selfdump::RestoreOptions::new(&dir);
        if let Some(socket) = socket {
            options = options.socket(socket);
        }
        if trust_unsigned {
            options = options.trust_unsigned();
        }
        let restored = selfdump::blocking::restore(options)?;
        println!("{}", restored.pid);
        log::info!(
            "the service restored {} as pid {} (verified in {:?}, {:?} in all)",
            dir.display(),
            restored.pid,
            restored.verify,
            restored.total
        );
        return Ok(ExitCode::SUCCESS);
    }
    let key = match manifest::Key::load(&key_file) {
        Ok(key) => Some(key),
        Err(e) if trust_unsigned => {
            log::warn!("no signing key ({e}): only unsigned images can be restored");
            None
        }
        Err(e) => return Err(format!("cannot read the signing key: {e}").into()),
    };
    if trust_unsigned {
        log::warn!(
            "--trust-unsigned: images without a manifest are restored unchecked, as root; \
             CRIU trusts them completely (credentials, files, namespaces)"
        );
    }
    let settings = restore::RestoreSettings {
        wait,
        trust_unsigned,
        deadline,
        ..restore::RestoreSettings::new(criu, key)
    };
    if lazy && copies.is_none() {
        return Err("--lazy goes with --copies N (use --copies 1 for one copy)".into());
    }
    if let Some(n) = copies {
        return copies_cmd(&settings, &dir, n, lazy);
    }
    let restored = restore::restore_path(&dir, &settings).map_err(|e| match e {
        e @ restore::RestoreError::IdInUse { .. } if !wait.is_zero() => {
            format!("after waiting {wait:?}: {e}")
        }
        e => e.to_string(),
    })?;
    println!("{}", restored.pid);
    log::info!(
        "restored {} as pid {} (verified in {:?}, {:?} in all)",
        dir.display(),
        restored.pid,
        restored.verify,
        restored.total
    );
    Ok(ExitCode::SUCCESS)
}

/// `selfdump restore --copies N [--lazy] DIR`.
fn copies_cmd(
    settings: &restore::RestoreSettings,
    dir: &std::path::Path,
    n: u32,
    lazy: bool,
) -> Res<ExitCode> {
    use std::io::Write;
    let copies = selfdump::server::copies::restore_copies(settings, dir, n, lazy)?;
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
    // the first four decide; what follows (dumps of non-root callers) is
    // a note on what works here
    let (core, notes) = findings.split_at(findings.len().min(4));
    for f in core {
        println!(
            "{} {:<40} {}",
            if f.ok { "ok  " } else { "FAIL" },
            f.what,
            f.detail
        );
    }
    let ok = core.iter().all(|f| f.ok) && core.len() == 4;
    for f in notes {
        println!(
            "{} {:<40} {}",
            if f.ok { "ok  " } else { "NOTE" },
            f.what,
            f.detail
        );
    }
    let root_only = notes.iter().any(|f| !f.ok);
    println!(
        "{}",
        match (ok, root_only) {
            (true, false) => "verdict: selfdump can checkpoint and restore on this machine",
            (true, true) =>
                "verdict: selfdump can checkpoint and restore on this machine, for root callers \
                 only (see NOTE above)",
            (false, _) => "verdict: NOT usable; fix the first FAIL above",
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn inspect_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let (mut json, mut dir) = (false, None);
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, INSPECT_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("json") => json = true,
            Long("key-file") => key_file = parser.value()?.into(),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let dir = dir.ok_or("inspect needs the images directory: selfdump inspect DIR")?;
    let key = manifest::Key::load(&key_file).ok();
    let report = selfdump::server::inspect::inspect(&dir, key.as_ref())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", describe(&dir, &report));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(dir: &std::path::Path, r: &selfdump::server::inspect::Inspection) -> String {
    use std::fmt::Write;
    let mut out = format!("images:    {}\n", dir.display());
    let signature = match &r.signature {
        None => "none (unsigned images: restore only with --trust-unsigned)".to_string(),
        Some(s) => match (s.verifies, &s.problem) {
            (Some(true), _) => format!("verifies (key {})", s.key_id),
            (Some(false), Some(p)) => format!("DOES NOT VERIFY: {p}"),
            _ => format!(
                "key {} (not checked: the key is not readable here)",
                s.key_id
            ),
        },
    };
    let _ = writeln!(out, "signature: {signature}");
    if let Some(m) = &r.meta {
        let _ = writeln!(
            out,
            "owner:     uid {} gid {} groups {:?}",
            m.uid, m.gid, m.groups
        );
        let _ = writeln!(
            out,
            "made:      job {} on {} (boot {}), {} s after the epoch",
            m.job, m.host, m.boot_id, m.created_unix
        );
        let options: Vec<&str> = [
            (m.shell_job, "shell-job"),
            (m.tcp_established, "tcp-established"),
            (m.file_locks, "file-locks"),
            (m.ext_unix_sk, "ext-unix-sk"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let _ = writeln!(out, "options:   {}", options.join(" "));
        if m.pid_namespace {
            let _ = writeln!(
                out,
                "namespace: a whole pid namespace (started with `selfdump run`): each \
                 restore makes a fresh one; `restore --copies N` starts many at once{}",
                if m.copy_slot.is_some() {
                    ", each told its number"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(out, "tree:      {} task(s)", r.tree.len());
    for t in &r.tree {
        let _ = writeln!(
            out,
            "  pid {} ({}) ppid {} pgid {} sid {} threads {:?}",
            t.pid, t.command, t.ppid, t.pgid, t.sid, t.threads
        );
    }
    let _ = writeln!(out, "size:      {} bytes, {} pages", r.bytes, r.pages);
    let mut states = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for f in &r.files {
        states.entry(f.state.as_str()).or_default().push(&f.name);
    }
    for (state, names) in states {
        let _ = writeln!(
            out,
            "files:     {} {state}: {}",
            names.len(),
            names.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "pids:      {}",
        r.ids_in_use.as_deref().unwrap_or("free here")
    );
    out
}
