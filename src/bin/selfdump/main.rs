//! `selfdump`: serve checkpoints, restore images, check CRIU.

#[cfg(feature = "archive")]
mod archive;
mod check;
mod cli;
mod copies;
mod inspect;
mod key;
mod restore;
mod run;
mod serve;
#[cfg(feature = "remote")]
mod store;

use cli::{Exit, Res, is_usage, out, usage};
use std::process::ExitCode;

const USAGE: &str = "\
selfdump: let processes checkpoint themselves with CRIU

USAGE:
    selfdump serve [OPTIONS]      run the checkpoint service (as root)
    selfdump restore [OPTIONS] DIR  restore images, detached; prints the root pid
    selfdump run -- CMD [ARGS]    run CMD in a pid namespace of its own (as root), so
                                  that its checkpoints restore as many copies at once
    selfdump inspect [OPTIONS] DIR  what a checkpoint holds, and whether it restores
                                  here (--json for scripts)
    selfdump check [OPTIONS]      is CRIU usable here? (real dump and restore)
    selfdump check --pid PID      what in process PID would CRIU refuse? (preflight)
    selfdump push DIR URL         upload a checkpoint to an object store; prints its URL
    selfdump pull URL DIR         a checkpoint from a store made a local one
    selfdump restore URL          restore a checkpoint from a store (--copies N, --lazy)
    selfdump export DIR FILE      a checkpoint as one compressed file, signature inside
    selfdump import FILE DIR      such a file, checked, made a local checkpoint
    selfdump key public           this service's public key, for other hosts' trust
                                  directories (/etc/selfdump/trusted.d/)
    selfdump help [COMMAND]       this text, or a command's options and exit codes
    selfdump --version            the version, and the protocol it speaks

EXIT CODES: 0 done, 1 failed, 2 a usage error (see `selfdump help COMMAND`);
`run` exits with CMD's status, `inspect` 3 when it cannot tell (each command's
help lists its own).

Logging: RUST_LOG=info (default), debug, ...";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut parser = lexopt::Parser::from_env();
    let command = match parser.next() {
        Ok(Some(lexopt::Arg::Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))) => return help(None),
        Ok(Some(lexopt::Arg::Long("version") | lexopt::Arg::Short('V'))) => {
            let _ = out(format_args!(
                "selfdump {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                selfdump::proto::PROTOCOL_VERSION
            ));
            return ExitCode::SUCCESS;
        }
        Ok(None) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Ok(Some(other)) => return failed("", other.unexpected().into()),
        Err(e) => return failed("", e.into()),
    };
    let result = match command.as_str() {
        "serve" => serve::serve(parser),
        "restore" => restore::restore_cmd(parser),
        "run" | "__init" => run::run_cmd(&command, parser),
        "inspect" => inspect::inspect_cmd(parser),
        "check" => check::check_cmd(parser),
        "key" => key::key_cmd(parser),
        #[cfg(feature = "remote")]
        "push" => store::push_cmd(parser),
        #[cfg(feature = "remote")]
        "pull" => store::pull_cmd(parser),
        #[cfg(feature = "archive")]
        "export" => archive::export_cmd(parser),
        #[cfg(feature = "archive")]
        "import" => archive::import_cmd(parser),
        #[cfg(not(feature = "remote"))]
        "push" | "pull" => Err(format!(
            "this selfdump is built without `{command}` (cargo feature `remote`)"
        )
        .into()),
        #[cfg(not(feature = "archive"))]
        "export" | "import" => Err(format!(
            "this selfdump is built without `{command}` (cargo feature `archive`)"
        )
        .into()),
        "help" => return help_cmd(parser),
        other => Err(usage(format!("unknown command {other:?}"))),
    };
    match result {
        Ok(code) => code,
        Err(e) => failed(&command, e),
    }
}

/// Says why `command` failed, and exits with the code that says how:
/// 2 for a usage error (with a pointer to the command's help), a code of
/// its own for an [`Exit`], 1 otherwise. `selfdump run` uses 125 for both
/// of the first, as `env` and `podman run` do, so that every other code
/// is the program's own.
fn failed(command: &str, e: Box<dyn std::error::Error>) -> ExitCode {
    let runs = matches!(command, "run" | "__init");
    let name = match command {
        "__init" => "selfdump run".to_owned(),
        c if KNOWN.contains(&c) || c == "help" => format!("selfdump {c}"),
        _ => "selfdump".to_owned(),
    };
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::FAILURE; // the reader went away: nobody to tell
    }
    if is_usage(&*e) {
        let topic = match command {
            "" | "help" => String::new(),
            "__init" => " run".to_owned(),
            c if KNOWN.contains(&c) => format!(" {c}"),
            _ => String::new(),
        };
        eprintln!("{name}: {e}\nsee `selfdump help{topic}`");
        return ExitCode::from(if runs { 125 } else { 2 });
    }
    eprintln!("{name}: {e}");
    match e.downcast_ref::<Exit>() {
        Some(exit) => ExitCode::from(exit.code),
        None if runs => ExitCode::from(125),
        None => ExitCode::FAILURE,
    }
}

const KNOWN: [&str; 10] = [
    "serve", "restore", "run", "inspect", "check", "key", "push", "pull", "export", "import",
];

/// `selfdump help [COMMAND]`.
fn help_cmd(mut parser: lexopt::Parser) -> ExitCode {
    let topic = match parser.next() {
        Ok(None) => None,
        Ok(Some(lexopt::Arg::Value(v))) => Some(v.to_string_lossy().into_owned()),
        Ok(Some(other)) => return failed("help", other.unexpected().into()),
        Err(e) => return failed("help", e.into()),
    };
    if let Ok(Some(extra)) = parser.next() {
        return failed("help", extra.unexpected().into());
    }
    help(topic.as_deref())
}

/// Prints the overview, or a command's help; a usage error for a command
/// that does not exist.
fn help(topic: Option<&str>) -> ExitCode {
    let text = match topic {
        None => USAGE,
        Some("serve") => serve::USAGE,
        Some("restore") => restore::USAGE,
        Some("run") => run::USAGE,
        Some("inspect") => inspect::USAGE,
        Some("check") => check::USAGE,
        Some("key") => key::USAGE,
        #[cfg(feature = "remote")]
        Some("push") => store::PUSH_USAGE,
        #[cfg(feature = "remote")]
        Some("pull") => store::PULL_USAGE,
        #[cfg(feature = "archive")]
        Some("export" | "import") => archive::USAGE,
        Some(other) => {
            return failed(
                "help",
                usage(format!(
                    "no command {other:?}; the commands are {}",
                    KNOWN.join(", ")
                )),
            );
        }
    };
    let _ = out(text);
    ExitCode::SUCCESS
}

/// Whether `arg` asks for the command's help, which it then prints.
pub(crate) fn help_requested(arg: &lexopt::Arg<'_>, usage: &str) -> bool {
    if matches!(arg, lexopt::Arg::Long("help") | lexopt::Arg::Short('h')) {
        let _ = out(usage);
        return true;
    }
    false
}

/// Fails unless this process runs as root, saying `why` the command
/// needs it.
pub(crate) fn need_root(why: &str) -> Res<()> {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return Ok(());
    }
    Err(format!(
        "needs root: {why} (this is uid {}; run it with sudo)",
        euid.as_raw()
    )
    .into())
}
