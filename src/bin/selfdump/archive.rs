//! `selfdump export` and `import` (feature `archive`).

use crate::cli::{Res, out, usage};
use crate::help_requested;
use lexopt::prelude::*;
use selfdump::server::{archive, manifest, trust};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) const USAGE: &str = "\
selfdump export / import: a checkpoint as one file, for moving it by hand

USAGE: selfdump export DIR FILE
       selfdump import [--key-file PATH] [--trust-dir DIR] FILE DIR

`export` writes the generation DIR/latest names (or the images in DIR) into
FILE (which must not exist): a tar archive compressed with zstd, the signed
manifest first, then every signed file, each checked against its signed
hash on the way. `tar --zstd -xf FILE` unpacks it.

`import` checks FILE as a restore would (the signature with this host's key
or one of the trust directory, then every entry's name, type, size and
hash; anything else in it is refused, named) and makes it a generation of
DIR that DIR/latest names, with your own rights.

OPTIONS (import):
    --key-file PATH  this service's key [default: /var/lib/selfdump/signing.key]
    --trust-dir DIR  other services' public keys [default: /etc/selfdump/trusted.d]

EXIT CODES: 0 done (the path written is printed); 1 refused or failed (the
file or entry named); 2 a usage error.";

pub(crate) fn export_cmd(parser: lexopt::Parser) -> Res<ExitCode> {
    let Some((_, _, [dir, file])) = two_values(parser, "which? selfdump export DIR FILE")? else {
        return Ok(ExitCode::SUCCESS);
    };
    let exported = archive::export(Path::new(&dir), Path::new(&file))?;
    out(&file)?;
    log::info!(
        "exported {dir}{}: {} bytes into {} bytes",
        exported
            .generation
            .map_or(String::new(), |g| format!(" (generation {g})")),
        exported.bytes,
        exported.archive_bytes
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn import_cmd(parser: lexopt::Parser) -> Res<ExitCode> {
    let Some((key_file, trust_dir, [file, dir])) =
        two_values(parser, "which? selfdump import FILE DIR")?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let trust = trust::Trust::load_host(&key_file, &trust_dir)?;
    let imported = archive::import(Path::new(&file), Path::new(&dir), &trust)?;
    out(imported.path.display())?;
    Ok(ExitCode::SUCCESS)
}

type Parsed = (PathBuf, PathBuf, [String; 2]);

/// The options and the two values; `None` when the help was asked for.
fn two_values(mut parser: lexopt::Parser, missing: &str) -> Res<Option<Parsed>> {
    use lexopt::Arg::*;
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    let mut trust_dir = PathBuf::from(trust::DEFAULT_TRUST_DIR);
    let mut values = Vec::new();
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(None);
        }
        match arg {
            Long("key-file") => key_file = parser.value()?.into(),
            Long("trust-dir") => trust_dir = parser.value()?.into(),
            Value(v) if values.len() < 2 => values.push(v.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let values = <[String; 2]>::try_from(values).map_err(|_| usage(missing))?;
    Ok(Some((key_file, trust_dir, values)))
}
