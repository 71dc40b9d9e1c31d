//! Attacks on the service's capacity: a flood of idle connections, a client
//! that sends one byte a second, and more dumps at once than the per-uid
//! and global limits allow.

use crate::Ctx;
use crate::common::*;
use crate::support::*;
use selfdump::proto::{RefusalKind, Response};
use selfdump::server::Builder;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// 1000 idle connections from one uid. With the default limits (256 at
/// once, 64 per uid) the extras are refused at once as busy, another uid is
/// served meanwhile, and the admitted ones are cut off after the request
/// timeout. Without the per-uid limit, the global one refuses the extras
/// (of another uid than root: root is held only to its per-uid limit).
/// Then a normal checkpoint is served while the 1000 are still open.
pub fn idle_connections_1000(ctx: &mut Ctx) -> String {
    raise_nofile(8192);
    // "served meanwhile" means before the flood's admitted connections are
    // cut off: a request timeout far above what 1000 connects and one dump
    // take on a loaded machine, so that only a service held back by the
    // flood misses it
    let timeout = Duration::from_secs(10);
    let socket = ctx.service(move |b| allow(&[NOBODY])(b).request_timeout(timeout));
    let started = Instant::now();
    let mut conns = flood(&socket, 1000);
    // another user is not held back by the flood
    let images = dir_of(NOBODY);
    let mut other = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 2 --interval-ms 20"),
        Some(NOBODY),
    );
    let line = outcome(&other);
    let served_within = started.elapsed();
    assert!(!line.contains("Busy"), "{line}");
    assert!(
        line.starts_with("checkpoint continued") || line.contains("criu dump failed"),
        "{line}"
    );
    assert!(
        served_within < timeout,
        "served only after {served_within:?}"
    );
    assert!(other.wait().success());
    let (busy, cut) = answers(&mut conns);
    assert_eq!((busy, cut), (1000 - 64, 64));
    ctx.reached(format!(
        "per uid: 1000 connections held, another uid served meanwhile ({}), the extras \
         refused busy, the admitted cut at the request timeout",
        if line.starts_with("checkpoint continued") {
            "dumped"
        } else {
            "admitted; CRIU failed"
        }
    ));
    crate::assert_still_serves(&socket);
    drop(conns);

    // root is not held to the global limit: the flood comes from nobody
    let timeout = Duration::from_secs(3);
    let socket = ctx.service(move |b| b.request_timeout(timeout).max_connections_per_uid(1000));
    let mut conns = flood_as(&socket, 1000, NOBODY);
    let (global_busy, global_cut) = answers(&mut conns);
    assert_eq!((global_busy, global_cut), (1000 - 256, 256));
    ctx.reached("global: 1000 connections of another uid held, the extras refused busy");
    crate::assert_still_serves(&socket);
    drop(conns);
    format!(
        "per uid: {busy} refused as busy at once, {cut} cut off after 10s, another uid \
         served meanwhile within {served_within:.1?}; global: {global_busy} busy, {global_cut} cut \
         off after {timeout:?}"
    )
}

fn flood(socket: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .map(|_| UnixStream::connect(socket).unwrap())
        .collect()
}

/// `n` connections made as `uid`: from a thread of this process that
/// switches its own ids (and only its own; the kernel records the
/// connecting thread's credentials), then ends.
fn flood_as(socket: &Path, n: usize, uid: u32) -> Vec<UnixStream> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let (u, g) = (
            rustix::process::Uid::from_raw(uid),
            rustix::process::Gid::from_raw(uid),
        );
        rustix::thread::set_thread_res_gid(g, g, g).unwrap();
        rustix::thread::set_thread_res_uid(u, u, u).unwrap();
        flood(&socket, n)
    })
    .join()
    .unwrap()
}

/// Reads the answer on each connection: (refused as busy, cut off by the timeout).
fn answers(conns: &mut [UnixStream]) -> (usize, usize) {
    let (mut busy, mut cut) = (0, 0);
    for c in conns {
        match read_response(c, Duration::from_secs(30)) {
            Response::Refused(r) if r.kind == RefusalKind::Busy => busy += 1,
            Response::Refused(r) if r.message.contains("no complete request") => cut += 1,
            other => panic!("{other:?}"),
        }
    }
    (busy, cut)
}

