//! `selfdump restore`: verify and restore a checkpoint (one, or many
//! copies), from a directory or, with feature `remote`, a store's URL.

use crate::cli::{Res, at_least_one, out, seconds, usage};
use crate::help_requested;
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
key or one of the trust directory, be taken on a host this one can stand
in for (architecture, CRIU and kernel no newer, CPU features), every
signed file must be there as signed (nothing changed or removed; a file
the manifest does not list is ignored, with a warning, and never reaches
CRIU), and every task's credentials must be the recorded owner's; CRIU
then reads only the verified files. Checks that every pid, session and
process group in the images is free and names the process holding one
that is not. Prints the restored root pid.

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
only the caller's own images (--copies needs root).

EXIT CODES: 0 restored (the pids are printed); 1 refused (not a checkpoint,
unsigned, signed by a key not trusted here, changed since the dump, taken on
a host this one cannot stand in for, its ids in use; from a store: damaged,
missing or unreachable, naming the object) or CRIU failed, and with --lazy a
copy that lost its page daemon; 2 a usage error.";

/// What the command line asks for.
struct Args {
    criu: Criu,
    dir: PathBuf,
    wait: Duration,
    copies: Option<u32>,
    lazy: bool,
    key_file: PathBuf,
    trust_dir: PathBuf,
    trust_unsigned: bool,
    deadline: Duration,
    socket: Option<PathBuf>,
    cache_dir: PathBuf,
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
        trust_dir: PathBuf::from(trust::DEFAULT_TRUST_DIR),
        trust_unsigned: false,
        deadline: Duration::from_secs(60),
        socket: None,
        cache_dir: PathBuf::from("/var/cache/selfdump"),
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
            Long("trust-dir") => a.trust_dir = parser.value()?.into(),
            Long("trust-unsigned") => a.trust_unsigned = true,
            Long("timeout") => a.deadline = seconds(&mut parser, "timeout", false)?,
            Long("socket") => a.socket = Some(PathBuf::from(parser.value()?)),
            Long("cache-dir") => a.cache_dir = parser.value()?.into(),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    a.dir = dir.ok_or_else(|| usage("which images? selfdump restore DIR (or URL)"))?;
    if a.lazy && a.copies.is_none() {
        return Err(usage(
            "--lazy goes with --copies N (use --copies 1 for one copy)",
        ));
    }
    Ok(Some(a))
}

impl Args {
    /// The checkpoint's URL, when it names one in a store.
    fn url(&self) -> Option<String> {
        self.dir
            .to_str()
            .filter(|d| d.contains("://"))
            .map(str::to_owned)
    }

    /// How root restores here: this host's key (a host that only restores
    /// others' checkpoints needs none of its own) and the trusted keys.
    fn settings(&self) -> Res<restore::RestoreSettings> {
        let (key, no_key) = match manifest::Key::load(&self.key_file) {
            Ok(key) => (Some(key), None),
            Err(e) => (None, Some(e)),
        };
        let trust = trust::Trust::load(key.clone(), &self.trust_dir)
            .map_err(|e| format!("cannot read the trusted keys: {e}"))?;
        match no_key {
            Some(e) if trust.is_empty() && !self.trust_unsigned => {
                return Err(format!(
                    "cannot read the signing key ({e}), and {} holds no trusted key",
                    self.trust_dir.display()
                )
                .into());
            }
            Some(e) if trust.is_empty() => {
                log::warn!("no signing key ({e}): only unsigned images can be restored")
            }
            Some(e) => log::info!("no key of this host's ({e}): checkpoints of trusted keys only"),
            None => {}
        }
        if self.trust_unsigned {
            log::warn!(
                "--trust-unsigned: images without a manifest are restored unchecked, as root; \
                 CRIU trusts them completely (credentials, files, namespaces)"
            );
        }
        Ok(restore::RestoreSettings {
            wait: self.wait,
            trust_unsigned: self.trust_unsigned,
            deadline: self.deadline,
            ..restore::RestoreSettings::new(self.criu.clone(), key)
        }
        .trusting(trust))
    }
}

pub(crate) fn restore_cmd(parser: lexopt::Parser) -> Res<ExitCode> {
    let Some(a) = args(parser)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let url = a.url();
    if !rustix::process::geteuid().is_root() {
        return through_the_service(a, url.is_some());
    }
    if url.is_none() && a.copies.is_none() {
        // CRIU starts while the key is read and the images verified
        restore::prestart(&a.criu);
    }
    let settings = a.settings()?;
    if let Some(url) = url {
        return restore_url(&settings, &url, a.copies, a.lazy, &a.cache_dir);
    }
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
fn through_the_service(a: Args, url: bool) -> Res<ExitCode> {
    if url {
        return Err(format!(
            "needs root: restoring from a store fills the host's root-only chunk cache (this \
             is uid {}; run it with sudo, or, as the checkpoint's owner, `selfdump pull URL \
             DIR` then `selfdump restore DIR`)",
            rustix::process::geteuid().as_raw()
        )
        .into());
    }
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
    crate::copies::print_copies(copies, lazy)
}
