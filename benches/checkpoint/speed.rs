//! The rows of issue 19, each against plain CRIU in turns, in one run:
//!
//! - `restore`: a 2 MiB and a 256 MiB process (isolated, under `selfdump
//!   run`), images on a tmpfs: `selfdump restore DIR` (the command: its
//!   start, the key, verification, CRIU) and the library's
//!   `restore::restore_path` (also after `restore::prestart`) against
//!   `criu restore -D DIR --restore-detached`, wall time until each
//!   returns;
//! - `tiny`: a tiny checkpoint as the app sees it against `criu dump
//!   --leave-running` and against the same followed by `sync -f DIR`;
//! - `concurrent`: 8 apps checkpointing at once against 8 plain dumps at
//!   once, and 8 plain dumps each followed by `sync -f`, wall time until
//!   the last is done.
//!
//! Medians and the spread (min–max) of the rounds; ratios are of medians.
//! Each part then prints where selfdump's time goes, step by step, from
//! the service's debug log (`steps.rs`);
//! `SELFDUMP_BENCH_LOG=selfdump=debug` also prints those lines on stderr.

use super::report::{self, Report};
use super::{Bench, Sample, images, ms, parse, plain_dump, start_app};
use selfdump::server::Criu;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::{RestoreSettings, prestart, restore_path};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Median, min and max.
pub(super) fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// A table row: what, median (min–max), ratio to `base`.
fn row(name: &str, v: &[f64], base: Option<f64>) -> Vec<String> {
    let (med, lo, hi) = stats(v);
    vec![
        name.to_owned(),
        format!("{med:.1} ({lo:.1}–{hi:.1})"),
        base.map_or(String::new(), |b| format!("{:.2}", med / b)),
    ]
}

const HEADER: [&str; 3] = ["", "ms, median (min–max)", "ratio"];

/// `restore`: see the module docs.
pub(super) fn restore(b: &Bench, report: &mut Report) {
    let app = report::example("clone_stamp");
    let shm = tempfile::Builder::new()
        .prefix("selfdump-bench-restore")
        .tempdir_in("/dev/shm")
        .unwrap();
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).expect("the service's signing key");
    let settings = RestoreSettings::new(b.criu.clone(), Some(key));
    report.section(
        "Restore against plain CRIU",
        &format!(
            "A process of 2 MiB and one of 256 MiB (`examples/clone_stamp.rs` under `selfdump \
             run`), images on a tmpfs; {} rounds, the four in turns: plain `criu restore -D \
             DIR --restore-detached`, `selfdump restore DIR` (the command: its start, the key, \
             verification, CRIU), the library's `restore_path`, and `restore_path` 10 ms after \
             `restore::prestart` (a harness that starts the next restore's CRIU between two \
             restores); wall time until each returns (the restored process runs).",
            b.reps
        ),
    );
    for mib in [2usize, 256] {
        let dir = isolated_image(&app, &b.socket, shm.path(), mib);
        let ([plain, cli, lib, verify, ahead], breakdown) =
            b.with_cache(|| restore_rounds(b, &settings, &dir, shm.path()));
        let base = stats(&plain).0;
        let rows = vec![
            row("plain `criu restore -D`", &plain, None),
            row("`selfdump restore DIR`", &cli, Some(base)),
            row("`restore_path` (the library)", &lib, Some(base)),
            row("of which verified before CRIU starts", &verify, None),
            row("`restore_path` after `prestart`", &ahead, Some(base)),
        ];
        report.subsection(&format!("{mib} MiB"), "");
        report.table(&HEADER, &rows);
        let ratio = stats(&cli).0 / base;
        report.target(
            &format!("`selfdump restore` of {mib} MiB within 1.1 × plain CRIU"),
            ratio <= 1.1,
            &format!("{ratio:.2}"),
        );
        breakdown.print(report, stats(&plain).0);
    }
}

