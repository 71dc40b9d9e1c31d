//! `selfdump push`, `pull`, and the store side of `restore URL` and
//! `inspect URL` (feature `remote`).

use crate::cli::{Res, out, usage};
use crate::help_requested;
use lexopt::prelude::*;
use selfdump::server::store::{self, cache};
use selfdump::server::{manifest, restore, trust};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) const PUSH_USAGE: &str = "\
selfdump push: upload a checkpoint to an object store

USAGE: selfdump push DIR URL

Uploads the generation DIR/latest names (or the images in DIR) to the store
at URL and prints the checkpoint's URL (URL/checkpoints/<id>), which
`selfdump restore`, `inspect` and `pull` take on any host that trusts this
service's key. Run it as the checkpoint's owner, with your own credentials:
the service never holds any.

Files are cut into chunks of about 4 MiB on page boundaries chosen by their
content, compressed (zstd) and stored under the hash of their content; only
chunks the store lacks are uploaded (a second checkpoint of the same program
uploads what changed), in parallel.

URL: s3://BUCKET[/PREFIX] (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL for another S3 server, AWS_ALLOW_HTTP=true
for plain HTTP), gs://BUCKET[/PREFIX] (GOOGLE_*), az://CONTAINER[/PREFIX]
(AZURE_*), file:///PATH.

EXIT CODES: 0 pushed (the URL is printed); 1 failed (the file or object
named); 2 a usage error.";

pub(crate) const PULL_USAGE: &str = "\
selfdump pull: make a checkpoint in a store a local one

USAGE: selfdump pull [--key-file PATH] [--trust-dir DIR] URL DIR

Fetches the checkpoint at URL (as `selfdump push` printed it), verifies its
signature with this host's key or one of the trust directory, every chunk
and every file against its signed hash, and makes it a generation of DIR
that DIR/latest names: `selfdump restore DIR` restores it (through the
service, for its owner), and so does plain CRIU (`criu restore -D
DIR/latest`). Made with your own rights (no root cache).

OPTIONS:
    --key-file PATH  this service's key [default: /var/lib/selfdump/signing.key;
                     its signing.pub beside it when the key is not readable]
    --trust-dir DIR  other services' public keys [default: /etc/selfdump/trusted.d]

EXIT CODES: 0 pulled (the generation's path is printed); 1 refused (the
object, chunk or file named) or the store unreachable; 2 a usage error.";

