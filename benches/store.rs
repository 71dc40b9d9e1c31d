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
//! Needs root, CRIU and the local SeaweedFS: `scripts/bench.sh` (and
//! `scripts/bench-store.sh`, this bench alone) starts it and runs this.
//! `SELFDUMP_BENCH_QUICK=1`: 32 MiB and 16 MiB, 1 round, 3 generations.
//! Prints its section of BENCHMARKS.md (`support/report.rs`).

#[path = "support/report.rs"]
mod report;

use report::{Report, median, quick};
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

/// What this run measured, for the report.
#[derive(Default)]
struct Figures {
    push: Vec<Vec<String>>,
    push_ratio: f64,
    second: Vec<Vec<String>>,
    second_share: f64,
    stored: Vec<Vec<String>>,
    restore: Vec<Vec<String>>,
    warm_ratio: f64,
}

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
    let (big, small, rounds, gens) = if quick() {
        (32, 16, 1, 3)
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
    let bench = Bench {
        app: report::example("store_app"),
        socket,
        work: work.path().to_path_buf(),
        root: format!("{s3}/bench-{:08x}", std::process::id()),
    };
    let mut figures = Figures::default();
    push_rows(&bench, big, rounds, gens, &mut figures);
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).expect("the service's key");
    let settings = RestoreSettings::new(criu, Some(key));
    restore_rows(&bench, &settings, small, rounds.max(3), &mut figures);
    write_report(&figures, big, small, rounds, gens);
}

fn write_report(f: &Figures, big: usize, small: usize, rounds: usize, gens: usize) {
    let mut report = Report::new();
    report.section(
        "Beyond one machine: the store",
        &format!(
            "`benches/store.rs`, against the local SeaweedFS (`weed mini` on loopback, which \
             `scripts/bench.sh` starts and stops). The program (`examples/store_app.rs`, \
             started with `selfdump run`) holds memory about as compressible as a program's: \
             each 4 KiB page half pseudo-random bytes, half zeros. Pushes, uploads and \
             restores run in turns, {rounds} round(s) ({} for restores), medians. Chunks are \
             cut on page boundaries chosen by content (about 4.5 MiB), compressed with zstd \
             level 1, 8 transfers at once; the baseline uploads each file as a plain object \
             in 8 MiB parts, 8 at once (`object_store`'s multipart upload).",
            rounds.max(3)
        ),
    );
    report.subsection(
        &format!("Push of a {big} MiB checkpoint against plain objects"),
        "Time from the call to the checkpoint's URL; the bytes sent.",
    );
    report.table(&["", "time (s)", "MiB/s", "uploaded (MiB)"], &f.push);
    report.target(
        "chunking and compression pay for themselves (push time at most the plain upload's)",
        f.push_ratio <= 1.0,
        &format!("ratio {:.2}", f.push_ratio),
    );
    report.subsection(
        "A second push after 10 % of the memory changed",
        "A contiguous region rewritten between the checkpoints; the second push uploads \
         the chunks the store lacks. Cuts chosen by content keep the unchanged regions' \
         chunks even when what precedes them grew (cuts at fixed offsets would not).",
    );
    report.table(
        &[
            "push",
            "uploaded (MiB)",
            "chunks uploaded / all",
            "time (s)",
        ],
        &f.second,
    );
    report.target(
        "the second push uploads at most 15 % of the first's bytes",
        f.second_share <= 15.0,
        &format!("{:.1} %", f.second_share),
    );
    restore_and_stored(&mut report, f, small, big, gens);
    report.finish();
}

fn restore_and_stored(report: &mut Report, f: &Figures, small: usize, big: usize, gens: usize) {
    report.subsection(
        &format!("Restore of a {small} MiB checkpoint"),
        "One copy (`restore --copies 1`), from the start of the call until the copy runs; \
         the store on the same host. Cold: fetch, check and cache every chunk, assemble the \
         files, then the verified restore. Warm: the cache keeps the whole files a restore \
         verified (hard links, by their signed hash), so a later restore links them.",
    );
    report.table(&["", "time (ms)", "ratio to local"], &f.restore);
    report.target(
        "a warm restore at most 1.1× a local one",
        f.warm_ratio <= 1.1,
        &format!("{:.2}×", f.warm_ratio),
    );
    report.subsection(
        &format!("Bytes stored for {gens} generations"),
        &format!("10 % of the {big} MiB changed before each, against {gens} full copies."),
    );
    report.table(&["", "MiB"], &f.stored);
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
        // from fork to exec under the service's fork guard: a fork at a
        // freeze would copy that caller's connection (this process serves)
        let _forking = selfdump::server::spawn_guard();
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
        drop(_forking);
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn push_rows(bench: &Bench, size: usize, rounds: usize, gens: usize, f: &mut Figures) {
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
    let total = mib(bytes);
    f.push = vec![
        vec![
            format!("plain objects (multipart, {total:.0} MiB of files)"),
            format!("{p:.2}"),
            format!("{:.0}", total / p),
            format!("{total:.0}"),
        ],
        vec![
            "`selfdump push` (chunks, zstd)".into(),
            format!("{o:.2}"),
            format!("{:.0}", total / o),
            format!("{:.0}", mib(uploaded)),
        ],
        vec![
            "ratio".into(),
            format!("**{:.2}**", o / p),
            String::new(),
            format!("{:.2}", uploaded as f64 / bytes as f64),
        ],
    ];
    f.push_ratio = o / p;
    generations(bench, &app, gens, f);
}

fn generations(bench: &Bench, app: &App, gens: usize, f: &mut Figures) {
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
    f.second = [("first", first), ("second", second)]
        .iter()
        .map(|(label, u)| {
            vec![
                (*label).into(),
                format!("{:.1}", mib(u.0)),
                format!("{} / {}", u.1, u.2),
                format!("{:.2}", u.3.as_secs_f64()),
            ]
        })
        .collect();
    f.second_share = 100.0 * second.0 as f64 / first.0 as f64;
    f.second.push(vec![
        "second / first".into(),
        format!("**{:.1} %**", f.second_share),
        String::new(),
        String::new(),
    ]);
    f.stored = vec![
        vec![format!("{gens} full copies"), format!("{:.0}", mib(full))],
        vec![
            "the store (chunks and checkpoint objects)".into(),
            format!("{:.0}", mib(stored)),
        ],
        vec![
            "ratio".into(),
            format!("**{:.3}**", stored as f64 / full as f64),
        ],
    ];
}

fn restore_rows(
    bench: &Bench,
    settings: &RestoreSettings,
    size: usize,
    rounds: usize,
    f: &mut Figures,
) {
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
    f.restore = restore_table(l, c, w);
    f.warm_ratio = w / l;
}

/// The restore table: local, cold and warm (seconds).
fn restore_table(l: f64, c: f64, w: f64) -> Vec<Vec<String>> {
    vec![
        vec![
            "local (`restore --copies 1 DIR`)".into(),
            format!("{:.0}", l * 1e3),
            "1.00".into(),
        ],
        vec![
            "from the store, cold cache".into(),
            format!("{:.0}", c * 1e3),
            format!("{:.2}", c / l),
        ],
        vec![
            "from the store, warm cache".into(),
            format!("{:.0}", w * 1e3),
            format!("**{:.2}**", w / l),
        ],
    ]
}

/// Ends a round's copies.
fn end(copies: selfdump::server::copies::Copies) {
    for copy in &copies.copies {
        let _ = copy.signal(rustix::process::Signal::KILL);
    }
    copies.supervise();
}
