//! The store, side by side with its baselines in one run, in turns:
//!
//! 1. push of a 1 GiB checkpoint to the local SeaweedFS against uploading
//!    the same files as plain objects (multipart, 8 MiB parts, 8 at once);
//! 2. a second push after 10 % of the memory changed, against the first
//!    (bytes uploaded);
//! 3. restore of a 256 MiB checkpoint from the store with a cold cache and
//!    with a warm one, against a local restore of the same checkpoint
//!    (`restore --copies 1`: the same verified path);
//! 4. bytes stored for 10 generations (10 % changed each) against 10 full
//!    copies.
//!
//! The program (`examples/store_app.rs`) holds memory about as
//! compressible as a program's: each page half pseudo-random, half zeros.
//! Needs root, CRIU and the local SeaweedFS: `scripts/bench-store.sh`
//! starts it and runs this. `SELFDUMP_BENCH_QUICK=1`: 128 MiB and 64 MiB,
//! 1 round, 3 generations.

use selfdump::server::check::find_criu;
use selfdump::server::copies::restore_copies;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::RestoreSettings;
use selfdump::server::store::{self, Cache, raw};
use selfdump::server::{Criu, Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("store: bench");
        return;
    }
    let Ok(s3) = std::env::var("SELFDUMP_TEST_S3") else {
        println!("store bench: needs the local SeaweedFS; run scripts/bench-store.sh");
        return;
    };
    assert!(
        rustix::process::geteuid().is_root(),
        "the store bench restores: run it as root"
    );
    let quick = std::env::var_os("SELFDUMP_BENCH_QUICK").is_some();
    let (big, small, rounds, gens) = if quick {
        (128, 64, 1, 3)
    } else {
        (1024, 256, 3, 10)
    };
    let criu = Criu {
        path: find_criu(),
        log_level: 4,
    };
    let work = tempfile::Builder::new()
        .prefix("selfdump-store-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let socket = work.path().join("selfdump.sock");
    let server = Server::builder().criu(criu.clone()).bind(&socket).unwrap();
    std::thread::spawn(move || async_io::block_on(server.run()));
    let run = format!("{s3}/bench-{:08x}", std::process::id());
    let bench = Bench {
        app: build_app(),
        socket,
        work: work.path().to_path_buf(),
        root: run,
    };
    println!(
        "store bench: {rounds} round(s) in turns, medians; {big} MiB push, {small} MiB restore"
    );
    push_rows(&bench, big, rounds, gens);
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).expect("the service's key");
    restore_rows(
        &bench,
        &RestoreSettings::new(criu, Some(key)),
        small,
        rounds.max(3),
    );
}

struct Bench {
    app: PathBuf,
    socket: PathBuf,
    work: PathBuf,
    root: String,
}

/// The app under `selfdump run`, and how to make it checkpoint.
struct App {
    run: Child,
    images: PathBuf,
    log: PathBuf,
    go: String,
}

