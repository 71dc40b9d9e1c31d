//! What a bench prints: markdown sections (a title, what is measured and
//! how, tables of this run's numbers, the targets met or not as this run
//! says), printed and appended to `$SELFDUMP_BENCH_REPORT` when it is set.
//! `scripts/bench.sh` runs every bench once and writes the sections, in
//! order, as BENCHMARKS.md: a figure there is one a bench printed.
//!
//! `SELFDUMP_BENCH_QUICK=1` (what CI runs): fewer rounds and sizes, to
//! check that the benches still work, not to measure.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Whether this is the quick run.
pub fn quick() -> bool {
    std::env::var_os("SELFDUMP_BENCH_QUICK").is_some()
}

/// The markdown of one bench run, printed as it goes.
pub struct Report {
    text: String,
}

impl Report {
    pub fn new() -> Self {
        Self {
            text: String::new(),
        }
    }

    fn add(&mut self, text: &str) {
        print!("{text}");
        let _ = std::io::stdout().flush();
        self.text.push_str(text);
    }

    /// A section: `## title`, then what it measures and how.
    pub fn section(&mut self, title: &str, how: &str) {
        self.add(&format!("\n## {title}\n\n{}\n", wrap(how)));
    }

    /// A subsection.
    pub fn subsection(&mut self, title: &str, how: &str) {
        self.add(&format!("\n### {title}\n\n{}\n", wrap(how)));
    }

    /// A paragraph (or a list, if it starts with `- `).
    pub fn para(&mut self, text: &str) {
        self.add(&format!("\n{}\n", wrap(text)));
    }

    /// A table; columns after the first are right-aligned.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut text = format!("\n| {} |\n|", header.join(" | "));
        for i in 0..header.len() {
            text.push_str(if i == 0 { "---|" } else { "---:|" });
        }
        text.push('\n');
        for row in rows {
            text.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        self.add(&text);
    }

    /// A target and whether this run met it.
    pub fn target(&mut self, what: &str, met: bool, because: &str) {
        let verdict = if met { "met" } else { "**not met**" };
        self.add(&format!("\n- Target: {what}: {verdict} ({because}).\n"));
    }

    /// Appends the report to `$SELFDUMP_BENCH_REPORT`, if set.
    pub fn finish(self) {
        let Some(path) = std::env::var_os("SELFDUMP_BENCH_REPORT") else {
            return;
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(PathBuf::from(path))
            .expect("the report file");
        file.write_all(self.text.as_bytes()).unwrap();
    }
}

fn wrap(text: &str) -> String {
    text.trim().to_owned()
}

/// `{:.1}` of milliseconds, `—` for a missing value.
pub fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "—".into()
    }
}

/// A ratio, two decimals; `—` for a missing value.
pub fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "—".into()
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Path of an example, built with the profile this bench was built with
/// (a release build for `cargo bench`, a debug one for the quick run's
/// `--profile dev`).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<bench>
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let release = profile_dir.ends_with("release");
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--all-features", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().unwrap().success(),
        "cargo build --example {name}"
    );
    profile_dir.join("examples").join(name)
}

/// The machine, for the report's first lines.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cpus ({cpu}), kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
    )
}
