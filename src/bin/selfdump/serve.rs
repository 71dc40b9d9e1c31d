//! `selfdump serve`: the checkpoint service.

use crate::cli::{Res, at_least_one, seconds, usage, value};
use crate::{help_requested, need_root};
use selfdump::server::{Builder, Criu, NonRootFallback, Policy, Server, check};
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) const USAGE: &str = "\
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
    --max-keep N         generations a checkpoint may keep in its images
                         directory; a caller asking more keeps N [default: 16]
    --criu PATH          criu binary [default: found on PATH or /usr/local/sbin]
    --warm-workers N     criu swrk workers kept started ahead for root callers
                         (saves CRIU's start-up, 3-11 ms per dump; 0 for
                         none) [default: 1]
    --non-root-fallback refuse|root
                         a non-root caller's dump runs CRIU as that caller
                         (CAP_CHECKPOINT_RESTORE only); where the kernel or
                         this service cannot start it so (Linux < 5.9, a
                         bounding set without CAP_CHECKPOINT_RESTORE), refuse
                         non-root checkpoints, or dump them with root's CRIU
                         [default: refuse]
    --key-file PATH      the key that signs the images; made on first start
                         (root's, 0600) [default: /var/lib/selfdump/signing.key];
                         its public key is written beside it (signing.pub)
    --trust-dir DIR      public keys of other services: an owner may restore
                         their checkpoints through this service too (pulled
                         from a store) [default: /etc/selfdump/trusted.d]

Stops on SIGTERM or SIGINT after the dumps in flight finish; a second
signal stops at once (dumps in flight are abandoned: CRIU lets their
processes run on at its next step, their callers are told they have no
checkpoint to trust; exit code 1).

Under systemd (or any manager that speaks its protocols): with LISTEN_PID set
to this process and LISTEN_FDS >= 1, serves on the listening socket passed as
fd 3 instead of binding --socket (socket activation; see
systemd/selfdump.socket), and sends READY=1 to $NOTIFY_SOCKET once it serves
(Type=notify; see systemd/selfdump.service).

EXIT CODES: 0 stopped by SIGTERM or SIGINT once the dumps in flight were
done; 1 could not start (not root, the socket, CRIU, the key), or a second
signal abandoned the dumps in flight; 2 a usage error.";

/// What the command line asks for.
struct Settings {
    socket: PathBuf,
    builder: Builder,
    policy: Policy,
    criu: Criu,
}

/// Reads the options; `None` when the help was asked for.
fn settings(mut parser: lexopt::Parser) -> Res<Option<Settings>> {
    use lexopt::Arg::*;
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
        if help_requested(&arg, USAGE) {
            return Ok(None);
        }
        match arg {
            Long("socket") => socket = parser.value()?.into(),
            Long("allow-uid") => {
                policy.allow_uids.insert(value(&mut parser, "allow-uid")?);
            }
            Long("allow-gid") => {
                policy.allow_gids.insert(value(&mut parser, "allow-gid")?);
            }
            Long("allow-any") => policy.allow_any = true,
            Long("criu") => criu.path = parser.value()?.into(),
            Long(name) => {
                let name = name.to_owned();
                builder = builder_option(builder, &name, &mut parser)?;
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Some(Settings {
        socket,
        builder,
        policy,
        criu,
    }))
}

/// The options that set the server's builder (limits, times, the socket's
/// mode and owner, the key).
fn builder_option(builder: Builder, name: &str, parser: &mut lexopt::Parser) -> Res<Builder> {
    Ok(match name {
        "socket-mode" => builder.socket_mode(socket_mode(parser)?),
        "socket-owner" => {
            let v: String = value(parser, "socket-owner")?;
            let owner = v
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
            let (u, g) = owner.ok_or_else(|| {
                usage(format!("--socket-owner wants UID:GID (numbers), not {v:?}"))
            })?;
            builder.socket_owner(u, g)
        }
        "warm-workers" => builder.warm_workers(value(parser, name)?),
        "non-root-fallback" => builder.non_root_fallback(fallback(parser)?),
        "max-dumps" => builder.max_dumps(at_least_one(parser, name)?),
        "max-dumps-per-uid" => builder.max_dumps_per_uid(at_least_one(parser, name)?),
        "max-connections" => builder.max_connections(at_least_one(parser, name)?),
        "max-connections-per-uid" => builder.max_connections_per_uid(at_least_one(parser, name)?),
        "request-timeout" => builder.request_timeout(seconds(parser, name, false)?),
        "dump-timeout" => builder.dump_timeout(seconds(parser, name, false)?),
        "max-keep" => builder.max_keep(at_least_one(parser, name)?),
        "key-file" => builder.key_file(PathBuf::from(parser.value()?)),
        "trust-dir" => builder.trust_dir(PathBuf::from(parser.value()?)),
        _ => return Err(usage(format!("invalid option '--{name}'"))),
    })
}

/// `--socket-mode OCTAL`: permission bits only.
fn socket_mode(parser: &mut lexopt::Parser) -> Res<u32> {
    let v: String = value(parser, "socket-mode")?;
    match u32::from_str_radix(&v, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(usage(format!(
            "--socket-mode wants permission bits in octal (600, 660, 666), not {v:?}"
        ))),
    }
}

/// `--non-root-fallback refuse|root`.
fn fallback(parser: &mut lexopt::Parser) -> Res<NonRootFallback> {
    match value::<String>(parser, "non-root-fallback")?.as_str() {
        "refuse" => Ok(NonRootFallback::Refuse),
        "root" => Ok(NonRootFallback::RootEngine),
        other => Err(usage(format!(
            "--non-root-fallback wants `refuse` or `root`, not `{other}`"
        ))),
    }
}

pub(crate) fn serve(parser: lexopt::Parser) -> Res<ExitCode> {
    // First, before any thread exists: it edits the environment.
    // SAFETY: no other thread exists yet, and nothing took fds 3.. before.
    let activated = unsafe { selfdump::server::systemd::listener() }?;
    let Some(Settings {
        socket,
        builder,
        policy,
        criu,
    }) = settings(parser)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    need_root(
        "the service reads each caller's identity from the kernel, starts CRIU for its \
         dump and signs the images with a key only root can read",
    )?;
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
        until_signalled(server).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves until SIGTERM or SIGINT, then until the dumps in flight are
/// done (or a second signal).
async fn until_signalled(server: Server) -> Res<()> {
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
                "received {}: refusing new checkpoints, finishing dumps in flight, then exiting",
                name(signal)
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
                "received {} again: exiting now; dumps in flight are abandoned \
                 (their processes run on, their callers are told the outcome is unknown)",
                name(signal)
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
    Ok(())
}

/// `SIGTERM`, `SIGINT`: a signal as the service log names it.
fn name(signal: async_signal::Signal) -> &'static str {
    match signal {
        async_signal::Signal::Term => "SIGTERM",
        async_signal::Signal::Int => "SIGINT",
        _ => "a signal",
    }
}
