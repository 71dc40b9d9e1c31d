//! `selfdump restore`: verify and restore a checkpoint (one, or many copies).

use crate::cli::{Res, at_least_one, out, seconds, usage};
use crate::help_requested;
use selfdump::server::{Criu, check, manifest, restore};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
selfdump restore: restore a checkpoint, detached from this command

USAGE: selfdump restore [OPTIONS] DIR
       selfdump restore [OPTIONS] DIR/GENERATION
       selfdump restore --copies N [--lazy] [OPTIONS] DIR

Restores the generation DIR/latest names (each checkpoint into DIR is a
generation of its own, DIR/gen-...; `selfdump inspect DIR` lists them), or
the one named, or images directly in DIR (made before generations).

Verifies the images first: their manifest must be signed with the service's
key, every signed file must be there as signed (nothing changed or removed;
a file the manifest does not list is ignored, with a warning, and never
reaches CRIU), and every task's credentials must be the recorded owner's;
CRIU then reads only the verified files. Checks that every pid, session and process group in the
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
only the caller's own images (--copies needs root).

EXIT CODES: 0 restored (the pids are printed); 1 refused (not a checkpoint,
unsigned, changed since the dump, its ids in use) or CRIU failed, and with
--lazy a copy that lost its page daemon; 2 a usage error.";

/// What the command line asks for.
struct Args {
    criu: Criu,
    dir: PathBuf,
    wait: Duration,
    copies: Option<u32>,
    lazy: bool,
    key_file: PathBuf,
    trust_unsigned: bool,
    deadline: Duration,
    socket: Option<PathBuf>,
}

/// Reads the options; `None` when the help was asked for.
fn args(mut parser: lexopt::Parser) -> Res<Option<Args>> {
    use lexopt::Arg::*;
    let mut a = Args {
        criu: Criu {
            path: check::find_criu(),
            ..Criu::default()
        },
        dir: PathBuf::new(),
        wait: Duration::ZERO,
        copies: None,
        lazy: false,
        key_file: PathBuf::from(manifest::DEFAULT_KEY_FILE),
        trust_unsigned: false,
        deadline: Duration::from_secs(60),
        socket: None,
    };
    let mut dir = None;
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(None);
        }
        match arg {
            Long("criu") => a.criu.path = parser.value()?.into(),
            Long("wait") => a.wait = seconds(&mut parser, "wait", true)?,
            Long("copies") => a.copies = Some(at_least_one(&mut parser, "copies")?),
            Long("lazy") => a.lazy = true,
            Long("key-file") => a.key_file = parser.value()?.into(),
            Long("trust-unsigned") => a.trust_unsigned = true,
            Long("timeout") => a.deadline = seconds(&mut parser, "timeout", false)?,
            Long("socket") => a.socket = Some(PathBuf::from(parser.value()?)),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    a.dir = dir.ok_or_else(|| usage("which images? selfdump restore DIR"))?;
    if a.lazy && a.copies.is_none() {
        return Err(usage(
            "--lazy goes with --copies N (use --copies 1 for one copy)",
        ));
    }
    Ok(Some(a))
}

pub(crate) fn restore_cmd(parser: lexopt::Parser) -> Res<ExitCode> {
    let Some(a) = args(parser)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if !rustix::process::geteuid().is_root() {
        return through_the_service(a);
    }
    let key = match manifest::Key::load(&a.key_file) {
        Ok(key) => Some(key),
        Err(e) if a.trust_unsigned => {
            log::warn!("no signing key ({e}): only unsigned images can be restored");
            None
        }
        Err(e) => return Err(format!("cannot read the signing key: {e}").into()),
    };
    if a.trust_unsigned {
        log::warn!(
            "--trust-unsigned: images without a manifest are restored unchecked, as root; \
             CRIU trusts them completely (credentials, files, namespaces)"
        );
    }
    let settings = restore::RestoreSettings {
        wait: a.wait,
        trust_unsigned: a.trust_unsigned,
        deadline: a.deadline,
        ..restore::RestoreSettings::new(a.criu, key)
    };
    if let Some(n) = a.copies {
        return copies_cmd(&settings, &a.dir, n, a.lazy);
    }
    let wait = a.wait;
    let restored = restore::restore_path(&a.dir, &settings).map_err(|e| match e {
        e @ restore::RestoreError::IdInUse { .. } if !wait.is_zero() => {
            format!("after waiting {wait:?}: {e}")
        }
        e => e.to_string(),
    })?;
    out(restored.pid)?;
    log::info!(
        "restored {}{} as pid {} (verified in {:?}, {:?} in all)",
        a.dir.display(),
        shown(restored.generation.as_deref()),
        restored.pid,
        restored.verify,
        restored.total
    );
    Ok(ExitCode::SUCCESS)
}

/// The owner of a checkpoint restores it through the service, which
/// verifies the images and that they are the caller's.
fn through_the_service(a: Args) -> Res<ExitCode> {
    if a.copies.is_some() {
        return Err(
            "--copies restores as root (run it with sudo); the service restores \
                    one copy for its owner"
                .into(),
        );
    }
    let mut options = selfdump::RestoreOptions::new(&a.dir);
    if let Some(socket) = a.socket {
        options = options.socket(socket);
    }
    if a.trust_unsigned {
        options = options.trust_unsigned();
    }
    let restored = selfdump::blocking::restore(options)?;
    out(restored.pid)?;
    log::info!(
        "the service restored {}{} as pid {} (verified in {:?}, {:?} in all)",
        a.dir.display(),
        shown(restored.generation.as_deref()),
        restored.pid,
        restored.verify,
        restored.total
    );
    Ok(ExitCode::SUCCESS)
}

/// ` (generation NAME)`, or nothing for images directly in the directory.
fn shown(generation: Option<&str>) -> String {
    generation.map_or(String::new(), |g| format!(" (generation {g})"))
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
