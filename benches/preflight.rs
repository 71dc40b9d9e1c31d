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

use std::time::{Duration, Instant};

/// Timed calls of each, after a few warm-up calls.
const SAMPLES: usize = 200;
const WARMUP: usize = 5;
/// The target for the preflight's median.
const TARGET: Duration = Duration::from_millis(2);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("preflight: bench");
        return;
    }
    // A typical small process: stdio, a socketpair, a regular file.
    let _pair = std::os::unix::net::UnixStream::pair().unwrap();
    let _file = tempfile::tempfile().unwrap();
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let findings = selfdump::preflight().expect("preflight");

    let baseline = median_of(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        std::hint::black_box(status);
    });
    let preflight = median_of(|| {
        std::hint::black_box(selfdump::preflight().unwrap());
    });

    println!(
        "preflight: median of {SAMPLES} calls each, this process ({fds} open fds, no children)"
    );
    println!("  findings: {}", findings.len());
    println!(
        "  {:<34} {:>12}",
        "baseline (read /proc/self/status)",
        fmt(baseline)
    );
    println!("  {:<34} {:>12}", "selfdump::preflight()", fmt(preflight));
    println!(
        "  ratio preflight / baseline: {:.1}",
        preflight.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  target: preflight median under {TARGET:?}: {}",
        if preflight < TARGET { "yes" } else { "NO" }
    );

    // The same process serving TCP: a listener and both ends of a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _server = listener.accept().unwrap();
    let findings = selfdump::preflight().expect("preflight").len();
    let with_tcp = median_of(|| {
        std::hint::black_box(selfdump::preflight().unwrap());
    });
    println!("  with a TCP listener and a connection ({findings} findings):");
    println!("  {:<34} {:>12}", "selfdump::preflight()", fmt(with_tcp));
    println!(
        "  ratio preflight / baseline: {:.1}; under {TARGET:?}: {}",
        with_tcp.as_secs_f64() / baseline.as_secs_f64(),
        if with_tcp < TARGET { "yes" } else { "NO" }
    );
}

fn median_of(mut f: impl FnMut()) -> Duration {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
