//! Every way of tampering with a pushed checkpoint the issue lists, each
//! refused before CRIU restores anything, naming the object, with the
//! cache holding only chunks that hash to their names; then, the store
//! repaired, the same checkpoint restores (so each refusal was the
//! tampering's).

use crate::common::*;
use crate::support::*;
use selfdump::server::manifest::{Key, Manifest};
use selfdump::server::store::{format, raw};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// `selfdump restore --copies 1 URL` on `host` must fail, its output
/// holding every one of `expect`, with no CRIU restore started and only
/// verified chunks in the cache.
fn refused(host: &Host, url: &str, expect: &[&str]) {
    let out = host.selfdump(&["restore", "--copies", "1", url]);
    let shown = text(&out);
    assert!(
        !out.status.success(),
        "restored a tampered checkpoint: {shown}"
    );
    for e in expect {
        assert!(shown.contains(e), "expected {e:?} in: {shown}");
    }
    assert!(
        host.restores_run().is_empty(),
        "CRIU ran: {:?}",
        host.restores_run()
    );
    host.cached_chunks(); // each hashes to its name, no temporary file
}

/// Puts a checkpoint object made of `signed` and `files` in the store; its URL.
fn put_object(root: &str, signed: &[u8], files: &[format::StoredFile]) -> String {
    let (object, id) = format::encode(signed, files);
    raw::put(root, &format!("checkpoints/{id}"), object).unwrap();
    format!("{root}/checkpoints/{id}")
}

#[test]
fn tampering_is_refused_before_criu_runs_naming_the_object() {
    let service = Service::start();
    let first = first_key();
    let other_signer = Key::generate().unwrap();
    for root in roots("tamper") {
        let worker = Worker::start(&service, 8);
        let url = push(worker.dir(), &root.url);
        let id = url.rsplit('/').next().unwrap().to_owned();
        let object = raw::get(&root.url, &format!("checkpoints/{id}")).unwrap();
        let (signed, files) = format::decode(&id, &object).unwrap();
        let (signed, files) = (signed.to_vec(), files);
        let host = Host::trusting(&[first.public(), other_signer.public()]);

        // signed by a key this host does not trust
        let stranger = Host::trusting(&[]);
        refused(
            &stranger,
            &url,
            &[&format!("key {} is not trusted", first.id())],
        );

        // the manifest swapped for another checkpoint's
        let (program_images, _program) = checkpoint_and_kill(&service, 1);
        let other = push(program_images.path(), &root.url);
        let other_id = other.rsplit('/').next().unwrap();
        let other_object = raw::get(&root.url, &format!("checkpoints/{other_id}")).unwrap();
        raw::put(&root.url, &format!("checkpoints/{id}"), other_object).unwrap();
        refused(
            &host,
            &url,
            &[&format!("checkpoint {id}"), "not the checkpoint it names"],
        );
        raw::put(&root.url, &format!("checkpoints/{id}"), object.clone()).unwrap();

        crafted_objects(&host, &root.url, &signed, &files, &other_signer);
        let chunk = crate::biggest_chunk(&url);
        chunk_cases(&host, &root.url, &url, &files, &chunk);
        if root.kind == "s3" {
            unreachable_mid_restore(&url, &chunk);
        }

        // repaired: the same checkpoint restores
        let out = host.selfdump(&["restore", "--copies", "1", &url]);
        assert!(out.status.success(), "{}: {}", root.kind, text(&out));
        kill_and_reap(pids(&out)[0]);
    }
}

/// Checkpoint objects made from the pushed one: an index naming a file or
/// chunk with `/` or `..`, or of an absurd size; a manifest signed by a
/// trusted key that needs a CPU feature this host lacks.
fn crafted_objects(
    host: &Host,
    root: &str,
    signed: &[u8],
    files: &[format::StoredFile],
    other_signer: &Key,
) {
    // an index naming a file or chunk with `/` or `..`, or an absurd size
    for (change, expect) in [
        (0, "which is not a plain file name"),
        (1, "which is not a plain file name"),
        (2, "which is not a chunk's hash"),
        (3, "a chunk holds 1 to"),
    ] {
        let mut crafted = files.to_vec();
        let pages = crafted
            .iter_mut()
            .find(|f| f.name.starts_with("pages-"))
            .unwrap();
        match change {
            0 => pages.name = "../pages-1.img".into(),
            1 => pages.name = "sub/pages-1.img".into(),
            2 => pages.chunks[0].hash = "../../etc/shadow".into(),
            _ => pages.chunks[0].len = u32::MAX,
        }
        let crafted_url = put_object(root, signed, &crafted);
        refused(host, &crafted_url, &["checkpoint ", expect]);
    }

    // signed by a trusted key, but taken on a host with a CPU feature
    // this one lacks
    let (mut manifest, ..) = Manifest::parse_unverified(signed).unwrap();
    manifest
        .meta
        .needs
        .as_mut()
        .unwrap()
        .cpu_flags
        .push("selfdump_test_feature".into());
    let elsewhere = put_object(root, &manifest.sign(other_signer), files);
    refused(
        host,
        &elsewhere,
        &["this host's CPU lacks selfdump_test_feature"],
    );
}

