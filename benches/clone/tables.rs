//! The clone bench's sections: what each measures, its tables and its
//! targets (see `main.rs`).

use super::report::{self, Report, ms as fmt_ms, ratio};
use super::{Bench, Image, KDAT_FILE, p90};
use selfdump::server::copies::VerifiedImages;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The three contestants of a round, in the order the tables show them.
#[derive(Clone, Copy)]
enum Who {
    Plain,
    Selfdump,
    VerifiedOnce,
}

/// One row's samples: the time until the last copy ran, per contestant,
/// and the parts measured on the way.
#[derive(Default)]
struct Samples {
    plain: Vec<f64>,
    selfdump: Vec<f64>,
    once: Vec<f64>,
    verify: Vec<f64>,
    recheck: Vec<f64>,
    criu_log: Vec<f64>,
}

impl Samples {
    /// `reps` rounds, the three in turns (who goes first rotates).
    fn measure(
        bench: &Bench,
        image: &Image,
        once: &VerifiedImages,
        n: u32,
        lazy: bool,
        reps: usize,
    ) -> Self {
        let mut s = Self::default();
        for rep in 0..reps {
            for turn in 0..3 {
                match [Who::Plain, Who::Selfdump, Who::VerifiedOnce][(turn + rep) % 3] {
                    Who::Plain => {
                        let r = bench.plain(image, n, lazy);
                        s.plain.push(r.last);
                        s.criu_log.push(r.criu_log);
                    }
                    Who::Selfdump => {
                        let r = bench.selfdump(image, n, lazy);
                        s.selfdump.push(r.last);
                        s.verify.push(r.verify);
                    }
                    Who::VerifiedOnce => {
                        let r = bench.verified(once, image, n, lazy);
                        s.once.push(r.last);
                        s.recheck.push(r.verify);
                    }
                }
            }
        }
        s
    }

    /// Medians of (plain, selfdump, verified once).
    fn medians(&mut self) -> (f64, f64, f64) {
        (
            report::median(&mut self.plain),
            report::median(&mut self.selfdump),
            report::median(&mut self.once),
        )
    }
}

/// `median (p90)`.
fn with_p90(v: &mut [f64]) -> String {
    format!("{} ({})", fmt_ms(report::median(v)), fmt_ms(p90(v)))
}

pub fn intro(bench: &Bench, report: &mut Report) {
    report.section(
        "Clones: many copies of one image",
        &format!(
            "`benches/clone.rs`. The program (`examples/clone_stamp.rs`) fills N MiB with a \
             pattern under `selfdump run`, checkpoints and exits; a restored copy writes the \
             `CLOCK_MONOTONIC` time at which `checkpoint()` returned `Restored` to its \
             inherited log, converted to the host's clock. Three contestants, in turns \
             (who goes first rotates), {} rounds (fewer for 8 copies and more), medians with \
             p90 in brackets, in ms: plain `criu restore -D DIR --restore-detached` of the \
             same images (with `criu lazy-pages` started first and waited for, when lazy); \
             selfdump, `copies::restore_copies` (what `selfdump restore --copies N [--lazy]` \
             runs, minus the exec of `selfdump`), which verifies (hashes) the images on \
             every call; and selfdump verified once, `VerifiedImages::restore_copies` from \
             a set verified before the rounds, off the clock (a harness's later rounds: it \
             re-checks names, sizes, owners and modes, no hashing). The clock starts just \
             before the restore begins. Ratios are to plain CRIU in the same rounds.",
            bench.reps
        ),
    );
}

/// 1. Time to first instruction, one copy.
pub fn first_instruction(bench: &Bench, report: &mut Report) {
    let sizes: &[(&str, usize)] = if bench.quick {
        &[("tiny", 0), ("64 MiB", 64)]
    } else {
        &[("tiny", 0), ("256 MiB", 256), ("1 GiB", 1024)]
    };
    let mut rows = Vec::new();
    let (mut tiny, mut lazy256) = (f64::NAN, f64::NAN);
    let mut worst = 0f64;
    for &(name, mb) in sizes {
        let image = bench.image(name, mb);
        let once = VerifiedImages::open(bench.settings, &image.dir).expect("verify the images");
        bench.verified(&once, &image, 1, false); // its first round hashes
        for &lazy in bench.modes {
            let mut s = Samples::measure(bench, &image, &once, 1, lazy, bench.reps);
            let (p, o, v) = s.medians();
            worst = worst.max(o / p).max(v / p);
            if mb == 0 && !lazy {
                tiny = o;
            }
            if mb == 256 && lazy {
                lazy256 = v;
            }
            rows.push(first_row(name, lazy, &mut s));
        }
    }
    report.subsection(
        "Time to first instruction, one copy (ms)",
        "\"verification\": selfdump's hashing on each call; \"re-check\": the verified-once \
         set's check before a round; \"CRIU's own time\": the last timestamp of plain \
         CRIU's restore log (its work after exec).",
    );
    report.table(
        &[
            "size",
            "mode",
            "plain criu",
            "selfdump",
            "ratio",
            "verified once",
            "ratio",
            "verification",
            "re-check",
            "CRIU's own time",
        ],
        &rows,
    );
    first_targets(report, bench.quick, tiny, lazy256, worst);
}