fn raise_nofile(n: u64) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current.is_some_and(|c| c < n) {
        let max = limit.maximum.map_or(n, |m| m.max(n));
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(n.min(max)),
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
}

/// A client that sends its request one byte a second: cut off by the
/// request timeout.
pub fn one_byte_a_second(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b.request_timeout(Duration::from_secs(2)));
    let frame = checkpoint_frame();
    let mut stream = UnixStream::connect(&socket).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    for byte in &frame {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        // the answer arrives as soon as the service gives up
        let mut probe = [0u8; 1];
        let got = rustix::net::recv(
            &stream,
            &mut probe,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        );
        if matches!(got, Ok((n, _)) if n > 0) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (kind, message) = read_refusal(&mut stream);
    let took = started.elapsed();
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(
        message.contains("no complete request within 2s"),
        "{message}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    ctx.reached(format!(
        "{sent} bytes sent, then cut by the request timeout"
    ));
    format!("cut off after {sent} bytes, {took:.1?}: {message}")
}

/// The per-uid limit: with one dump per uid, a second dump of the same
/// uid is refused as busy while the first runs (CRIU is slowed down by a
/// wrapper); another uid is not held back by it.
pub fn dumps_per_uid_limit(ctx: &mut Ctx) -> String {
    let (socket, mut first, _first_dir) = first_dump_under_way(ctx, |b| b.max_dumps_per_uid(1));
    let (second_dir, nobody_dir) = (images_dir(), dir_of(NOBODY));
    let mut second = Program::start_on(&socket, second_dir.path(), &args(LONG_RUN), None);
    let mut other = Program::start_on(&socket, nobody_dir.path(), &args(LONG_RUN), Some(NOBODY));
    let second_line = outcome(&second);
    assert!(
        second_line.contains("refused (Busy)") && second_line.contains("per-uid"),
        "{second_line}"
    );
    ctx.reached("a second root dump while the first was under way: refused busy");
    let other_line = outcome(&other);
    assert!(!other_line.contains("Busy"), "{other_line}");
    ctx.reached("another uid's dump meanwhile: admitted");
    let first_line = outcome(&first);
    assert!(
        first_line.starts_with("checkpoint continued"),
        "{first_line}"
    );
    for p in [&mut first, &mut second, &mut other] {
        p.kill();
    }
    wait_no_criu();
    format!("second root dump refused: {}", short(&second_line))
}

/// The global limit: with one dump at a time, any other caller is refused
/// as busy while a dump runs.
pub fn global_dump_limit(ctx: &mut Ctx) -> String {
    let (socket, mut first, _first_dir) = first_dump_under_way(ctx, |b| b.max_dumps(1));
    let nobody_dir = dir_of(NOBODY);
    let mut other = Program::start_on(&socket, nobody_dir.path(), &args(LONG_RUN), Some(NOBODY));
    let other_line = outcome(&other);
    assert!(
        other_line.contains("refused (Busy)") && other_line.contains("dumps are already running"),
        "{other_line}"
    );
    ctx.reached("another uid's dump while one was under way: refused busy");
    let first_line = outcome(&first);
    assert!(
        first_line.starts_with("checkpoint continued"),
        "{first_line}"
    );
    for p in [&mut first, &mut other] {
        p.kill();
    }
    wait_no_criu();
    format!(
        "other uid refused while one dump ran: {}",
        short(&other_line)
    )
}

/// The counter's arguments for a run that outlasts the slowed-down dump.
const LONG_RUN: &str = "--at 1 --until 60 --interval-ms 50";

/// Starts a service with the extra `limit`, nobody allowed and a slow CRIU,
/// and a root caller whose dump is under way on it (for 2 s).
fn first_dump_under_way(
    ctx: &mut Ctx,
    limit: impl FnOnce(Builder) -> Builder,
) -> (PathBuf, Program, tempfile::TempDir) {
    let (wrap, slow) = slow_criu(2);
    // no worker started ahead: the wrapper's wait must fall in the dump
    let socket = ctx.service_cold(move |b| limit(allow(&[NOBODY])(b)).criu(slow));
    ctx.keep.push(Box::new(wrap));
    let first_dir = images_dir();
    let first = Program::start_on(&socket, first_dir.path(), &args(LONG_RUN), None);
    first.wait_for("count 1", |l| l == "count 1");
    wait_admitted(first_dir.path()); // its dump is under way
    (socket, first, first_dir)
}
