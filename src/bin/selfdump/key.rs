//! `selfdump key public`: this service's public key, for other hosts'
//! trust directories.

use crate::cli::{Res, out, usage};
use crate::help_requested;
use lexopt::prelude::*;
use selfdump::server::{manifest, trust};
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) const USAGE: &str = "\
selfdump key: this service's signing key

USAGE: selfdump key public [--key-file PATH]
       selfdump key id [--key-file PATH]

`public` prints the service's public key in minisign's public-key file
format: save it as a file ending in .pub in the trust directory of every
host that should restore this service's checkpoints (root's, writable by
root alone; default /etc/selfdump/trusted.d/), for example:

    selfdump key public | ssh other-host 'sudo tee /etc/selfdump/trusted.d/this-host.pub'

Those hosts can then check this service's signatures, and not make any:
the private key never leaves this host. `id` prints the key's id, which
manifests name as their signer and `selfdump inspect` shows.

Reads the key file (as root), made by `selfdump serve` on its first start.

OPTIONS:
    --key-file PATH  the signing key [default: /var/lib/selfdump/signing.key]

EXIT CODES: 0 printed; 1 the key cannot be read; 2 a usage error.";

pub(crate) fn key_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut what = None;
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("key-file") => key_file = parser.value()?.into(),
            Value(v) if what.is_none() => what = Some(v.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let public = || -> Res<trust::PublicKey> {
        let key = manifest::Key::load(&key_file).map_err(|e| {
            format!("cannot read the signing key (run as root; `selfdump serve` makes it): {e}")
        })?;
        Ok(key.public())
    };
    match what.as_deref() {
        Some("public") => out(public()?.to_file().trim_end())?,
        Some("id") => out(public()?.id())?,
        Some(other) => return Err(usage(format!("no `key {other}`: `public` or `id`"))),
        None => return Err(usage("which? selfdump key public (or id)")),
    }
    Ok(ExitCode::SUCCESS)
}
