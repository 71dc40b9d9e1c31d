//! For the tests of generations: `checkpoint_loop` started isolated
//! (`selfdump run`, so that copies restored from its generations run beside
//! it), driven one checkpoint at a time; `selfdump serve` with the test
//! holds of the `test-hooks` feature; and what a directory of generations
//! should look like.

use super::*;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};

/// `checkpoint_loop` under `selfdump run`, its output appended to `log`.
pub struct Looping {
    run: Option<Child>,
    pub log: PathBuf,
    ctl: tempfile::TempDir,
}

impl Looping {
    /// Starts it on `socket` into `images` with `args`; with `driven`, each
    /// checkpoint waits for [`Looping::go`].
    pub fn start(socket: &Path, images: &Path, driven: bool, args: &[&str]) -> Self {
        let (log, out) = append_log(images);
        Self::spawn(socket, images, (log, out), driven, args)
    }

    /// [`Looping::start`], driven, its output appended to `log`.
    pub fn start_logged(socket: &Path, images: &Path, log: &Path, args: &[&str]) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(socket, images, (log.to_path_buf(), out), true, args)
    }

    fn spawn(
        socket: &Path,
        images: &Path,
        (log, out): (PathBuf, File),
        driven: bool,
        args: &[&str],
    ) -> Self {
        let ctl = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(selfdump_bin());
        // CRIU's parasite makes `proc.crtools` in the cwd of a namespace's
        // init it dumps: two dumped from one cwd at once collide (EEXIST)
        cmd.current_dir(ctl.path());
        cmd.args(["run", "--"])
            .arg(example("checkpoint_loop"))
            .arg("--images")
            .arg(images)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .env("RUST_LOG", "warn");
        if driven {
            cmd.arg("--ctl").arg(ctl.path());
        }
        let run = cmd.spawn_guarded().expect("start selfdump run");
        Self {
            run: Some(run),
            log,
            ctl,
        }
    }

    /// Lets checkpoint `i` go.
    pub fn go(&self, i: u32) {
        std::fs::write(self.ctl.path().join(format!("go-{i}")), b"").unwrap();
    }

    /// The original's line for checkpoint `i` (`continued` or `error`).
    pub fn outcome(&self, i: u32) -> String {
        let continued = format!("gen {i} continued ");
        let error = format!("gen {i} error ");
        wait_for_line(&self.log, &format!("checkpoint {i}'s outcome"), |l| {
            l.starts_with(&continued) || l.starts_with(&error)
        })
    }

    /// The generation checkpoint `i` committed, from its `continued` line.
    pub fn committed(&self, i: u32) -> String {
        let line = self.outcome(i);
        if !line.contains(" continued ") {
            // what CRIU said, before the directory goes with the panic
            let log = line
                .split("(log: ")
                .nth(1)
                .map(|l| read(Path::new(l.trim_end_matches(')'))))
                .unwrap_or_default();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
            panic!("checkpoint {i}: {line}\n{}", errors.join("\n"));
        }
        line.split_whitespace().nth(3).unwrap().to_owned()
    }

    /// The lines of restored copies so far.
    pub fn restored_lines(&self) -> Vec<String> {
        read(&self.log)
            .lines()
            .filter(|l| l.contains(" restored "))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `selfdump run` is still running.
    pub fn running(&mut self) -> bool {
        self.run
            .as_mut()
            .is_some_and(|r| matches!(r.try_wait(), Ok(None)))
    }

    /// Ends it and its namespace.
    pub fn stop(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        if let Ok(Some(_)) = run.try_wait() {
            return;
        }
        for init in children_of(run.id() as i32) {
            kill_and_reap(init);
        }
        let _ = run.kill();
        let _ = run.wait();
    }

    /// The namespace's init (the root of every dump), if it runs.
    pub fn init(&self) -> Option<i32> {
        let run = self.run.as_ref()?;
        children_of(run.id() as i32).first().copied()
    }
}

