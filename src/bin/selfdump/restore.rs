//! `selfdump restore`: verify and restore a checkpoint (one, or many copies).

use crate::{Res, help_requested};
use lexopt::prelude::*;
use selfdump::server::{Criu, check, manifest, restore, trust};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
selfdump restore: restore a checkpoint, detached from this command

USAGE: selfdump restore [OPTIONS] DIR
       selfdump restore [OPTIONS] DIR/GENERATION
       selfdump restore --copies N [--lazy] [OPTIONS] DIR
       selfdump restore [--copies N [--lazy]] [OPTIONS] URL

A URL is a checkpoint in an object store, as `selfdump push` printed it
(ROOT/checkpoints/<id>; feature `remote`), restored as root: its signed
manifest is verified and this host checked before any chunk is fetched;
chunks are fetched in parallel, each checked against its hash, and kept in
a root-only cache (--cache-dir) so that copies and later restores fetch
them once; then the files are assembled and restored as a local checkpoint.

Restores the generation DIR/latest names (each checkpoint into DIR is a
generation of its own, DIR/gen-...; `selfdump inspect DIR` lists them), or
the one named, or images directly in DIR (made before generations).

Verifies the images first: their manifest must be signed with this service's
key or one of the trust directory, be taken on a host this one can stand in
for (architecture, CRIU and kernel no newer, CPU features), every signed file must be there as signed (nothing changed or removed;
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
    --key-file PATH   this service's key [default: /var/lib/selfdump/signing.key]
    --trust-dir DIR   public keys of other services whose checkpoints restore
                      here too [default: /etc/selfdump/trusted.d]
    --trust-unsigned  also restore images without a manifest (made by plain
                      CRIU), unchecked; root only, with a warning
    --timeout SECS    kill CRIU, and what it restored, past this [default: 60]
    --cache-dir DIR   the chunk cache, for URLs: root's, 0700 [default:
                      /var/cache/selfdump]
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

pub(crate) fn restore_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut criu = Criu {
        path: check::find_criu(),
        ..Criu::default()
    };
    let mut dir = None;
    let mut wait = Duration::ZERO;
    let (mut copies, mut lazy) = (None, false);
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    let mut trust_dir = PathBuf::from(trust::DEFAULT_TRUST_DIR);
    let mut trust_unsigned = false;
    let mut deadline = Duration::from_secs(60);
    let mut socket = None;
    let mut cache_dir = PathBuf::from("/var/cache/selfdump");
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("criu") => criu.path = parser.value()?.into(),
            Long("wait") => wait = Duration::from_secs_f64(parser.value()?.parse()?),
            Long("copies") => copies = Some(parser.value()?.parse::<u32>()?),
            Long("lazy") => lazy = true,
            Long("key-file") => key_file = parser.value()?.into(),
            Long("trust-dir") => trust_dir = parser.value()?.into(),
            Long("trust-unsigned") => trust_unsigned = true,
            Long("timeout") => deadline = Duration::from_secs_f64(parser.value()?.parse()?),
            Long("socket") => socket = Some(PathBuf::from(parser.value()?)),
            Long("cache-dir") => cache_dir = parser.value()?.into(),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let dir = dir.ok_or("restore needs the images directory: selfdump restore DIR")?;
    let url = dir
        .to_str()
        .filter(|d| d.contains("://"))
        .map(str::to_owned);
    if url.is_some() && !rustix::process::geteuid().is_root() {
        return Err(
            "restoring from a store needs root (its chunk cache is root's); as the \
                    checkpoint's owner, `selfdump pull URL DIR` then `selfdump restore DIR`"
                .into(),
        );
    }
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
            "the service restored {}{} as pid {} (verified in {:?}, {:?} in all)",
            dir.display(),
            shown(restored.generation.as_deref()),
            restored.pid,
            restored.verify,
            restored.total
        );
        return Ok(ExitCode::SUCCESS);
    }
    // a host that only restores others' checkpoints needs no key of its own
    let (key, no_key) = match manifest::Key::load(&key_file) {
        Ok(key) => (Some(key), None),
        Err(e) => (None, Some(e)),
    };
    let trust = trust::Trust::load(key.clone(), &trust_dir)
        .map_err(|e| format!("cannot read the trusted keys: {e}"))?;
    match no_key {
        Some(e) if trust.is_empty() && !trust_unsigned => {
            return Err(format!(
                "cannot read the signing key ({e}), and {} holds no trusted key",
                trust_dir.display()
            )
            .into());
        }
        Some(e) if trust.is_empty() => {
            log::warn!("no signing key ({e}): only unsigned images can be restored")
        }
        Some(e) => log::info!("no key of this host's ({e}): checkpoints of trusted keys only"),
        None => {}
    }
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
    }
    .trusting(trust);
    if lazy && copies.is_none() {
        return Err("--lazy goes with --copies N (use --copies 1 for one copy)".into());
    }
    if let Some(url) = url {
        return restore_url(&settings, &url, copies, lazy, &cache_dir);
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
        "restored {}{} as pid {} (verified in {:?}, {:?} in all)",
        dir.display(),
        shown(restored.generation.as_deref()),
        restored.pid,
        restored.verify,
        restored.total
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "remote")]
fn restore_url(
    settings: &restore::RestoreSettings,
    url: &str,
    copies: Option<u32>,
    lazy: bool,
    cache_dir: &std::path::Path,
) -> Res<ExitCode> {
    crate::store::restore_url_cmd(settings, url, copies, lazy, cache_dir)
}

#[cfg(not(feature = "remote"))]
fn restore_url(
    _: &restore::RestoreSettings,
    url: &str,
    _: Option<u32>,
    _: bool,
    _: &std::path::Path,
) -> Res<ExitCode> {
    Err(format!("{url}: this selfdump is built without stores (cargo feature `remote`)").into())
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
    let copies = selfdump::server::copies::restore_copies(settings, dir, n, lazy)?;
    print_copies(copies, lazy)
}

/// Prints each copy's root pid, and with `lazy`, stays until their memory
/// is in.
pub(crate) fn print_copies(copies: selfdump::server::copies::Copies, lazy: bool) -> Res<ExitCode> {
    use std::io::Write;
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
