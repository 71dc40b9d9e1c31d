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

use selfdump::proto::{self, DumpOptions, HEADER_LEN, Request};
use selfdump::server::Server;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

const ROUND: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 3;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("protocol: bench");
        return;
    }
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

    println!("protocol: {ROUNDS} rounds of {ROUND:?} per setting (median)");
    println!(
        "  each request: connect, send a frame with one fd (SCM_RIGHTS), read the answer, close"
    );
    println!(
        "  service request: a checkpoint whose fd is not a directory: every check runs, then the"
    );
    println!("  refusal at the directory check; no dump (the only shortcut)");
    println!(
        "  {:>7} {:>14} {:>14} {:>7}",
        "clients", "echo req/s", "service req/s", "ratio"
    );
    let not_a_dir = &not_a_dir;
    for clients in [1usize, 2, 4] {
        let mut echo_rates = Vec::new();
        let mut service_rates = Vec::new();
        for _ in 0..ROUNDS {
            echo_rates.push(rate(clients, || {
                drop(round_trip(&echo_socket, &request, not_a_dir.as_fd()))
            }));
            service_rates.push(rate(clients, || {
                drop(round_trip(&service_socket, &request, not_a_dir.as_fd()))
            }));
        }
        let echo = median(&mut echo_rates);
        let service = median(&mut service_rates);
        println!(
            "  {clients:>7} {echo:>14.0} {service:>14.0} {:>7.2}",
            echo / service
        );
    }
    println!(
        "  ratio = echo rate / service rate (time per request, service over echo); targets: ratio <= 3, >= 20000 req/s"
    );
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

/// Requests per second with `clients` threads each running `request` in a loop.
fn rate(clients: usize, request: impl Fn() + Sync) -> f64 {
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0u64;
                    while started.elapsed() < ROUND {
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