impl Drop for Looping {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// `selfdump restore DIR`, then the line of the copy it started, which is
/// then killed (its namespace with it) and reaped.
pub fn restore_and_hear(images: &Path, looping: &Looping) -> String {
    let before = looping.restored_lines().len();
    let pid = restore(images).unwrap_or_else(|e| panic!("restore {}: {e}", images.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while looping.restored_lines().len() <= before {
        assert!(
            Instant::now() < deadline,
            "the copy restored as pid {pid} said nothing:\n{}",
            read(&looping.log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let heard = looping.restored_lines()[before].clone();
    kill_and_reap(pid);
    heard
}

/// The generations in `images`, oldest first.
pub fn generations(images: &Path) -> Vec<String> {
    // names only: the service removes entries while the tests poll
    entry_names(images)
        .into_iter()
        .filter(|n| n.starts_with("gen-"))
        .collect()
}

/// Waits (10 s at most) until the generations in `images` are those
/// `expected` holds (retention runs after a checkpoint's answer).
pub fn wait_generations(images: &Path, expected: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = generations(images);
        if expected(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "generations: {now:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What `latest` names in `images`.
pub fn latest(images: &Path) -> Option<String> {
    std::fs::read_link(images.join("latest"))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Every generation in `images` is whole: signed by the service's key,
/// every signed file there with its size; and `latest` names one.
pub fn assert_generations_whole(images: &Path) {
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    let found = selfdump::server::inspect::inspect(images, Some(&key)).unwrap();
    let latest = latest(images).expect("a latest");
    assert!(
        found
            .generations
            .iter()
            .any(|g| g.latest && g.name == latest),
        "latest names {latest}, not a generation: {:?}",
        found.generations
    );
    for g in &found.generations {
        assert_eq!(g.verifies, Some(true), "{} is not whole: {g:?}", g.name);
    }
}

/// Nothing of the service's is left in `images` (no `.selfdump-*` entry,
/// in it or in a generation), within 10 s (a dump's last tidying runs
/// after its answer).
pub fn assert_no_leftovers(images: &Path) {
    let left = || {
        let mut left: Vec<String> = staging_dirs(images);
        for generation in generations(images) {
            left.extend(
                staging_dirs(&images.join(&generation))
                    .into_iter()
                    .map(|n| format!("{generation}/{n}")),
            );
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "left in images: {:?}", left());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps the zombies of the criu processes a killed service left to this
/// (sub)reaper, waiting for those still running to notice and end.
pub fn reap_orphaned_criu(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let criu: Vec<(i32, char)> = own_children()
            .into_iter()
            .filter(|(_, _, comm)| comm == "criu")
            .map(|(pid, state, _)| (pid, state))
            .collect();
        for (pid, state) in &criu {
            if *state == 'Z' {
                kill_and_reap(*pid);
            }
        }
        if criu.iter().all(|(_, s)| *s == 'Z') || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test holds of a `selfdump serve` built with `test-hooks`
/// (`server/fs/test_hold.rs`).
pub struct Holds(tempfile::TempDir);

impl Holds {
    pub fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    /// The environment that gives a service these holds.
    pub fn env(&self) -> (&'static str, &Path) {
        ("SELFDUMP_TEST_HOLD_DIR", self.0.path())
    }

    /// The next commit stops at `step`.
    pub fn hold(&self, step: &str) {
        std::fs::write(self.0.path().join(format!("hold-{step}")), b"").unwrap();
    }

    /// Waits (60 s at most) until a commit stops at `step`.
    pub fn wait_held(&self, step: &str) {
        let held = self.0.path().join(format!("held-{step}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !held.exists() {
            assert!(Instant::now() < deadline, "no commit stopped at {step}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lets the commit held at `step` go on.
    pub fn release(&self, step: &str) {
        let _ = std::fs::remove_file(self.0.path().join(format!("hold-{step}")));
    }
}

/// `selfdump serve` on `socket` (`RUST_LOG=info` into `log`) with the
/// environment `env`, once it listens.
pub fn serve_with(socket: &Path, log: &Path, env: &[(&str, &Path)]) -> Child {
    let mut cmd = Command::new(selfdump_bin());
    cmd.args(["serve", "--socket"])
        .arg(socket)
        .arg("--criu")
        .arg(criu().path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(File::create(log).unwrap());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let _ = std::fs::remove_file(socket);
    let serve = cmd.spawn_guarded().unwrap();
    wait_serving(log);
    serve
}
