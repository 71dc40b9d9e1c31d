//! What the store tests share: the stores they run against (the local
//! SeaweedFS that scripts/test.sh starts, and file:// roots), a second host
//! (its own key, a trust directory, its own empty cache), a recording CRIU,
//! and a program started with `selfdump run` that checkpoints itself.

use crate::common::*;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::trust::PublicKey;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A store root for one test: `s3://` on the local SeaweedFS, or
/// `file://` in a temporary directory (kept by the returned guard).
pub struct Root {
    pub url: String,
    pub kind: &'static str,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh, unique root in each kind of store the tests run against.
pub fn roots(test: &str) -> Vec<Root> {
    let s3 = std::env::var("SELFDUMP_TEST_S3").unwrap_or_else(|_| {
        panic!(
            "SELFDUMP_TEST_S3 is not set: the store tests need the local SeaweedFS that \
             scripts/test.sh installs and starts (run that, or source scripts/seaweedfs.sh and \
             call seaweedfs_start)"
        )
    });
    let dir = tempfile::Builder::new()
        .prefix("selfdump-store")
        .tempdir()
        .unwrap();
    vec![
        Root {
            url: format!("file://{}", dir.path().display()),
            kind: "file",
            _dir: Some(dir),
        },
        Root {
            url: format!("{s3}/{test}-{:08x}", rand32()),
            kind: "s3",
            _dir: None,
        },
    ]
}

pub fn rand32() -> u32 {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap();
    u32::from_le_bytes(b)
}

/// The first service's key: the one `Service::start` signs with.
pub fn first_key() -> Key {
    Key::load(Path::new(DEFAULT_KEY_FILE)).expect("the test service's key")
}

/// Another host: its own key file, a trust directory holding the given
/// public keys only, its own empty cache, and a CRIU that records each
/// run before it runs the real one.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub key: Key,
}

impl Host {
    pub fn trusting(keys: &[PublicKey]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("selfdump-host")
            .tempdir()
            .unwrap();
        // a key file made the way a service makes its own
        let key = Key::load_or_create(&dir.path().join("signing.key")).unwrap();
        let host = Self { dir, key };
        std::fs::create_dir(host.trust()).unwrap();
        for (i, k) in keys.iter().enumerate() {
            std::fs::write(host.trust().join(format!("{i}.pub")), k.to_file()).unwrap();
        }
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n",
            host.criu_log().display(),
            criu().path.display()
        );
        std::fs::write(host.criu(), script).unwrap();
        set_mode(&host.criu(), 0o755);
        host
    }

    /// Removes this host's own key (and its public key beside it): the
    /// host then holds the public keys of its trust directory alone.
    pub fn forget_own_key(&self) {
        std::fs::remove_file(self.key_file()).unwrap();
        std::fs::remove_file(self.dir.path().join("signing.pub")).unwrap();
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("signing.key")
    }
    pub fn trust(&self) -> PathBuf {
        self.dir.path().join("trusted.d")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    pub fn criu(&self) -> PathBuf {
        self.dir.path().join("criu")
    }
    fn criu_log(&self) -> PathBuf {
        self.dir.path().join("criu.runs")
    }

    /// The CRIU runs that restored something (`criu --version`, which the
    /// host check reads, is not one).
    pub fn restores_run(&self) -> Vec<String> {
        std::fs::read_to_string(self.criu_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| *l != "--version")
            .map(str::to_owned)
            .collect()
    }

    /// `selfdump ARGS` as this host (its key, trust directory, cache, CRIU).
    pub fn selfdump(&self, args: &[&str]) -> Output {
        self.selfdump_with(args, |_| {})
    }

    pub fn selfdump_with(&self, args: &[&str], env: impl FnOnce(&mut Command)) -> Output {
        let (command, rest) = args.split_first().unwrap();
        let mut cmd = Command::new(selfdump_bin());
        cmd.arg(command)
            .arg("--key-file")
            .arg(self.key_file())
            .arg("--trust-dir")
            .arg(self.trust());
        if *command == "restore" {
            cmd.arg("--cache-dir")
                .arg(self.cache())
                .arg("--criu")
                .arg(self.criu());
        }
        cmd.args(rest).env("RUST_LOG", "info").stdin(Stdio::null());
        env(&mut cmd);
        cmd.output_guarded().unwrap()
    }

    /// The cache's chunks: each must hash to its name, and nothing else
    /// (no temporary file) may be there.
    pub fn cached_chunks(&self) -> Vec<String> {
        let dir = self.cache().join("chunks");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with('.'),
                "a temporary file left in the cache: {name}"
            );
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                name,
                "the cache holds a chunk that does not hash to its name"
            );
            names.push(name);
        }
        names
    }
}

impl Host {
    /// The whole files the cache keeps (by their signed hash).
    pub fn cached_files(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.cache().join("files")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Output as text, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `selfdump push DIR URL` as root: the checkpoint's URL.
pub fn push(dir: &Path, root: &str) -> String {
    let out = Command::new(selfdump_bin())
        .args(["push"])
        .arg(dir)
        .arg(root)
        .env("RUST_LOG", "info")
        .output_guarded()
        .unwrap();
    assert!(out.status.success(), "push failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A `clone_worker` started with `selfdump run` (its own pid namespace),
/// checkpointed once into its images directory; stopped on drop.
pub struct Worker {
    pub images: tempfile::TempDir,
    /// Its working directory, of its own: CRIU's parasite makes
    /// `proc.crtools` there, and two dumps at once in one fail.
    _cwd: tempfile::TempDir,
    pub log: PathBuf,
    run: Child,
}

impl Worker {
    pub fn start(service: &Service, mb: u32) -> Self {
        let images = images_dir();
        let log = images.path().with_extension("log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let cwd = tempfile::tempdir().unwrap();
        let run = Command::new(selfdump_bin())
            .current_dir(cwd.path())
            .args(["run", "--"])
            .arg(example("clone_worker"))
            .arg("--images")
            .arg(images.path())
            .arg("--socket")
            .arg(&service.socket)
            .args(["--mb", &mb.to_string(), "--secs", "300"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .env("RUST_LOG", "warn")
            .spawn_guarded()
            .unwrap();
        let worker = Self {
            images,
            _cwd: cwd,
            log,
            run,
        };
        worker.wait_lines("original continued", 1);
        worker
    }

    pub fn dir(&self) -> &Path {
        self.images.path()
    }

    /// Waits for `n` lines containing `needle`; returns them.
    pub fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found: Vec<String> = read(&self.log)
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {n} x {needle:?}; output:\n{}",
                read(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let _ = kill_process(Pid::from_raw(self.run.id() as i32).unwrap(), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.run.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

/// The root pids `selfdump restore --copies` printed.
pub fn pids(out: &Output) -> Vec<i32> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("one pid a line"))
        .collect()
}
