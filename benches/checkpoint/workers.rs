//! Would keeping `criu swrk` workers started ahead of time help? The same
//! dump (an idle 4 MiB app, leave-running, kernel-feature cache present)
//! through the engine, in turns: with a worker started on demand (what the
//! service does), with one started 50 ms before, and with one started 1 s
//! and 10 s before (a worker waiting idle, as a pool's would between
//! requests; 10 s only every third round, to keep the bench short).
//! Each is timed from the moment the dump is wanted to CRIU's answer, and
//! CRIU's own frozen time is read from its stats.

use super::{Criu, criu_frozen_ms, images, median, ms, start_app};
use selfdump::proto::DumpOptions;
use selfdump::server::internals::{DumpHooks, DumpSpec, FrozenVerdict, Worker};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

struct NoHooks;

impl DumpHooks for NoHooks {
    async fn frozen(&mut self) -> FrozenVerdict {
        FrozenVerdict::Proceed
    }
    async fn images_written(&mut self) -> FrozenVerdict {
        FrozenVerdict::Proceed
    }
}

/// When the worker is started, relative to the moment the dump is wanted.
#[derive(Clone, Copy)]
enum Start {
    OnDemand,
    Ahead(Duration),
}

/// Medians, in ms, of (time to result, CRIU's frozen time) per way of starting.
pub struct WorkerNumbers {
    pub on_demand: (f64, f64),
    pub ahead_50ms: (f64, f64),
    pub ahead_1s: (f64, f64),
    pub ahead_10s: (f64, f64),
}

fn one_dump(criu: &Criu, pid: i32, dir: &Path, start: Start) -> (f64, f64) {
    let dir_fd = std::fs::File::open(dir).unwrap();
    let spec = DumpSpec {
        pid,
        images_dir: dir_fd.as_fd(),
        options: DumpOptions::default(),
        shell_job: true,
    };
    let timeout = Duration::from_secs(60);
    rustix::fs::sync();
    let (wanted, worker) = match start {
        Start::OnDemand => (Instant::now(), Worker::start(criu).unwrap()),
        Start::Ahead(idle) => {
            let worker = Worker::start(criu).unwrap();
            std::thread::sleep(idle);
            (Instant::now(), worker)
        }
    };
    async_io::block_on(worker.dump(&spec, timeout, &mut NoHooks)).expect("dump");
    (ms(wanted.elapsed()), criu_frozen_ms(dir))
}

/// `reps` rounds of the ways in turns, on one idle app; `longest` (10 s)
/// every third round only, and not at all without it (its medians are NaN).
pub fn measure(
    criu: &Criu,
    app: &Path,
    work: &Path,
    reps: usize,
    longest: Option<Duration>,
) -> WorkerNumbers {
    let (mut child, _out) = start_app(app, &["--mib", "4", "--idle"]);
    let pid = child.id() as i32;
    let ways = [
        Start::OnDemand,
        Start::Ahead(Duration::from_millis(50)),
        Start::Ahead(Duration::from_secs(1)),
        Start::Ahead(longest.unwrap_or_default()),
    ];
    let mut samples: [Vec<(f64, f64)>; 4] = Default::default();
    // one unmeasured round: the first dump of a process costs more
    for way in &ways[..3] {
        one_dump(criu, pid, &images(work, "workers"), *way);
    }
    for round in 0..reps {
        let ways = if round % 3 == 0 && longest.is_some() {
            &ways[..]
        } else {
            &ways[..3]
        };
        for (i, way) in ways.iter().enumerate() {
            samples[i].push(one_dump(criu, pid, &images(work, "workers"), *way));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let medians = |v: &[(f64, f64)]| match v.is_empty() {
        true => (f64::NAN, f64::NAN),
        false => (
            median(v.iter().map(|s| s.0).collect()),
            median(v.iter().map(|s| s.1).collect()),
        ),
    };
    WorkerNumbers {
        on_demand: medians(&samples[0]),
        ahead_50ms: medians(&samples[1]),
        ahead_1s: medians(&samples[2]),
        ahead_10s: medians(&samples[3]),
    }
}
