//! Runs the attacks. As the coordinator (what `cargo test` starts), each
//! attack in a process of its own, this binary again with
//! `ADVERSARIAL_ATTACK=<name>`, several at a time; as such a process, one
//! attack and the checks after it, its verdict written to the file that
//! `ADVERSARIAL_VERDICT` names. Each attack process gets a `$TMPDIR` of its
//! own, so the check for root's leftovers looks at its attack's files only.

use crate::common::Guarded;
use crate::common::*;
use crate::ctx::{Ctx, after_attack, assert_still_serves};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// One attack: sets up its service in the context, returns what happened.
pub type Attack = fn(&mut Ctx) -> String;

/// How long one attack may take before it counts as hung.
const ATTACK_LIMIT: Duration = Duration::from_secs(300);

pub fn main(
    attacks: &[(&'static str, Attack)],
    alone: &[&str],
    longest_first: &[&str],
) -> ExitCode {
    match std::env::var("ADVERSARIAL_ATTACK") {
        Ok(name) => attack_process(&name, attacks),
        Err(_) => coordinate(attacks, alone, longest_first),
    }
}

/// What an attack process reports.
#[derive(Default)]
struct Verdict {
    said: Option<String>,
    failed: Option<String>,
    reached: Vec<String>,
    skipped: Vec<(String, String)>,
}

impl Verdict {
    fn write(&self, path: &Path) {
        let one_line = |s: &str| s.replace('\n', "\u{1f}");
        let mut text = String::new();
        if let Some(said) = &self.said {
            text += &format!("said\t{}\n", one_line(said));
        }
        if let Some(why) = &self.failed {
            text += &format!("failed\t{}\n", one_line(why));
        }
        for step in &self.reached {
            text += &format!("reached\t{}\n", one_line(step));
        }
        for (kind, what) in &self.skipped {
            text += &format!("skipped\t{kind}\t{}\n", one_line(what));
        }
        std::fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut verdict = Self::default();
        for line in text.lines() {
            let line = line.replace('\u{1f}', "\n");
            let (tag, rest) = line.split_once('\t')?;
            match tag {
                "said" => verdict.said = Some(rest.to_owned()),
                "failed" => verdict.failed = Some(rest.to_owned()),
                "reached" => verdict.reached.push(rest.to_owned()),
                "skipped" => {
                    let (kind, what) = rest.split_once('\t')?;
                    verdict.skipped.push((kind.to_owned(), what.to_owned()));
                }
                _ => return None,
            }
        }
        Some(verdict)
    }
}

/// Runs the attack `name` and the checks after it in this process.
fn attack_process(name: &str, attacks: &[(&str, Attack)]) -> ExitCode {
    let verdict_file = PathBuf::from(std::env::var_os("ADVERSARIAL_VERDICT").unwrap());
    let attack = attacks
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no attack named {name:?}"))
        .1;
    // warm up: the reactor and the process reaper exist before the first
    // fd count
    {
        let service = Service::start();
        assert_still_serves(&service.socket);
    }
    // on a thread named after the attack: its skips say which it was
    let verdict = std::thread::Builder::new()
        .name(name.replace(' ', "_"))
        .spawn(move || run_attack(attack))
        .unwrap()
        .join()
        .unwrap();
    verdict.write(&verdict_file);
    let _ = std::fs::remove_dir_all(crate::support::shm_dir());
    match verdict.failed {
        None => ExitCode::SUCCESS,
        Some(_) => ExitCode::FAILURE,
    }
}

/// The attack and the checks after it; its service stopped once done.
fn run_attack(attack: Attack) -> Verdict {
    let mut ctx = Ctx::default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let said = attack(&mut ctx);
        after_attack(&mut ctx);
        said
    }));
    let mut verdict = Verdict {
        reached: std::mem::take(&mut ctx.reached),
        skipped: ctx
            .skipped
            .iter()
            .map(|(limit, what)| (limit.name().to_owned(), what.clone()))
            .collect(),
        ..Verdict::default()
    };
    match result {
        Ok(said) => verdict.said = Some(said),
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            verdict.failed = Some(why);
        }
    }
    verdict
}