/// A flipped byte in a chunk; a chunk overwritten with another; a chunk
/// missing. The store is repaired after.
fn chunk_cases(host: &Host, root: &str, url: &str, files: &[format::StoredFile], chunk: &str) {
    let name = format!("chunks/{chunk}");
    let original = raw::get(root, &name).unwrap();
    raw::put(root, &name, flipped_byte(&original)).unwrap();
    refused(host, url, &[&name, "damaged or overwritten"]);
    // overwritten with other bytes of the same length, well compressed:
    // only the chunk's hash tells
    let mut other = zstd::bulk::decompress(&original, 16 << 20).unwrap();
    other[0] ^= 0xff;
    raw::put(root, &name, zstd::bulk::compress(&other, 1).unwrap()).unwrap();
    refused(host, url, &[&name, "does not hash to its name"]);
    // overwritten with another chunk
    let another = files
        .iter()
        .flat_map(|f| &f.chunks)
        .find(|c| c.hash != chunk)
        .unwrap();
    let replacement = raw::get(root, &format!("chunks/{}", another.hash)).unwrap();
    raw::put(root, &name, replacement).unwrap();
    refused(host, url, &[&name, "damaged or overwritten"]);
    raw::delete(root, &name).unwrap();
    refused(host, url, &[&name, "is missing from the store"]);
    raw::put(root, &name, original).unwrap();
}

/// `compressed` (a chunk as stored) with one bit flipped, from the middle
/// on, where the flip changes what it decompresses to or makes it
/// undecodable: some bits of a zstd frame may flip without changing its
/// output (a match whose other offset copies the same bytes), and such a
/// chunk still holds the signed bytes.
fn flipped_byte(compressed: &[u8]) -> Vec<u8> {
    let content = zstd::bulk::decompress(compressed, 16 << 20).unwrap();
    let middle = compressed.len() / 2;
    (middle..compressed.len())
        .chain(0..middle)
        .map(|at| {
            let mut flipped = compressed.to_vec();
            flipped[at] ^= 1;
            flipped
        })
        .find(|flipped| zstd::bulk::decompress(flipped, 16 << 20).ok().as_ref() != Some(&content))
        .expect("a bit whose flip changes the chunk")
}

/// The store stops answering after the checkpoint object was fetched and
/// verified: a clear error naming the object, nothing restored, the cache
/// without the chunks that were not fetched.
fn unreachable_mid_restore(url: &str, chunk: &str) {
    let host = Host::trusting(&[first_key().public()]);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let upstream = endpoint.trim_start_matches("http://").to_owned();
    let proxy = Proxy::start(&upstream);
    let holds = tempfile::tempdir().unwrap();
    std::fs::write(holds.path().join("hold-store-verified"), "").unwrap();
    let held = holds.path().join("held-store-verified");
    let proxied = proxy.endpoint();
    let out = std::thread::scope(|scope| {
        let child = scope.spawn(|| {
            host.selfdump_with(&["restore", "--copies", "1", url], |cmd| {
                cmd.env("AWS_ENDPOINT_URL", &proxied)
                    .env("SELFDUMP_TEST_HOLD_DIR", holds.path());
            })
        });
        assert!(
            poll_for(std::time::Duration::from_secs(60), || held.exists()),
            "the restore never reached its hold after the checkpoint was verified"
        );
        proxy.stop();
        std::fs::remove_file(holds.path().join("hold-store-verified")).unwrap();
        child.join().unwrap()
    });
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("the store failed on") && shown.contains("/chunks/"),
        "{shown}"
    );
    assert!(
        host.restores_run().is_empty(),
        "CRIU ran: {:?}",
        host.restores_run()
    );
    let cached = host.cached_chunks(); // each verified, no temporary file
    assert!(
        !cached.contains(&chunk.to_owned()),
        "a chunk fetched after the cut: {cached:?}"
    );
}

/// A TCP proxy to the store that can be cut: every connection through it
/// closed, and no new one accepted.
struct Proxy {
    listener: Mutex<Option<TcpListener>>,
    addr: std::net::SocketAddr,
    open: Arc<Mutex<Option<Vec<TcpStream>>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = Arc::new(Mutex::new(Some(Vec::new())));
        let (accept, shared, upstream) = (
            listener.try_clone().unwrap(),
            open.clone(),
            upstream.to_owned(),
        );
        std::thread::spawn(move || {
            for client in accept.incoming() {
                let Ok(client) = client else { return };
                let mut guard = shared.lock().unwrap();
                let Some(conns) = guard.as_mut() else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        let addr = listener.local_addr().unwrap();
        Self {
            listener: Mutex::new(Some(listener)),
            addr,
            open,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection, then the listener: the store is gone.
    fn stop(&self) {
        for conn in self.open.lock().unwrap().take().unwrap_or_default() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        // wake the accepting thread, which then sees it is stopped and
        // drops its copy of the listener
        drop(TcpStream::connect(self.addr));
        self.listener.lock().unwrap().take();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
