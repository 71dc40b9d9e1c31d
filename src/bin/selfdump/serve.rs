//! `selfdump serve`: the checkpoint service.

use crate::{Res, help_requested};
use lexopt::prelude::*;
use selfdump::server::{Criu, NonRootFallback, Policy, Server, check};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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

pub(crate) fn serve(mut parser: lexopt::Parser) -> Res<ExitCode> {
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
        if help_requested(&arg, USAGE) {
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
            Long("non-root-fallback") => {
                let fallback = match parser.value()?.string()?.as_str() {
                    "refuse" => NonRootFallback::Refuse,
                    "root" => NonRootFallback::RootEngine,
                    other => {
                        return Err(format!(
                            "--non-root-fallback wants `refuse` or `root`, not `{other}`"
                        )
                        .into());
                    }
                };
                builder = builder.non_root_fallback(fallback);
            }
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
            Long("max-keep") => builder = builder.max_keep(parser.value()?.parse()?),
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
