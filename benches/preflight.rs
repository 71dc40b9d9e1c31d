//! Preflight cost: `selfdump::preflight()` on this small process (a few
//! fds, no children), against a baseline measured in the same run: one
//! read of `/proc/self/status`, the smallest thing the preflight must do
//! anyway (it reads that file for the tracer).
//!
//! `checkpoint()` runs the preflight every time, so it must cost next to
//! nothing next to the dump itself (tens of milliseconds): the target is a
//! median under 2 ms.
//!
//! Run: `cargo bench --bench preflight`.

#[path = "support/report.rs"]
mod report;

use report::Report;
use std::time::{Duration, Instant};

/// Timed calls of each, after a few warm-up calls.
const WARMUP: usize = 5;
/// The target for the preflight's median.
const TARGET: Duration = Duration::from_millis(2);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("preflight: bench");
        return;
    }
    let samples = if report::quick() { 20 } else { 200 };
    // A typical small process: stdio, a socketpair, a regular file.
    let _pair = std::os::unix::net::UnixStream::pair().unwrap();
    let _file = tempfile::tempfile().unwrap();
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let findings = selfdump::preflight().expect("preflight").len();
    let read_status = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        std::hint::black_box(status);
    };
    let preflight = || {
        std::hint::black_box(selfdump::preflight().unwrap());
    };
    let baseline = median_of(samples, read_status);
    let plain = median_of(samples, preflight);

    // The same process serving TCP: a listener and both ends of a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _server = listener.accept().unwrap();
    let tcp_findings = selfdump::preflight().expect("preflight").len();
    let with_tcp = median_of(samples, preflight);

    let mut report = Report::new();
    report.section(
        "Preflight",
        &format!(
            "`benches/preflight.rs`. `selfdump::preflight()` runs before every checkpoint. \
             Median of {samples} calls each, on this bench's own process ({fds} open fds, no \
             children), against one read of `/proc/self/status` (the least the preflight \
             must do), then with a TCP listener and a connection open."
        ),
    );
    table(
        &mut report,
        baseline,
        &[
            ("`preflight()`", findings, plain),
            (
                "`preflight()`, TCP listener and connection",
                tcp_findings,
                with_tcp,
            ),
        ],
    );
    report.target(
        &format!("a median under {TARGET:?}"),
        plain.max(with_tcp) < TARGET,
        &format!("at most {} µs", micros(plain.max(with_tcp))),
    );
    report.finish();
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// The table: the baseline, then each call with its findings and median.
fn table(report: &mut Report, baseline: Duration, calls: &[(&str, usize, Duration)]) {
    let ratio = |d: Duration| report::ratio(d.as_secs_f64() / baseline.as_secs_f64());
    let mut rows = vec![vec![
        "read `/proc/self/status` (baseline)".into(),
        "".into(),
        micros(baseline),
        "1.00".into(),
    ]];
    for (call, findings, median) in calls {
        rows.push(vec![
            call.to_string(),
            findings.to_string(),
            micros(*median),
            ratio(*median),
        ]);
    }
    report.table(
        &["call", "findings", "median µs", "ratio to the baseline"],
        &rows,
    );
}

fn median_of(samples: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