/// The attacks the command line, `ADVERSARIAL_ONLY` and `ADVERSARIAL_ALONE`
/// (`skip`: not those that must run alone; `only`: those alone) select, in
/// the order they start: those that must run alone last, the longest first.
fn selected<'a>(
    attacks: &[(&'a str, Attack)],
    alone: &[&str],
    longest_first: &[&str],
) -> Vec<&'a str> {
    let only = std::env::var("ADVERSARIAL_ONLY").ok();
    let alone_ones = std::env::var("ADVERSARIAL_ALONE").ok();
    let (filters, exact) = test_filters();
    let whole = |f: &str| match exact {
        true => f == "adversarial_suite",
        false => "adversarial_suite".contains(f),
    };
    let named = |name: &str, f: &str| match exact {
        true => name == f,
        false => name.contains(f),
    };
    let mut names: Vec<&str> = attacks
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| only.as_deref().is_none_or(|o| name.contains(o)))
        .filter(|name| filters.is_empty() || filters.iter().any(|f| whole(f) || named(name, f)))
        .filter(|name| match alone_ones.as_deref() {
            Some("skip") => !alone.contains(name),
            Some("only") => alone.contains(name),
            _ => true,
        })
        .collect();
    let rank = |name: &str| {
        let first = longest_first.iter().position(|n| *n == name);
        (alone.contains(&name), first.unwrap_or(usize::MAX))
    };
    names.sort_by_key(|name| rank(name));
    names
}