/// The rounds of `restore`: plain, the command, the library, the
/// library's verification before CRIU, and the library after `prestart`
/// (ms); and the steps of each.
fn restore_rounds(
    b: &Bench,
    settings: &RestoreSettings,
    dir: &Path,
    work: &Path,
) -> ([Vec<f64>; 5], RestoreBreakdown) {
    let (mut plain, mut cli, mut lib, mut verify) = (vec![], vec![], vec![], vec![]);
    let mut ahead = vec![];
    let mut steps = RestoreBreakdown::default();
    for round in 0..b.reps {
        for turn in 0..4 {
            match (turn + round) % 4 {
                0 => plain.push(plain_restore(&b.criu, dir, work)),
                1 => {
                    let (took, lines) = cli_restore(dir);
                    cli.push(took);
                    steps.add(false, took, &lines);
                }
                3 => {
                    prestart(&settings.criu);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    let started = Instant::now();
                    let restored = restore_path(dir, settings).expect("restore_path");
                    ahead.push(ms(started.elapsed()));
                    kill_copy(restored.pid);
                }
                _ => {
                    let started = Instant::now();
                    let restored =
                        super::steps::record(|| restore_path(dir, settings)).expect("restore_path");
                    lib.push(ms(started.elapsed()));
                    verify.push(ms(restored.verify));
                    steps.add(true, ms(started.elapsed()), &super::steps::take());
                    kill_copy(restored.pid);
                }
            }
        }
    }
    ([plain, cli, lib, verify, ahead], steps)
}

/// The steps of the command's and the library's restores (ms, one entry a
/// round): `super::steps::restore_steps`, and the wall time after the
/// restored tree runs (the command: also its start, before the restore).
#[derive(Default)]
struct RestoreBreakdown {
    cli: Vec<[f64; 8]>,
    lib: Vec<[f64; 8]>,
}

impl RestoreBreakdown {
    fn add(&mut self, library: bool, wall: f64, lines: &[String]) {
        let Some(s) = super::steps::restore_steps(lines) else {
            return eprintln!("no step timings in a restore's log: {lines:?}");
        };
        let row = [
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[6] - s[4] - s[5],
            s[5],
            wall - s[6],
        ];
        match library {
            true => self.lib.push(row),
            false => self.cli.push(row),
        }
    }

    /// The breakdown's table: medians of each step, and plain CRIU's
    /// whole restore (`plain`, ms) beside CRIU's run under selfdump.
    fn print(&self, report: &mut Report, plain: f64) {
        if self.cli.is_empty() || self.lib.is_empty() {
            return;
        }
        const STEPS: [&str; 8] = [
            "manifest read, signature and host checked",
            "private directory made",
            "files placed (links) and hashed, 4 threads",
            "tree and credentials checked",
            "verified before CRIU starts (the four above)",
            "CRIU's preparation (ids, work files, the gate)",
            "`criu restore` until it returns",
            "outside `restore()`: the command's start, key and exit; the private directory's removal",
        ];
        let median = |v: &[[f64; 8]], i: usize| {
            let column: Vec<f64> = v.iter().map(|r| r[i]).collect();
            format!("{:.2}", stats(&column).0)
        };
        let mut rows: Vec<Vec<String>> = STEPS
            .iter()
            .enumerate()
            .map(|(i, step)| vec![step.to_string(), median(&self.cli, i), median(&self.lib, i)])
            .collect();
        rows.insert(
            7,
            vec![
                "(plain `criu restore -D`, whole)".into(),
                format!("{plain:.2}"),
                String::new(),
            ],
        );
        report.para(
            "Where the time goes: each step's median over the rounds, from the debug log \
             (the library's recorded in this process, the command's read from its stderr).",
        );
        report.table(&["step", "command, ms", "library, ms"], &rows);
    }
}

