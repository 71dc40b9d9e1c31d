//! `selfdump inspect`: what a checkpoint holds.

use crate::{Res, help_requested};
use selfdump::server::manifest;
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) const USAGE: &str = "\
selfdump inspect: what a checkpoint holds

USAGE: selfdump inspect [--json] [--key-file PATH] DIR
       selfdump inspect [--json] [--key-file PATH] DIR/GENERATION

Lists the generations of DIR (each checkpoint is one, DIR/gen-...): when
each was made, its size, its tree, whether it verifies, and which one
DIR/latest names. Then, for that one (or for the generation named, or for
images directly in DIR, made before generations), shows the tree (pids, commands, threads), the owner, the options, sizes and
pages, when and by which service the images were made, whether their
signature verifies and with which key (the key is read when this command can
read it, as root), and whether their pids are free here. Files are checked
for presence and size, not hashed (a restore hashes them).

OPTIONS:
    --json           one JSON object, for scripts
    --key-file PATH  the signing key [default: /var/lib/selfdump/signing.key]";

pub(crate) fn inspect_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let (mut json, mut dir) = (false, None);
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("json") => json = true,
            Long("key-file") => key_file = parser.value()?.into(),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let dir = dir.ok_or("inspect needs the images directory: selfdump inspect DIR")?;
    let key = manifest::Key::load(&key_file).ok();
    let report = selfdump::server::inspect::inspect(&dir, key.as_ref())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", describe(&dir, &report));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(dir: &std::path::Path, r: &selfdump::server::inspect::Inspection) -> String {
    use std::fmt::Write;
    let mut out = format!("images:    {}\n", dir.display());
    describe_generations(&mut out, r);
    let signature = match &r.signature {
        None => "none (unsigned images: restore only with --trust-unsigned)".to_string(),
        Some(s) => match (s.verifies, &s.problem) {
            (Some(true), _) => format!("verifies (key {})", s.key_id),
            (Some(false), Some(p)) => format!("DOES NOT VERIFY: {p}"),
            _ => format!(
                "key {} (not checked: the key is not readable here)",
                s.key_id
            ),
        },
    };
    let _ = writeln!(out, "signature: {signature}");
    if let Some(m) = &r.meta {
        describe_meta(&mut out, m);
    }
    let _ = writeln!(out, "tree:      {} task(s)", r.tree.len());
    for t in &r.tree {
        let _ = writeln!(
            out,
            "  pid {} ({}) ppid {} pgid {} sid {} threads {:?}",
            t.pid, t.command, t.ppid, t.pgid, t.sid, t.threads
        );
    }
    let _ = writeln!(out, "size:      {} bytes, {} pages", r.bytes, r.pages);
    let mut states = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for f in &r.files {
        states.entry(f.state.as_str()).or_default().push(&f.name);
    }
    for (state, names) in states {
        let _ = writeln!(
            out,
            "files:     {} {state}: {}",
            names.len(),
            names.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "pids:      {}",
        r.ids_in_use.as_deref().unwrap_or("free here")
    );
    out
}

/// The generations, and which one is described below.
fn describe_generations(out: &mut String, r: &selfdump::server::inspect::Inspection) {
    use std::fmt::Write;
    if !r.generations.is_empty() {
        let _ = writeln!(out, "generations: {}", r.generations.len());
        for g in &r.generations {
            let verifies = match (g.verifies, &g.problem) {
                (Some(true), _) => "verifies".to_string(),
                (Some(false), Some(p)) => format!("DOES NOT VERIFY: {p}"),
                _ => "not checked (the key is not readable here)".to_string(),
            };
            let _ = writeln!(
                out,
                "  {} {}  {}  {} bytes  {} task(s), root {}  {verifies}",
                if g.latest { "latest ->" } else { "         " },
                g.name,
                g.made.as_deref().unwrap_or("(time unknown)"),
                g.bytes,
                g.tasks,
                g.root
            );
        }
    }
    match &r.generation {
        Some(name) => {
            let _ = writeln!(out, "latest:    {name}");
        }
        None if !r.generations.is_empty() => {
            let _ = writeln!(
                out,
                "latest:    none (name a generation: selfdump inspect DIR/GENERATION); below: \
                 the images directly in DIR, if any"
            );
        }
        None => {}
    }
}

/// The owner, when and how the images were made.
fn describe_meta(out: &mut String, m: &selfdump::server::images::ImageMeta) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "owner:     uid {} gid {} groups {:?}",
        m.uid, m.gid, m.groups
    );
    let _ = writeln!(
        out,
        "made:      job {} on {} (boot {}), {} ({} s after the epoch)",
        m.job,
        m.host,
        m.boot_id,
        selfdump::server::generation::utc(m.created_unix),
        m.created_unix
    );
    let options: Vec<&str> = [
        (m.shell_job, "shell-job"),
        (m.tcp_established, "tcp-established"),
        (m.file_locks, "file-locks"),
        (m.ext_unix_sk, "ext-unix-sk"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let _ = writeln!(out, "options:   {}", options.join(" "));
    if m.pid_namespace {
        let _ = writeln!(
            out,
            "namespace: a whole pid namespace (started with `selfdump run`): each \
             restore makes a fresh one; `restore --copies N` starts many at once{}",
            if m.copy_slot.is_some() {
                ", each told its number"
            } else {
                ""
            }
        );
    }
}