/// The name filters of a libtest command line (`cargo test NAME`), and
/// whether `--exact` was given; its other options are ignored.
fn test_filters() -> (Vec<String>, bool) {
    let mut args = std::env::args().skip(1);
    let (mut filters, mut exact) = (Vec::new(), false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            "--test-threads" | "--logfile" | "--skip" | "--format" | "--color" | "-Z"
            | "--shuffle-seed" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    (filters, exact)
}

/// An attack process under way.
struct Running {
    name: &'static str,
    child: Child,
    started: Instant,
    output: PathBuf,
    verdict: PathBuf,
}

fn coordinate(
    attacks: &[(&'static str, Attack)],
    alone: &[&str],
    longest_first: &[&str],
) -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in attacks {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let mut queue = selected(attacks, alone, longest_first);
    if queue.is_empty() {
        println!("adversarial: no attack matches the filter");
        return ExitCode::SUCCESS;
    }
    let jobs: usize = std::env::var("ADVERSARIAL_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(4)
        .max(1);
    // built once here: the attack processes only run them
    example("counter");
    let work = tempfile::Builder::new()
        .prefix("selfdump-adversarial")
        .tempdir()
        .unwrap();
    let began = Instant::now();
    println!(
        "adversarial: {} attacks, {jobs} at a time, each in a process of its own",
        queue.len()
    );
    queue.reverse(); // popped from the end
    let total = queue.len();
    let (mut running, mut results) = (Vec::<Running>::new(), Vec::new());
    let mut started = 0;
    while !queue.is_empty() || !running.is_empty() {
        let next_alone = queue.last().is_some_and(|n| alone.contains(n));
        let room = match next_alone {
            true => running.is_empty(),
            false => running.len() < jobs && !running.iter().any(|r| alone.contains(&r.name)),
        };
        if room && !queue.is_empty() {
            let name = queue.pop().unwrap();
            running.push(spawn(name, work.path(), started));
            started += 1;
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
        collect_finished(&mut running, &mut results);
    }
    summary(&results, total, jobs, began.elapsed())
}

/// Moves the attacks whose processes ended from `running` to `results`,
/// reporting each.
fn collect_finished(running: &mut Vec<Running>, results: &mut Vec<(&'static str, Done)>) {
    let mut i = 0;
    while i < running.len() {
        match finished(&mut running[i]) {
            Some(done) => {
                let run = running.remove(i);
                report(&run, &done);
                results.push((run.name, done));
            }
            None => i += 1,
        }
    }
}

fn spawn(name: &'static str, work: &Path, index: usize) -> Running {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = work.join(format!("{index}"));
    std::fs::create_dir(&tmp).unwrap();
    // like /tmp: callers of any uid make their files in it
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let output = work.join(format!("{index}.out"));
    let verdict = work.join(format!("{index}.verdict"));
    let out = std::fs::File::create(&output).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env("ADVERSARIAL_ATTACK", name)
        .env("ADVERSARIAL_VERDICT", &verdict)
        .env("TMPDIR", &tmp)
        .env("SELFDUMP_EXAMPLES_BUILT", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn_guarded()
        .expect("start an attack process");
    Running {
        name,
        child,
        started: Instant::now(),
        output,
        verdict,
    }
}

/// What became of a finished attack process.
struct Done {
    verdict: Verdict,
    took: Duration,
}

/// The attack's verdict once its process ended (or was ended: hung).
fn finished(run: &mut Running) -> Option<Done> {
    let took = run.started.elapsed();
    let status = match run.child.try_wait().unwrap() {
        Some(status) => status,
        None if took < ATTACK_LIMIT => return None,
        None => {
            let group = rustix::process::Pid::from_raw(run.child.id() as i32).unwrap();
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = run.child.wait();
            let verdict = Verdict {
                failed: Some(format!("still running after {ATTACK_LIMIT:?}: killed")),
                ..Verdict::default()
            };
            return Some(Done { verdict, took });
        }
    };
    let verdict = Verdict::read(&run.verdict).unwrap_or_else(|| Verdict {
        failed: Some(format!("its process ended ({status}) without a verdict")),
        ..Verdict::default()
    });
    Some(Done { verdict, took })
}

fn report(run: &Running, done: &Done) {
    let reached = match done.verdict.reached.is_empty() {
        true => "(the attack does not say)".to_owned(),
        false => done.verdict.reached.join("; "),
    };
    let mut line = format!("attack {} [{:.1?}]", run.name, done.took);
    match (&done.verdict.failed, &done.verdict.said) {
        (Some(why), _) => line += &format!(": NOT DEFENDED: {why}"),
        (None, Some(said)) => line += &format!(": {said}"),
        (None, None) => line += ": no verdict",
    }
    line += &format!("\n    reached: {reached}");
    for (kind, what) in &done.verdict.skipped {
        line += &format!("\n    skipped [{kind}] (recorded in the skip log): {what}");
    }
    println!("{line}");
    if done.verdict.failed.is_some() {
        let output = read(&run.output);
        let lines: Vec<&str> = output.lines().collect();
        let tail = &lines[lines.len().saturating_sub(200)..];
        println!("    its output:\n      {}", tail.join("\n      "));
    }
    let _ = std::io::stdout().flush();
}

fn summary(results: &[(&str, Done)], total: usize, jobs: usize, took: Duration) -> ExitCode {
    let served: Vec<&str> = results
        .iter()
        .filter(|(_, d)| d.verdict.failed.is_some())
        .map(|(name, _)| *name)
        .collect();
    let skipped: Vec<String> = results
        .iter()
        .flat_map(|(name, d)| {
            d.verdict
                .skipped
                .iter()
                .map(move |(kind, _)| format!("{name} [{kind}]"))
        })
        .collect();
    let unsaid: Vec<&str> = results
        .iter()
        .filter(|(_, d)| d.verdict.reached.is_empty() && d.verdict.failed.is_none())
        .map(|(name, _)| *name)
        .collect();
    let skipped = match skipped.len() {
        0 => "0 skipped".to_owned(),
        n => format!("{n} skipped: {}", skipped.join(", ")),
    };
    let unsaid = match unsaid.len() {
        0 => String::new(),
        n => format!("; {n} do not say which step they reached: {unsaid:?}"),
    };
    println!(
        "adversarial: {total} attacks, {} refused or survived, {} served; {skipped}{unsaid} \
         ({took:.0?}, {jobs} at a time)",
        total - served.len(),
        served.len()
    );
    match served.is_empty() {
        true => ExitCode::SUCCESS,
        false => {
            println!("attacks not defended: {served:?}");
            ExitCode::FAILURE
        }
    }
}
