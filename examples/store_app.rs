//! The process the store benchmark checkpoints: it holds `--mib` MiB of
//! memory about as compressible as a program's (each 4 KiB page half
//! pseudo-random bytes, half zeros), and checkpoints itself into `--images`
//! each time a file `GO-N` appears (`--go GO`, N = 0, 1, ...), first
//! rewriting `--change` percent of its memory (a contiguous region, a
//! different one each time) for every checkpoint but the first. A restored
//! copy says so and waits to be killed. Run it with `selfdump run`.

use selfdump::{Options, Outcome, checkpoint};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mib: usize = value("--mib").map_or(64, |v| v.parse().expect("--mib"));
    let change: usize = value("--change").map_or(10, |v| v.parse().expect("--change"));
    let images = PathBuf::from(value("--images").expect("--images DIR"));
    let go = value("--go").expect("--go PREFIX");
    let socket = value("--socket");
    let mut memory = vec![0u8; mib << 20];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    fill(&mut memory, &mut seed);
    say(&format!("ready mib={mib}"));
    let region = memory.len() * change / 100;
    for n in 0.. {
        let trigger = format!("{go}-{n}");
        while !std::path::Path::new(&trigger).exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if n > 0 && region > 0 {
            let at = ((n - 1) * region) % (memory.len() - region + 1);
            fill(&mut memory[at..at + region], &mut seed);
        }
        let mut options = Options::new(&images).keep(1);
        if let Some(socket) = &socket {
            options = options.socket(socket);
        }
        match async_io::block_on(checkpoint(options)) {
            Ok(Outcome::Continued(r)) => say(&format!("checkpoint {n} bytes={}", r.bytes_written)),
            Ok(Outcome::Restored(_)) => {
                say("restored");
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                    std::hint::black_box(&memory);
                }
            }
            Err(e) => {
                say(&format!("checkpoint {n} error: {e}"));
                std::process::exit(1);
            }
        }
    }
}

/// Each 4 KiB page: 2 KiB of xorshift bytes, then 2 KiB of zeros.
fn fill(memory: &mut [u8], seed: &mut u64) {
    for page in memory.chunks_mut(4096) {
        let (random, zeros) = page.split_at_mut(page.len() / 2);
        for word in random.chunks_mut(8) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let bytes = seed.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        zeros.fill(0);
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
