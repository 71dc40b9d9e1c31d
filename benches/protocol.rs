//! Protocol overhead: one request through the real server path (accept,
//! peer identity from SO_PEERPIDFD/SO_PEERCRED, frame decode, caller
//! checks, policy, reply), against a bare unix-socket echo round trip, both
//! measured in this run on the same machine.
//!
//! The request is a checkpoint whose "images directory" fd is a regular
//! file: the service walks every check a real request gets and refuses it
//! at the directory check, so no dump runs. That refusal is the only
//! shortcut, and it is named as such in the output.
//!
//! Run: `cargo bench --features server --bench protocol` (as root, like the service).

#[path = "support/report.rs"]
mod report;

use report::{Report, quick, ratio};
use selfdump::proto::{self, DumpOptions, HEADER_LEN, Request};
use selfdump::server::Server;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The targets: the service's time per request at most 3 echo times, and
/// at least 20,000 requests per second.
const TARGET_RATIO: f64 = 3.0;
const TARGET_RATE: f64 = 20_000.0;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("protocol: bench");
        return;
    }
    let (round, rounds) = match quick() {
        true => (Duration::from_millis(200), 1),
        false => (Duration::from_millis(1500), 3),
    };
    let dir = tempfile::tempdir().unwrap();
    let service_socket = dir.path().join("selfdump.sock");
    let echo_socket = dir.path().join("echo.sock");

    let server = Server::builder().bind(&service_socket).expect("bind");
    std::thread::spawn(move || async_io::block_on(server.run()));
    let echo = UnixListener::bind(&echo_socket).unwrap();
    std::thread::spawn(move || echo_server(echo));

    let request = proto::encode_frame(&Request::Checkpoint(DumpOptions::default()));
    let not_a_dir = tempfile::tempfile().unwrap();
    // sanity: the service really answers with the refusal
    let answer = round_trip(&service_socket, &request, not_a_dir.as_fd());
    let header = proto::Header::parse(answer[..HEADER_LEN].try_into().unwrap()).unwrap();
    let response: proto::Response = proto::decode_body(header, &answer[HEADER_LEN..]).unwrap();
    assert!(
        matches!(response, proto::Response::Refused(_)),
        "{response:?}"
    );

    let mut report = Report::new();
    report.section(
        "Protocol: a request through the real server path",
        &format!(
            "`benches/protocol.rs`. One request = connect, send a frame with one fd \
             (`SCM_RIGHTS`), read the answer, close. The service request is a checkpoint \
             whose fd is not a directory: it goes through accept, \
             `SO_PEERPIDFD`/`SO_PEERCRED`, frame decode, the caller's `/proc` checks, the \
             policy and the directory check, and is refused there, so no dump runs (the \
             only shortcut). The baseline is a bare unix-socket echo of the same frame with \
             the same fd. Echo and service in turns, {rounds} round(s) of {round:?} each per \
             setting, median; ratio = service time per request / echo time."
        ),
    );
    let mut rows = Vec::new();
    let (mut worst_ratio, mut best_rate) = (0f64, 0f64);
    for clients in [1usize, 2, 4] {
        let (request, not_a_dir) = (&request, &not_a_dir);
        let to = |socket: &Path| drop(round_trip(socket, request, not_a_dir.as_fd()));
        let (echo, service) = in_turns(clients, round, rounds, &|| to(&echo_socket), &|| {
            to(&service_socket)
        });
        worst_ratio = worst_ratio.max(echo / service);
        best_rate = best_rate.max(service);
        rows.push(vec![
            clients.to_string(),
            format!("{echo:.0}"),
            format!("{service:.0}"),
            ratio(echo / service),
        ]);
    }
    report.table(&["clients", "echo req/s", "service req/s", "ratio"], &rows);
    report.target(
        &format!("ratio at most {TARGET_RATIO}"),
        worst_ratio <= TARGET_RATIO,
        &format!("worst {}", ratio(worst_ratio)),
    );
    report.target(
        &format!("at least {TARGET_RATE:.0} req/s"),
        best_rate >= TARGET_RATE,
        &format!("best {best_rate:.0} req/s"),
    );
    report.finish();
}

fn round_trip(socket: &Path, frame: &[u8], fd: BorrowedFd<'_>) -> Vec<u8> {
    let stream = UnixStream::connect(socket).unwrap();
    let async_stream = async_io::Async::new(stream).unwrap();
    async_io::block_on(proto::write_frame(&async_stream, frame, &[fd])).unwrap();
    let mut stream = async_stream.into_inner().unwrap();
    stream.set_nonblocking(false).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    answer
}

/// Reads one frame and sends the same bytes back, then closes.
fn echo_server(listener: UnixListener) {
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        let mut header = [0u8; HEADER_LEN];
        if stream.read_exact(&mut header).is_err() {
            continue;
        }
        let len = u32::from_be_bytes(header[6..10].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).is_err() {
            continue;
        }
        let _ = stream.write_all(&header);
        let _ = stream.write_all(&body);
    }
}

/// Median requests per second of `echo` and of `service`, `rounds` rounds
/// of each in turns.
fn in_turns(
    clients: usize,
    round: Duration,
    rounds: usize,
    echo: &(impl Fn() + Sync),
    service: &(impl Fn() + Sync),
) -> (f64, f64) {
    let (mut echo_rates, mut service_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        echo_rates.push(rate(clients, round, echo));
        service_rates.push(rate(clients, round, service));
    }
    (
        report::median(&mut echo_rates),
        report::median(&mut service_rates),
    )
}

/// Requests per second with `clients` threads each running `request` in a
/// loop for `round`.
fn rate(clients: usize, round: Duration, request: impl Fn() + Sync) -> f64 {
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0u64;
                    while started.elapsed() < round {
                        request();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}
