//! `selfdump inspect`: what a checkpoint holds, and whether it restores here.

use crate::cli::{Exit, Res, out, usage};
use crate::help_requested;
use selfdump::server::inspect::{GenerationInfo, Inspection};
use selfdump::server::{manifest, trust};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) const USAGE: &str = "\
selfdump inspect: what a checkpoint holds, and whether it restores here

USAGE: selfdump inspect [--json] [--key-file PATH] DIR
       selfdump inspect [--json] [--key-file PATH] DIR/GENERATION
       selfdump inspect [--json] [--key-file PATH] URL

Lists the generations of DIR (each checkpoint is one, DIR/gen-...): when
each was made, its size, its tree, whether it verifies, and which one
DIR/latest names. Then, for that one (or for the generation named, or for
images directly in DIR, made before generations), shows when, where and by
which job it was made, the owner, the options, the tree (pids, commands,
threads), CRIU's statistics of the dump (freeze, memory dump and write
times, pages), sizes, whether the signature verifies and with which key
(the key is read when this command can read it, as root), and whether its
pids are free here. Files are checked for presence and size, not hashed (a
restore hashes them). Last, a verdict: would `selfdump restore` restore it
here, now, and if not, why.

A URL is a checkpoint in an object store, as `selfdump push` printed it
(feature `remote`): its object is fetched and checked against its id, and
its manifest's signature, what it needs of a host and its files and chunks
shown; nothing else is fetched.

OPTIONS:
    --json           one JSON object, for scripts (ids as strings; the
                     verdict as {\"restorable\": true|false|null, \"summary\"})
    --key-file PATH  this service's key [default: /var/lib/selfdump/signing.key]
    --trust-dir DIR  other services' public keys [default: /etc/selfdump/trusted.d]

EXIT CODES: 0 restorable here; 1 not restorable here (the verdict says
why), or DIR cannot be read; 2 a usage error; 3 cannot tell: the signing
key or the images are not readable by this user (inspect as root).";

pub(crate) fn inspect_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let (mut json, mut dir) = (false, None);
    let mut key_file = PathBuf::from(manifest::DEFAULT_KEY_FILE);
    let mut trust_dir = PathBuf::from(trust::DEFAULT_TRUST_DIR);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("json") => json = true,
            Long("key-file") => key_file = parser.value()?.into(),
            Long("trust-dir") => trust_dir = parser.value()?.into(),
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            other => return Err(other.unexpected().into()),
        }
    }
    let dir = dir.ok_or_else(|| usage("which images? selfdump inspect DIR"))?;
    let trust = host_trust(&key_file, &trust_dir);
    if let Some(url) = dir.to_str().filter(|d| d.contains("://")) {
        return inspect_url(url, trust.as_ref(), json);
    }
    let report = selfdump::server::inspect::inspect_trusted(&dir, trust.as_ref()).map_err(|e| {
        let message = format!("{}: {e}", dir.display());
        if e.kind() != std::io::ErrorKind::PermissionDenied {
            return Exit { code: 1, message };
        }
        // someone else's images: their owner or root can tell
        let uid = rustix::process::geteuid().as_raw();
        let message = format!(
            "{message}: cannot tell whether it restores, as uid {uid}; inspect as root or as \
             the images' owner"
        );
        Exit { code: 3, message }
    })?;
    if json {
        out(serde_json::to_string_pretty(&report)?)?;
    } else {
        out(describe(&dir, &report).trim_end())?;
    }
    Ok(match report.verdict.restorable {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => ExitCode::FAILURE,
        None => ExitCode::from(3),
    })
}

/// The keys signatures are checked with: this host's (or, for a user who
/// cannot read it, its public key beside it) and those of the trust
/// directory; `None` when none is readable (signatures are then shown,
/// not checked).
fn host_trust(key_file: &Path, trust_dir: &Path) -> Option<trust::Trust> {
    let trust = match trust::Trust::load_host(key_file, trust_dir) {
        Ok(trust) => trust,
        Err(e) => {
            log::warn!("trusted keys not read ({e}): checking with this service's key only");
            trust::Trust {
                own: manifest::Key::load(key_file).ok(),
                ..trust::Trust::default()
            }
        }
    };
    (!trust.is_empty()).then_some(trust)
}

#[cfg(feature = "remote")]
fn inspect_url(url: &str, trust: Option<&trust::Trust>, json: bool) -> Res<ExitCode> {
    crate::store::inspect_url_cmd(url, trust, json)
}

#[cfg(not(feature = "remote"))]
fn inspect_url(url: &str, _: Option<&trust::Trust>, _: bool) -> Res<ExitCode> {
    Err(format!("{url}: this selfdump is built without stores (cargo feature `remote`)").into())
}

/// The report for a person: one fact a line, nothing empty.
fn describe(dir: &Path, r: &Inspection) -> String {
    let mut out = format!("images:    {}\n", dir.display());
    describe_generations(&mut out, r);
    let criu_images = r.files.iter().any(|f| f.name == "inventory.img");
    if r.unreadable.is_none() && (criu_images || r.signature.is_some()) {
        describe_checkpoint(&mut out, r);
    } else if !r.files.is_empty() {
        let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
        let _ = writeln!(out, "files:     {}", names.join(" "));
    }
    let _ = writeln!(out, "verdict:   {}", r.verdict.summary);
    out
}

