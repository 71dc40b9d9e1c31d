//! What each fuzz target checks, for any input bytes: the parsers of
//! untrusted bytes never panic, abort, overflow the stack or allocate
//! what the input merely claims, and what they accept means what it says.
//! Shared by the fuzz targets (`fuzz_targets/*.rs`) and by the main crate's
//! `tests/fuzz_inputs.rs`, which runs every seed and every input a fuzzer
//! once crashed on (`fuzz/regressions/<target>/`) through the same checks.
//!
//! Only selfdump's public API and std: both crates include this file.
#![allow(dead_code)]

use selfdump::proto::{HEADER_LEN, Header, PROTOCOL_VERSION, Request, Response, decode_body};
use selfdump::server::images::entries;
use selfdump::server::internals::rpc::{CoreEntry, PstreeEntry, StatsEntry};
use selfdump::server::manifest::{Key, MANIFEST_FILE, Manifest};
use selfdump::server::store::format::{self as store_format, MAX_CHUNK};

/// A check of one target: panics only on a bug.
pub type Check = fn(&[u8]);

/// The targets, by name: what `scripts/fuzz.sh` builds and runs.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_decoder", frame),
    ("manifest", manifest),
    ("image_entries", image_entries),
    ("inspect_dir", inspect_dir),
    ("store_object", store_object),
];

/// A frame from a peer: the header, then the body for both message types,
/// under the header as sent and under one that passes (our version, the
/// body's real length), so the MessagePack decoder sees every input.
pub fn frame(data: &[u8]) {
    let Some((head, body)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    if let Ok(header) = Header::parse(head) {
        let _ = decode_body::<Request>(header, body);
        let _ = decode_body::<Response>(header, body);
    }
    if let Ok(body_len) = u32::try_from(body.len()) {
        for version in [PROTOCOL_VERSION, u16::from_be_bytes([head[4], head[5]])] {
            let header = Header { version, body_len };
            let _ = decode_body::<Request>(header, body);
            let _ = decode_body::<Response>(header, body);
        }
    }
}

fn key() -> &'static Key {
    static KEY: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Key::generate().expect("a random key"))
}

/// A manifest file (`selfdump-manifest`, in a directory its owner wrote,
/// or fetched from a store): parsed without and with the key; one that
/// parses, signed again with the key (which names the key as its signer),
/// verifies as the same manifest.
pub fn manifest(data: &[u8]) {
    let _ = Manifest::verify(data, key());
    let Ok((parsed, ..)) = Manifest::parse_unverified(data) else {
        return;
    };
    let signed = parsed.sign(key());
    let again = Manifest::verify(&signed, key()).expect("a manifest signed here verifies");
    let named = Manifest {
        key_id: key().id(),
        ..parsed.clone()
    };
    assert_eq!(again, named, "signing and parsing changed the manifest");
    for file in &parsed.files {
        let _ = parsed.file(&file.name);
    }
}

/// A CRIU image file (what `inspect` and a restore read from a directory
/// anyone may have written): its entries, each decoded as the messages
/// selfdump reads.
pub fn image_entries(data: &[u8]) {
    use prost::Message;
    for entry in entries(data) {
        assert!(entry.len() <= data.len(), "an entry longer than its image");
        let _ = PstreeEntry::decode(entry);
        let _ = CoreEntry::decode(entry);
        let _ = StatsEntry::decode(entry);
    }
}

/// The names an images directory's files get in [`inspect_dir`]: CRIU's,
/// selfdump's manifest, and `core-N.img` for the `N` the input picks.
const NAMES: &[&str] = &[
    "pstree.img",
    MANIFEST_FILE,
    "stats-dump",
    "inventory.img",
    "pages-1.img",
    "pagemap-1.img",
    "dump.log",
];

/// A whole images directory, as `selfdump inspect` (root) reads it: the
/// input is a list of files, each `[name: u8][len: u16 le][bytes]` (names
/// past [`NAMES`] are `core-N.img`, N the next u16), written into a
/// directory of this process's that `inspect` then reads.
pub fn inspect_dir(data: &[u8]) {
    let dir = scratch_dir();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let mut rest = data;
    while let [name, l0, l1, tail @ ..] = rest {
        let (name, tail) = match NAMES.get(*name as usize) {
            Some(name) => (name.to_string(), tail),
            None => match tail {
                [n0, n1, tail @ ..] => {
                    (format!("core-{}.img", u16::from_le_bytes([*n0, *n1])), tail)
                }
                _ => return,
            },
        };
        let len = (u16::from_le_bytes([*l0, *l1]) as usize).min(tail.len());
        std::fs::write(dir.join(name), &tail[..len]).unwrap();
        rest = &tail[len..];
    }
    if let Ok(report) = selfdump::server::inspect::inspect(&dir, Some(key())) {
        assert!(
            report.files.iter().all(|f| f.size <= data.len() as u64),
            "a file larger than the input: {report:?}"
        );
    }
}

/// This thread's directory for [`inspect_dir`], on a tmpfs when there is
/// one; [`remove_scratch_dir`] removes it (`scripts/fuzz.sh` does, by
/// the fuzzing process's pid, once it exited).
fn scratch_dir() -> std::path::PathBuf {
    thread_local! {
        static DIR: std::path::PathBuf = {
            let base = match std::path::Path::new("/dev/shm").is_dir() {
                true => std::path::PathBuf::from("/dev/shm"),
                false => std::env::temp_dir(),
            };
            let thread = format!("{:?}", std::thread::current().id());
            let dir = base.join(format!(
                "selfdump-fuzz-{}-{}",
                std::process::id(),
                thread.trim_start_matches("ThreadId(").trim_end_matches(')')
            ));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
    }
    DIR.with(|d| d.clone())
}

/// Removes this thread's directory of [`inspect_dir`].
pub fn remove_scratch_dir() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}

/// A checkpoint object fetched from a store (`checkpoints/<id>`), split
/// under its own hash so that the parser sees every input (an object under
/// any other name is refused before it is parsed); its index then checked
/// against its manifest when that parses. An index that passes names only
/// plain files, the manifest's, each made of chunks of 1 to `MAX_CHUNK`
/// bytes named by a hash and adding up to its size: nothing is fetched or
/// allocated for what the object merely claims.
pub fn store_object(data: &[u8]) {
    let id = store_format::hex(blake3::hash(data).as_bytes());
    let wrong = store_format::hex(blake3::hash(b"another object").as_bytes());
    assert!(store_format::decode(&wrong, data).is_err() || wrong == id);
    let Ok((signed, files)) = store_format::decode(&id, data) else {
        return;
    };
    let Ok((manifest, ..)) = Manifest::parse_unverified(signed) else {
        return;
    };
    if store_format::validate(&id, &manifest, &files).is_err() {
        return;
    }
    for (stored, listed) in files.iter().zip(&manifest.files) {
        assert_eq!(stored.name, listed.name);
        assert!(!stored.name.contains('/') && stored.name != ".." && stored.name != ".");
        let mut total = 0u64;
        for chunk in &stored.chunks {
            assert!(store_format::is_hash(&chunk.hash), "{}", chunk.hash);
            assert!(chunk.len > 0 && chunk.len as usize <= MAX_CHUNK);
            total += u64::from(chunk.len);
        }
        assert_eq!(total, stored.size);
    }
}