impl Bench {
    fn start(&self, name: &str, mib: usize) -> App {
        let images = self.work.join(name);
        std::fs::create_dir_all(&images).unwrap();
        let log = self.work.join(format!("{name}.log"));
        // appended to: CRIU restores an append-only file whatever its size
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let go = self.work.join(format!("{name}.go")).display().to_string();
        let run = Command::new(env!("CARGO_BIN_EXE_selfdump"))
            .args(["run", "--"])
            .arg(&self.app)
            .arg("--images")
            .arg(&images)
            .args(["--socket", self.socket.to_str().unwrap(), "--go", &go])
            .args(["--mib", &mib.to_string(), "--change", "10"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        App {
            run,
            images,
            log,
            go,
        }
    }
}

impl App {
    /// Checkpoint `n` (after changing 10 % of memory, but the first).
    fn checkpoint(&self, n: usize) {
        std::fs::write(format!("{}-{n}", self.go), "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let want = format!("checkpoint {n} ");
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(&want)
        {
            assert!(Instant::now() < deadline, "no checkpoint {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let latest = self.images.join("latest");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&latest)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with(".log"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.run.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let _ = self.run.wait();
    }
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn push_rows(bench: &Bench, size: usize, rounds: usize, gens: usize) {
    let app = bench.start("push", size);
    app.checkpoint(0);
    let files = app.files();
    let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    let (mut plain, mut ours, mut uploaded) = (Vec::new(), Vec::new(), 0);
    for r in 0..rounds {
        for turn in 0..2 {
            if (turn + r) % 2 == 0 {
                let t = Instant::now();
                for f in &files {
                    let name = format!("plain-{r}/{}", f.file_name().unwrap().to_string_lossy());
                    raw::put_file(&bench.root, &name, f).unwrap();
                }
                plain.push(secs(t));
            } else {
                let t = Instant::now();
                let root = format!("{}/fresh-{r}", bench.root);
                let pushed = async_io::block_on(store::push(&app.images, &root)).unwrap();
                ours.push(secs(t));
                uploaded = pushed.uploaded_bytes;
            }
        }
    }
    let (p, o) = (median(&mut plain), median(&mut ours));
    println!(
        "\n1. push of a {size} MiB checkpoint ({:.0} MiB of files) to the local SeaweedFS",
        mib(bytes)
    );
    println!("| | time (s) | MiB/s | uploaded (MiB) |\n|---|---|---|---|");
    println!(
        "| plain objects (multipart) | {p:.2} | {:.0} | {:.0} |",
        mib(bytes) / p,
        mib(bytes)
    );
    println!(
        "| selfdump push (chunks, zstd) | {o:.2} | {:.0} | {:.0} |",
        mib(bytes) / o,
        mib(uploaded)
    );
    println!(
        "| ratio | {:.2} | | {:.2} |",
        o / p,
        uploaded as f64 / bytes as f64
    );
    generations(bench, &app, bytes, gens);
}

fn generations(bench: &Bench, app: &App, bytes: u64, gens: usize) {
    let root = format!("{}/gens", bench.root);
    let mut uploads = Vec::new();
    let mut full = 0;
    for g in 0..gens {
        if g > 0 {
            app.checkpoint(g);
        }
        full += app
            .files()
            .iter()
            .map(|f| f.metadata().unwrap().len())
            .sum::<u64>();
        let pushed = async_io::block_on(store::push(&app.images, &root)).unwrap();
        uploads.push((
            pushed.uploaded_bytes,
            pushed.uploaded_chunks,
            pushed.chunks,
            pushed.elapsed,
        ));
    }
    let stored: u64 = raw::list_sizes(&root, "")
        .unwrap()
        .iter()
        .map(|(_, s)| s)
        .sum();
    let (first, second) = (uploads[0], uploads[1]);
    println!("\n2. a second push after 10 % of the memory changed");
    println!("| push | uploaded (MiB) | chunks uploaded / all | time (s) |\n|---|---|---|---|");
    for (label, u) in [("first", first), ("second", second)] {
        println!(
            "| {label} | {:.1} | {} / {} | {:.2} |",
            mib(u.0),
            u.1,
            u.2,
            u.3.as_secs_f64()
        );
    }
    println!(
        "| second / first | {:.1} % | | |",
        100.0 * second.0 as f64 / first.0 as f64
    );
    println!(
        "\n4. bytes stored for {gens} generations (10 % changed each) against {gens} full copies"
    );
    println!("| | MiB |\n|---|---|");
    println!("| {gens} full copies | {:.0} |", mib(full));
    println!(
        "| the store (chunks and checkpoint objects) | {:.0} |",
        mib(stored)
    );
    println!("| ratio | {:.3} |", stored as f64 / full as f64);
    let _ = bytes;
}

fn restore_rows(bench: &Bench, settings: &RestoreSettings, size: usize, rounds: usize) {
    let app = bench.start("restore", size);
    app.checkpoint(0);
    let root = format!("{}/restore", bench.root);
    let url = async_io::block_on(store::push(&app.images, &root))
        .unwrap()
        .url;
    let (mut local, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let cache_dir = bench.work.join(format!("cache-{r}"));
        for turn in 0..3 {
            match (turn + r) % 3 {
                0 => {
                    let t = Instant::now();
                    let copies = restore_copies(settings, &app.images, 1, false).unwrap();
                    local.push(secs(t));
                    end(copies);
                }
                _ => {
                    let cached = cache_dir.exists();
                    let cache = Arc::new(Cache::open(&cache_dir, u64::MAX).unwrap());
                    let t = Instant::now();
                    let (copies, _) =
                        store::restore_url_copies(&url, settings, &cache, 1, false).unwrap();
                    if cached {
                        warm.push(secs(t))
                    } else {
                        cold.push(secs(t))
                    };
                    end(copies);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&cache_dir);
    }
    let (l, c, w) = (median(&mut local), median(&mut cold), median(&mut warm));
    println!("\n3. restore of a {size} MiB checkpoint (one copy, until it runs)");
    println!("| | time (ms) | ratio to local |\n|---|---|---|");
    println!(
        "| local (`restore --copies 1 DIR`) | {:.0} | 1.00 |",
        l * 1e3
    );
    println!(
        "| from the store, cold cache | {:.0} | {:.2} |",
        c * 1e3,
        c / l
    );
    println!(
        "| from the store, warm cache | {:.0} | {:.2} |",
        w * 1e3,
        w / l
    );
}

/// Ends a round's copies.
fn end(copies: selfdump::server::copies::Copies) {
    for copy in &copies.copies {
        let _ = copy.signal(rustix::process::Signal::KILL);
    }
    copies.supervise();
}

fn build_app() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--example", "store_app"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("release/examples/store_app")
}