/// What the checkpoint holds: when and by whom it was made, its tree,
/// CRIU's statistics, its sizes and files.
fn describe_checkpoint(out: &mut String, r: &Inspection) {
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
    if let Some(m) = &r.meta {
        describe_meta(out, m);
    }
    let _ = writeln!(out, "signature: {signature}");
    let _ = writeln!(out, "tree:      {}", plural(r.tree.len(), "task"));
    for t in &r.tree {
        let threads: Vec<String> = t.threads.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "  pid {} ({}) ppid {} pgid {} sid {}, threads {}",
            t.pid,
            t.command,
            t.ppid,
            t.pgid,
            t.sid,
            threads.join(" ")
        );
    }
    if let Some(s) = &r.stats {
        let _ = writeln!(
            out,
            "dump:      frozen {} (freezing {}, memory dump {}), memory written in {}; \
             {} written of {} scanned",
            micros(s.frozen_us),
            micros(s.freezing_us),
            micros(s.memdump_us),
            micros(s.memwrite_us),
            plural(s.pages_written as usize, "page"),
            s.pages_scanned
        );
    }
    let _ = writeln!(
        out,
        "size:      {} in {}, memory {} ({})",
        size(r.bytes),
        plural(r.files.len(), "file"),
        size(r.pages * 4096),
        plural(r.pages as usize, "page")
    );
    describe_files(out, r);
    let _ = writeln!(
        out,
        "pids:      {}",
        r.ids_in_use.as_deref().unwrap_or("free here")
    );
}

/// How many files are in each state; the names of all but the signed.
fn describe_files(out: &mut String, r: &Inspection) {
    let mut states = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for f in &r.files {
        states.entry(f.state.as_str()).or_default().push(&f.name);
    }
    let parts: Vec<String> = states
        .iter()
        .map(|(state, names)| match *state {
            "signed" | "manifest" => format!("{} {state}", names.len()),
            _ => format!("{} {state} ({})", names.len(), names.join(" ")),
        })
        .collect();
    let _ = writeln!(out, "files:     {}", parts.join(", "));
}

/// The generations, and which one is described below.
fn describe_generations(out: &mut String, r: &Inspection) {
    if !r.generations.is_empty() {
        let _ = writeln!(out, "generations: {}", r.generations.len());
        for g in &r.generations {
            let _ = writeln!(out, "  {}", generation_line(g));
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

/// One generation at a glance; it ends with whether it verifies.
fn generation_line(g: &GenerationInfo) -> String {
    let verifies = match (g.verifies, &g.problem) {
        (Some(true), _) => "verifies".to_string(),
        (Some(false), Some(p)) => format!("DOES NOT VERIFY: {p}"),
        _ => "not checked (the key is not readable here)".to_string(),
    };
    format!(
        "{} {}  {}  {}  {}, root {}  {verifies}",
        if g.latest { "latest ->" } else { "         " },
        g.name,
        g.made.as_deref().unwrap_or("(time unknown)"),
        size(g.bytes),
        plural(g.tasks, "task"),
        g.root
    )
}

/// When, where and by which job the images were made; the owner and the
/// options of the dump.
fn describe_meta(out: &mut String, m: &selfdump::server::images::ImageMeta) {
    let _ = writeln!(
        out,
        "made:      {} ({}) on {}, by job {} (boot {})",
        selfdump::server::generation::utc(m.created_unix),
        ago(m.created_unix),
        m.host,
        m.job,
        m.boot_id
    );
    let groups: Vec<String> = m.groups.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "owner:     uid {} gid {}{}",
        m.uid,
        m.gid,
        if groups.is_empty() {
            String::new()
        } else {
            format!(", groups {}", groups.join(" "))
        }
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
    if !options.is_empty() {
        let _ = writeln!(out, "options:   {}", options.join(" "));
    }
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

/// `1 task`, `3 tasks`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Bytes in binary units: `512 B`, `3.5 KiB`, `369 KiB`, `1.2 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value < 10.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.0} {}", UNITS[unit]),
    }
}

/// Microseconds as a person reads them: `850 µs`, `42.8 ms`, `1.25 s`.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// How long ago a time (seconds since the epoch) was: `40 s ago`,
/// `5 min ago`, `3 h ago`, `12 days ago`.
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(secs) = now.checked_sub(unix) else {
        return "in the future: this host's clock is behind".into();
    };
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7_200 => format!("{} min ago", secs / 60),
        7_200..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_as_a_person_says_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(3584), "3.5 KiB");
        assert_eq!(size(377_671), "369 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(42_756), "42.8 ms");
        assert_eq!(micros(1_250_000), "1.25 s");
        assert_eq!(plural(1, "task"), "1 task");
        assert_eq!(plural(2, "task"), "2 tasks");
    }
}