/// A `clone_stamp` of `mib` MiB checkpointed under `selfdump run` into
/// `work`: the generation's directory.
fn isolated_image(app: &Path, socket: &Path, work: &Path, mib: usize) -> PathBuf {
    let dir = work.join(format!("img-{mib}"));
    std::fs::create_dir_all(&dir).unwrap();
    // the copies write their stamp there (appended: CRIU accepts its growth)
    let log = work.join(format!("img-{mib}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_selfdump"))
        .args(["run", "--"])
        .arg(app)
        .arg("--images")
        .arg(&dir)
        .arg("--socket")
        .arg(socket)
        .args(["--mb", &mib.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success() && text.contains("checkpointed"), "{text}");
    dir.join("latest")
}

fn plain_restore(criu: &Criu, dir: &Path, work: &Path) -> f64 {
    let w = tempfile::tempdir_in(work).unwrap();
    let started = Instant::now();
    let status = Command::new(&criu.path)
        .args(["restore", "-D"])
        .arg(dir)
        .arg("-W")
        .arg(w.path())
        .args(["--restore-detached", "--pidfile", "restore.pid"])
        .args(["-o", "restore.log"])
        .arg(format!("-v{}", criu.log_level))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let took = ms(started.elapsed());
    if !status.success() {
        let log = std::fs::read_to_string(w.path().join("restore.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!("plain criu restore failed:\n{}", tail.join("\n"));
    }
    let pid = std::fs::read_to_string(w.path().join("restore.pid")).unwrap();
    kill_copy(pid.trim().parse().unwrap());
    took
}

/// `selfdump restore DIR`: its wall time (ms) and its log lines (its
/// steps at debug level; printed too with `SELFDUMP_BENCH_LOG`).
fn cli_restore(dir: &Path) -> (f64, Vec<String>) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_selfdump"))
        .arg("restore")
        .arg(dir)
        .env("RUST_LOG", "warn,selfdump::server::restore=debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = ms(started.elapsed());
    let log = String::from_utf8_lossy(&out.stderr);
    if std::env::var_os("SELFDUMP_BENCH_LOG").is_some() || !out.status.success() {
        eprint!("{log}");
    }
    assert!(out.status.success(), "selfdump restore failed");
    kill_copy(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap());
    (took, log.lines().map(str::to_owned).collect())
}

/// Kills a restored copy (its namespace's init: the whole namespace goes)
/// and waits until it is gone.
fn kill_copy(pid: i32) {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let pidfd = pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
    pidfd_send_signal(&pidfd, Signal::KILL).unwrap();
    let mut poll = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut poll, None).unwrap();
}

/// `tiny`: see the module docs.
pub(super) fn tiny(b: &Bench, report: &mut Report) {
    let ([plain, synced, ours, sync], lines) = b.with_cache(|| tiny_rounds(b));
    report.section(
        "Tiny checkpoint against plain CRIU and a sync",
        &format!(
            "A 1 MiB process (`bench_app`), images on ext4; {} rounds in turns: plain `criu \
             dump --leave-running`, the same followed by `sync -f DIR` (selfdump reports \
             success only once the images are on disk), and `checkpoint()` as the app sees \
             it. CRIU's kernel-feature cache on both sides.",
            b.reps
        ),
    );
    let base = stats(&synced).0;
    let rows = vec![
        row("plain `criu dump`", &plain, None),
        row("plain `criu dump` + `sync -f`", &synced, None),
        row(
            "selfdump `checkpoint()` (ratio to plain + sync)",
            &ours,
            Some(base),
        ),
        row("of which the commit's `syncfs`", &sync, None),
    ];
    report.table(&HEADER, &rows);
    let ratio = stats(&ours).0 / base;
    report.target(
        "a tiny checkpoint within 1.0 × plain CRIU + sync",
        ratio <= 1.0,
        &format!("{ratio:.2}"),
    );
    super::steps::checkpoint_table(report, &lines, &ours);
}

/// The rounds of `tiny`: plain, plain + sync, selfdump, its syncfs (ms);
/// and the service's debug lines of selfdump's rounds.
fn tiny_rounds(b: &Bench) -> ([Vec<f64>; 4], Vec<String>) {
    let (app, work) = (&b.app, &b.work);
    let (mut idle, _idle_out) = start_app(app, &["--idle", "--mib", "1"]);
    let pid = idle.id().to_string();
    let sd_dir = images(work, "tiny-selfdump");
    let reps = b.reps.to_string();
    let (mut sd, sd_out) = start_app(
        app,
        &[
            "--step",
            "--mib",
            "1",
            "--checkpoints",
            &reps,
            "--images",
            sd_dir.to_str().unwrap(),
            "--socket",
            b.socket.to_str().unwrap(),
        ],
    );
    let mut lines = sd_out.lines();
    let (mut plain, mut synced, mut ours) = (vec![], vec![], Vec::<Sample>::new());
    for round in 0..b.reps {
        for turn in 0..3 {
            match (turn + round) % 3 {
                0 => plain.push(plain_dump(&b.criu, &pid, &images(work, "tiny-plain")).wall_ms),
                1 => synced.push(plain_then_sync(&b.criu, &pid, &images(work, "tiny-plain"))),
                _ => ours.push(super::steps::record(|| {
                    sd.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
                    parse(&lines.next().unwrap().unwrap())
                })),
            }
        }
    }
    assert!(sd.wait().unwrap().success());
    let _ = idle.kill();
    let _ = idle.wait();
    let _ = std::fs::remove_dir_all(&sd_dir);
    let wall = ours.iter().map(|s| s.wall_ms).collect();
    let sync = ours.iter().map(|s| s.sync_ms).collect();
    ([plain, synced, wall, sync], super::steps::take())
}

/// `criu dump` then `sync -f DIR` (plain_dump syncs everything before its
/// clock starts, so the two times are added).
fn plain_then_sync(criu: &Criu, pid: &str, dir: &Path) -> f64 {
    let dumped = plain_dump(criu, pid, dir);
    let started = Instant::now();
    let synced = Command::new("sync").arg("-f").arg(dir).status().unwrap();
    assert!(synced.success());
    dumped.wall_ms + ms(started.elapsed())
}

/// `concurrent`: see the module docs.
pub(super) fn concurrent(b: &Bench, report: &mut Report) {
    const N: usize = 8;
    let ([plain, synced, ours], lines, apps) = b.with_cache(|| concurrent_rounds(b, N));
    report.section(
        "Concurrent checkpoints against plain CRIU and a sync",
        &format!(
            "{N} processes of 4 MiB checkpoint at once, images on ext4; wall time until the \
             last is done; {} rounds in turns: {N} plain `criu dump`s at once, {N} plain \
             dumps each followed by `sync -f` of its directory, and {N} `checkpoint()` calls.",
            b.reps
        ),
    );
    let base = stats(&synced).0;
    let rows = vec![
        row(&format!("plain `criu dump` × {N}"), &plain, None),
        row(
            &format!("plain `criu dump` + `sync -f` × {N}"),
            &synced,
            None,
        ),
        row(
            &format!("selfdump `checkpoint()` × {N} (ratio to plain + sync)"),
            &ours,
            Some(base),
        ),
    ];
    report.table(&HEADER, &rows);
    let ratio = stats(&ours).0 / base;
    report.target(
        &format!("{N} checkpoints at once within 1.1 × plain CRIU + sync"),
        ratio <= 1.1,
        &format!("{ratio:.2}"),
    );
    super::steps::checkpoint_table(report, &lines, &apps);
}

/// The rounds of `concurrent`: plain, plain + sync, selfdump (wall, ms);
/// the service's debug lines of selfdump's rounds, and each app's
/// `checkpoint()` time (ms).
fn concurrent_rounds(b: &Bench, n: usize) -> ([Vec<f64>; 3], Vec<String>, Vec<f64>) {
    let idle: Vec<_> = (0..n)
        .map(|_| start_app(&b.app, &["--idle", "--mib", "4"]))
        .collect();
    let pids: Vec<String> = idle.iter().map(|(c, _)| c.id().to_string()).collect();
    let (mut plain, mut synced, mut ours, mut apps) = (vec![], vec![], vec![], vec![]);
    for round in 0..b.reps {
        for turn in 0..3 {
            rustix::fs::sync();
            match (turn + round) % 3 {
                0 => plain.push(plain_at_once(&b.criu, &pids, &b.work, false)),
                1 => synced.push(plain_at_once(&b.criu, &pids, &b.work, true)),
                _ => {
                    let (wall, samples) =
                        super::steps::record(|| super::concurrent(&b.app, &b.socket, &b.work, n));
                    ours.push(wall);
                    apps.extend(samples.iter().map(|s| s.wall_ms));
                }
            }
        }
    }
    for (mut child, _) in idle {
        let _ = child.kill();
        let _ = child.wait();
    }
    ([plain, synced, ours], super::steps::take(), apps)
}

/// One plain `criu dump` of each pid at once (each followed by `sync -f`
/// of its directory when `sync`); wall time until the last is done.
fn plain_at_once(criu: &Criu, pids: &[String], work: &Path, sync: bool) -> f64 {
    let dirs: Vec<PathBuf> = (0..pids.len())
        .map(|i| images(work, &format!("at-once-{i}")))
        .collect();
    let started = Instant::now();
    let children: Vec<_> = pids
        .iter()
        .zip(&dirs)
        .map(|(pid, dir)| {
            let dump = format!(
                "{} dump --leave-running --shell-job -t {pid} -o dump.log -v4 -D {}",
                criu.path.display(),
                dir.display()
            );
            match sync {
                true => Command::new("sh")
                    .arg("-c")
                    .arg(format!("{dump} && sync -f {}", dir.display()))
                    .spawn(),
                false => Command::new(&criu.path)
                    .args(dump.split(' ').skip(1))
                    .spawn(),
            }
            .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "plain criu dump failed");
    }
    let took = ms(started.elapsed());
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    took
}
