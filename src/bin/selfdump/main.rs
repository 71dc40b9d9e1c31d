//! `selfdump`: serve checkpoints, restore images, check CRIU.

#[cfg(feature = "archive")]
mod archive;
mod check;
mod copies;
mod inspect;
mod key;
mod restore;
mod run;
mod serve;
#[cfg(feature = "remote")]
mod store;

use lexopt::prelude::*;
use std::process::ExitCode;

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
    selfdump push DIR URL         upload a checkpoint to an object store; prints its URL
    selfdump pull URL DIR         a checkpoint from a store made a local one
    selfdump restore URL          restore a checkpoint from a store (--copies N, --lazy)
    selfdump export DIR FILE      a checkpoint as one compressed file, signature inside
    selfdump import FILE DIR      such a file, checked, made a local checkpoint
    selfdump key public           this service's public key, for other hosts' trust
                                  directories (/etc/selfdump/trusted.d/)
    selfdump help [COMMAND]       this text, or a command's options

Logging: RUST_LOG=info (default), debug, ...";

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

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

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
        "help" => {
            let topic = parser.next()?.map(|a| match a {
                lexopt::Arg::Value(v) => v.string().unwrap_or_default(),
                _ => String::new(),
            });
            println!(
                "{}",
                match topic.as_deref() {
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
                    _ => USAGE,
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}; see `selfdump help`").into()),
    }
}

pub(crate) fn help_requested(arg: &lexopt::Arg<'_>, usage: &str) -> bool {
    if matches!(arg, lexopt::Arg::Long("help") | lexopt::Arg::Short('h')) {
        println!("{usage}");
        return true;
    }
    false
}