/// The targets of the first table: a tiny copy's time (selfdump), a 256
/// MiB lazy copy's (verified once), the largest ratio.
fn first_targets(report: &mut Report, quick: bool, tiny: f64, lazy256: f64, worst: f64) {
    report.target(
        "a tiny copy (full, selfdump) running within 10 ms",
        tiny <= 10.0,
        &format!("{} ms", fmt_ms(tiny)),
    );
    if !quick {
        report.target(
            "a 256 MiB lazy copy (verified once) running within 30 ms",
            lazy256 <= 30.0,
            &format!("{} ms", fmt_ms(lazy256)),
        );
    }
    report.target(
        "every ratio at most 1.0 (selfdump and verified once)",
        worst <= 1.0,
        &format!("the largest is {}", ratio(worst)),
    );
}

/// 2. N copies of one image at once.
pub fn copies_at_once(bench: &Bench, report: &mut Report) {
    let (name, mb) = if bench.quick {
        ("64 MiB", 64)
    } else {
        ("256 MiB", 256)
    };
    let ns: &[u32] = if bench.quick {
        &[1, 4]
    } else {
        &[1, 2, 4, 8, 16]
    };
    let image = bench.image(name, mb);
    let once = VerifiedImages::open(bench.settings, &image.dir).expect("verify the images");
    bench.verified(&once, &image, 1, false); // its first round hashes
    let mut rows = Vec::new();
    let mut sixteen = Vec::new();
    for &lazy in bench.modes {
        for &n in ns {
            let reps = if n >= 8 {
                bench.reps.min(5)
            } else {
                bench.reps
            };
            let mut s = Samples::measure(bench, &image, &once, n, lazy, reps);
            let (p, o, v) = s.medians();
            if n == 16 {
                sixteen.push((lazy, v));
            }
            rows.push(copies_row(n, lazy, (p, o, v), &mut s));
        }
    }
    report.subsection(
        &format!("N copies of one {name} image at once: until the last one runs (ms, copies/s)"),
        "Medians; the copies of a round are started together.",
    );
    report.table(
        &[
            "mode",
            "N",
            "plain criu",
            "selfdump",
            "ratio",
            "verified once",
            "ratio",
            "verification",
        ],
        &rows,
    );
    for (lazy, ms) in sixteen {
        let mode = if lazy { "lazily" } else { "in full" };
        report.target(
            &format!("16 copies all running within 1 s, {mode} (verified once)"),
            ms <= 1000.0,
            &format!("{} ms", fmt_ms(ms)),
        );
    }
}

/// 3. What a tiny restore's time is made of, outside CRIU's own log.
pub fn bounds(bench: &Bench, report: &mut Report) {
    let mut exec = Vec::new();
    for _ in 0..bench.reps.max(5) {
        let t = Instant::now();
        let _ = Command::new(&bench.criu.path)
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        exec.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report.para(&format!(
        "What bounds a tiny copy besides CRIU's own work: an exec of the `criu` binary alone \
         (`criu --version`) takes {} ms here (median of {}); CRIU's kernel-feature cache {} \
         is {}.",
        fmt_ms(report::median(&mut exec)),
        exec.len(),
        KDAT_FILE,
        if Path::new(KDAT_FILE).exists() {
            "present (the CLI reads it)"
        } else {
            "absent (every CLI run probes the kernel)"
        }
    ));
    report.para(
        "A CRIU quirk (4.1.1): a copy whose task exits within milliseconds of its restore, \
         before CRIU has detached from all of its threads, fails the restore (\"Unable to \
         detach\") and CRIU then hangs in its clean-up; `restore_copies` ends such a CRIU, \
         and what it had restored, at the restore deadline (`tests/copies_deadline.rs`). The \
         bench's copies wait to be killed.",
    );
}

/// A row of the first table: `name`'s samples, `lazy` or full.
fn first_row(name: &str, lazy: bool, s: &mut Samples) -> Vec<String> {
    let (p, o, v) = s.medians();
    vec![
        name.into(),
        if lazy { "lazy" } else { "full" }.into(),
        with_p90(&mut s.plain),
        with_p90(&mut s.selfdump),
        ratio(o / p),
        with_p90(&mut s.once),
        ratio(v / p),
        fmt_ms(report::median(&mut s.verify)),
        format!("{:.2}", report::median(&mut s.recheck)),
        fmt_ms(report::median(&mut s.criu_log)),
    ]
}

/// A row of the table of N copies: medians `(plain, selfdump, verified
/// once)` and the samples.
fn copies_row(n: u32, lazy: bool, (p, o, v): (f64, f64, f64), s: &mut Samples) -> Vec<String> {
    let per_s = |ms: f64| format!("{} ({:.0}/s)", fmt_ms(ms), n as f64 * 1000.0 / ms);
    vec![
        if lazy { "lazy" } else { "full" }.into(),
        n.to_string(),
        per_s(p),
        per_s(o),
        ratio(o / p),
        per_s(v),
        ratio(v / p),
        fmt_ms(report::median(&mut s.verify)),
    ]
}