pub(crate) fn push_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    let mut values = Vec::new();
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, PUSH_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            lexopt::Arg::Value(v) if values.len() < 2 => values.push(v.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let [dir, url] = <[String; 2]>::try_from(values)
        .map_err(|_| usage("which checkpoint, and which store? selfdump push DIR URL"))?;
    let pushed = async_io::block_on(store::push(Path::new(&dir), &url))?;
    out(&pushed.url)?;
    log::info!(
        "pushed {dir}{}: {} bytes in {} chunks, {} uploaded ({} bytes) in {:?}",
        pushed
            .generation
            .as_deref()
            .map_or(String::new(), |g| format!(" (generation {g})")),
        pushed.bytes,
        pushed.chunks,
        pushed.uploaded_chunks,
        pushed.uploaded_bytes,
        pushed.elapsed
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn pull_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    let mut trust_dir = PathBuf::from(trust::DEFAULT_TRUST_DIR);
    let mut values = Vec::new();
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, PULL_USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("key-file") => key_file = parser.value()?.into(),
            Long("trust-dir") => trust_dir = parser.value()?.into(),
            Value(v) if values.len() < 2 => values.push(v.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let [url, dir] = <[String; 2]>::try_from(values)
        .map_err(|_| usage("which checkpoint, and where? selfdump pull URL DIR"))?;
    let trust = trust::Trust::load_host(&key_file, &trust_dir)?;
    let pulled = store::pull(&url, Path::new(&dir), &trust)?;
    out(pulled.path.display())?;
    log::info!(
        "pulled {url} into {} ({} chunks fetched, {} bytes)",
        pulled.path.display(),
        pulled.assembled.chunks_fetched,
        pulled.assembled.bytes_fetched
    );
    Ok(ExitCode::SUCCESS)
}

/// `selfdump restore URL [--copies N [--lazy]]`, as root.
pub(crate) fn restore_url_cmd(
    settings: &restore::RestoreSettings,
    url: &str,
    copies: Option<u32>,
    lazy: bool,
    cache_dir: &Path,
) -> Res<ExitCode> {
    let cache = Arc::new(
        cache::Cache::open(cache_dir, cache::DEFAULT_CACHE_BYTES)
            .map_err(|e| format!("the chunk cache: {e}"))?,
    );
    let Some(n) = copies else {
        let (restored, fetched) = store::restore_url(url, settings, &cache)?;
        out(restored.pid)?;
        log::info!(
            "restored {url} as pid {} ({} chunks fetched, {} from the cache, {} files cached; \
             verified in {:?}, {:?} in all)",
            restored.pid,
            fetched.chunks_fetched,
            fetched.chunks_cached,
            fetched.files_cached,
            restored.verify,
            restored.total
        );
        return Ok(ExitCode::SUCCESS);
    };
    let (copies, fetched) = store::restore_url_copies(url, settings, &cache, n, lazy)?;
    log::info!(
        "{url}: {} chunks fetched, {} from the cache, {} files cached",
        fetched.chunks_fetched,
        fetched.chunks_cached,
        fetched.files_cached
    );
    crate::copies::print_copies(copies, lazy)
}

/// `selfdump inspect URL`: what the checkpoint object says, and the
/// verdict, with `inspect DIR`'s exit codes (0 restorable here, 1 not, 3
/// cannot tell: no key to check the signature with). The chunks are not
/// fetched: a restore checks each as it arrives.
pub(crate) fn inspect_url_cmd(
    url: &str,
    trust: Option<&trust::Trust>,
    json: bool,
) -> Res<ExitCode> {
    let checkpoint = async_io::block_on(store::inspect(url, trust))?;
    let (restorable, verdict) = verdict(&checkpoint, trust.is_some());
    if json {
        out(serde_json::to_string_pretty(&json_of(
            &checkpoint,
            restorable,
            &verdict,
        ))?)?;
    } else {
        out(describe(&checkpoint, &verdict))?;
    }
    Ok(match restorable {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => ExitCode::FAILURE,
        None => ExitCode::from(3),
    })
}

/// Would `selfdump restore URL` restore it here (`None`: cannot tell),
/// and why not.
fn verdict(checkpoint: &store::Checkpoint, keys: bool) -> (Option<bool>, String) {
    let needs = checkpoint.manifest.meta.needs.as_ref();
    match (
        &checkpoint.signature,
        selfdump::server::host::check(needs, None),
    ) {
        (Err(e), _) if !keys => (None, format!("cannot tell: {e}")),
        (Err(e), _) => (Some(false), format!("its signature does not verify: {e}")),
        (Ok(()), Err(why)) => (Some(false), why),
        (Ok(()), Ok(())) => (
            Some(true),
            "restorable here: signed by a key trusted here, taken on a host this one can stand \
             in for (its chunks are checked as a restore fetches them)"
                .into(),
        ),
    }
}

fn json_of(c: &store::Checkpoint, restorable: Option<bool>, verdict: &str) -> serde_json::Value {
    let m = &c.manifest;
    serde_json::json!({
        "url": c.url,
        "id": c.id,
        "key_id": m.key_id,
        "verifies": c.signature.is_ok(),
        "problem": c.signature.as_ref().err(),
        "meta": m.meta,
        "bytes": c.bytes(),
        "stored": c.stored(),
        "files": c.files.iter().map(|f| serde_json::json!({
            "name": f.name, "size": f.size, "chunks": f.chunks.len(),
        })).collect::<Vec<_>>(),
        "verdict": { "restorable": restorable, "summary": verdict },
    })
}

/// The checkpoint for a person: one fact a line.
fn describe(c: &store::Checkpoint, verdict: &str) -> String {
    use std::fmt::Write;
    let m = &c.manifest;
    let mut text = format!("checkpoint: {}\n", c.url);
    let signature = match &c.signature {
        Ok(()) => format!("verifies (key {})", m.key_id),
        Err(e) => format!("DOES NOT VERIFY: {e}"),
    };
    let _ = writeln!(text, "signature: {signature}");
    let _ = writeln!(
        text,
        "owner:     uid {} gid {}; made on {} {}",
        m.meta.uid,
        m.meta.gid,
        m.meta.host,
        selfdump::server::generation::utc(m.meta.created_unix)
    );
    if let Some(n) = &m.meta.needs {
        let _ = writeln!(
            text,
            "needs:     {} host, kernel {} or newer, CRIU {} or newer, CPU features: {}",
            n.arch,
            n.kernel,
            n.criu,
            n.cpu_flags.join(" ")
        );
    }
    let _ = writeln!(
        text,
        "size:      {} bytes in {} files, {} chunks, {} bytes stored",
        c.bytes(),
        c.files.len(),
        c.chunks().count(),
        c.stored()
    );
    let _ = write!(text, "verdict:   {verdict}");
    text
}
