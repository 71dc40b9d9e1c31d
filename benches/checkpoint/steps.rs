//! Where the time of a verified path goes, step by step: the service's own
//! timings, from its debug log lines (`log::debug!` in `restore/verify.rs`,
//! `restore/criu.rs`, `restore/mod.rs`, `requests/checkpoint/`,
//! `fs/staging.rs`, `fs/generations/commit.rs`), captured in this process
//! while a part records them ([`record`]), or read from a `selfdump restore`
//! child's stderr. `SELFDUMP_BENCH_LOG` still prints them (and whatever
//! else it asks for) on stderr.
//!
//! Recording formats each debug line of the service, a few microseconds
//! per line, about ten per checkpoint: only the parts that print a
//! breakdown record, and only for selfdump's rounds.

use std::sync::Mutex;

/// The lines recorded since the last [`take`].
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether lines are recorded now.
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records the service's debug lines, forwarding to `forward` (the
/// `SELFDUMP_BENCH_LOG` filter) what it wants.
struct Capture {
    forward: Option<env_logger::Logger>,
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        recorded(m) || self.forward.as_ref().is_some_and(|f| f.enabled(m))
    }

    fn log(&self, r: &log::Record<'_>) {
        if recorded(r.metadata()) {
            LINES.lock().unwrap().push(r.args().to_string());
        }
        if let Some(f) = &self.forward
            && f.enabled(r.metadata())
        {
            f.log(r);
        }
    }

    fn flush(&self) {}
}

fn recorded(m: &log::Metadata<'_>) -> bool {
    RECORDING.load(std::sync::atomic::Ordering::Relaxed)
        && m.level() <= log::Level::Debug
        && m.target().starts_with("selfdump")
}

/// The level the forwarded filter wants, when nothing is recorded.
static FORWARD_LEVEL: Mutex<log::LevelFilter> = Mutex::new(log::LevelFilter::Off);

/// Installs the capturing logger (once, at the bench's start).
pub(super) fn install() {
    let forward = std::env::var("SELFDUMP_BENCH_LOG")
        .ok()
        .map(|level| env_logger::Builder::new().parse_filters(&level).build());
    let level = forward
        .as_ref()
        .map_or(log::LevelFilter::Off, |f| f.filter());
    *FORWARD_LEVEL.lock().unwrap() = level;
    log::set_boxed_logger(Box::new(Capture { forward })).unwrap();
    log::set_max_level(level);
}

/// Records the service's debug lines while `f` runs.
pub(super) fn record<T>(f: impl FnOnce() -> T) -> T {
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
    let level = *FORWARD_LEVEL.lock().unwrap();
    log::set_max_level(level.max(log::LevelFilter::Debug));
    let out = f();
    RECORDING.store(false, std::sync::atomic::Ordering::Relaxed);
    log::set_max_level(level);
    out
}

/// The lines recorded so far, taken.
pub(super) fn take() -> Vec<String> {
    std::mem::take(&mut LINES.lock().unwrap())
}

/// A `Debug`-printed duration at the start of `text` (`1.5ms`, `940.7µs`,
/// `2.1s`, `800ns`), in ms.
fn duration_ms(text: &str) -> Option<f64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let value: f64 = text[..end].parse().ok()?;
    let unit = text[end..].split(|c: char| !c.is_alphabetic() && c != 'µ');
    let scale = match unit.into_iter().next()? {
        "s" => 1000.0,
        "ms" => 1.0,
        "µs" | "us" => 1e-3,
        "ns" => 1e-6,
        _ => return None,
    };
    Some(value * scale)
}

/// The duration that follows `marker` in `line`, in ms.
pub(super) fn after(line: &str, marker: &str) -> Option<f64> {
    let at = line.find(marker)? + marker.len();
    duration_ms(&line[at..])
}

/// Every duration that follows `marker` in `lines`, in ms.
pub(super) fn all(lines: &[String], marker: &str) -> Vec<f64> {
    lines.iter().filter_map(|l| after(l, marker)).collect()
}

/// One restore's steps, from its log lines (the library's or the
/// command's): manifest, private directory, placing and hashing, tree and
/// credentials, verified, CRIU's run, running (since the call).
pub(super) fn restore_steps(lines: &[String]) -> Option<[f64; 7]> {
    let verified = lines.iter().find(|l| l.contains("restore: verified in "))?;
    let running = lines.iter().find(|l| l.contains(" running at "))?;
    Some([
        after(verified, "manifest ")?,
        after(verified, "private directory ")?,
        after(verified, "placed and hashed ")?,
        after(verified, "tree and credentials ")?,
        after(verified, "restore: verified in ")?,
        after(
            lines.iter().find(|l| l.contains("criu restore ran "))?,
            "ran ",
        )?,
        after(running, " running at ")?,
    ])
}

/// The steps of the checkpoints in `lines`, each a list over every job:
/// checks done, CRIU done, committed (each since the request), sealing,
/// `syncfs`, naming the generation (rename and its directory's `fsync`),
/// the commit (`syncfs` to `latest`).
pub(super) fn checkpoint_steps(lines: &[String]) -> [Vec<f64>; 7] {
    [
        all(lines, ": checks done at "),
        all(lines, ": criu done at "),
        all(lines, " committed at "),
        all(lines, "handed over) in "),
        all(lines, ": syncfs in "),
        all(lines, ": named, its directory synced in "),
        all(lines, ": synced, named and switched in "),
    ]
}

/// What the rows of a checkpoint breakdown mean.
pub(super) const CHECKPOINT_ROWS: [&str; 7] = [
    "request → checks done (caller, directory, policy; staging next)",
    "request → CRIU done (staging, CRIU with the tree frozen, its answer)",
    "request → committed (the answer's content is on disk)",
    "sealing: links, hashes, hand-over to the owner, manifest",
    "`syncfs` (shared by the commits that wait at once)",
    "naming the generation: rename, its directory's `fsync`",
    "commit: `syncfs`, naming, switching `latest`",
];

/// The breakdown of the checkpoints whose debug lines are `lines`: each
/// step's median and spread over every job, then `checkpoint()` as the
/// apps saw it (`app`, ms, one a checkpoint) and what is left of it
/// besides the service's work (medians: connecting, the preflight, the
/// request, reading the answer).
pub(super) fn checkpoint_table(report: &mut super::Report, lines: &[String], app: &[f64]) {
    let steps = checkpoint_steps(lines);
    if steps[2].is_empty() || app.is_empty() {
        return;
    }
    let cell = |v: &[f64]| match v.is_empty() {
        true => "–".to_owned(),
        false => {
            let (med, lo, hi) = super::speed::stats(v);
            format!("{med:.1} ({lo:.1}–{hi:.1})")
        }
    };
    let mut rows: Vec<Vec<String>> = CHECKPOINT_ROWS
        .iter()
        .zip(&steps)
        .map(|(what, v)| vec![what.to_string(), cell(v)])
        .collect();
    rows.push(vec!["`checkpoint()` as the app sees it".into(), cell(app)]);
    let left = super::speed::stats(app).0 - super::speed::stats(&steps[2]).0;
    rows.push(vec![
        "the app's side: connect, preflight, request, answer (medians' difference)".into(),
        format!("{left:.1}"),
    ]);
    report.para(&format!(
        "Where selfdump's time goes: each step of the {} checkpoints, median (min–max), \
         from the service's debug log; \"request →\" steps are counted from the request's \
         arrival.",
        steps[2].len()
    ));
    report.table(&["step", "ms"], &rows);
}
