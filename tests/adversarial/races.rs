//! Attacks on the filesystem rule: a caller that owns the images directory
//! renames, exchanges and replaces what the service makes there while it
//! works, and a sticky directory whose other entries are not the caller's.
//! The caller is uid nobody; the victim is a directory only root can write
//! (`support::victim_dir`), which `after_attack` checks stays empty.

use crate::Ctx;
use crate::common::*;
use crate::support::*;
use rustix::fs::RenameFlags;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A directory of nobody's on a tmpfs (`/dev/shm`, as every user has),
/// where renames are fastest, inside a root-owned 0755 base.
fn nobody_dir_on_tmpfs() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::Builder::new()
        .prefix("selfdump-race")
        .tempdir_in(shm_dir())
        .unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let images = base.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::os::unix::fs::chown(&images, Some(NOBODY), Some(NOBODY)).unwrap();
    (base, images)
}

/// A directory of nobody's holding, at every name CRIU or the service
/// writes, a symlink into the victim directory.
fn bait(images: &Path, name: &str) -> PathBuf {
    let bait = images.join(name);
    std::fs::create_dir(&bait).unwrap();
    for file in [
        "dump.log",
        "inventory.img",
        "pstree.img",
        "stats-dump",
        "selfdump-manifest",
    ] {
        std::os::unix::fs::symlink(victim_dir().join(file), bait.join(file)).unwrap();
        std::os::unix::fs::lchown(bait.join(file), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::os::unix::fs::chown(&bait, Some(NOBODY), Some(NOBODY)).unwrap();
    bait
}

/// Runs `work` on a thread whose filesystem ids are nobody's, as the
/// attacker's own process would be.
fn as_nobody<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    as_nobody_niced(0, work)
}

/// [`as_nobody`], at the scheduling priority `nice` (set while the thread
/// may still raise it).
fn as_nobody_niced<T: Send + 'static>(
    nice: i32,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        if nice != 0 {
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice).unwrap();
        }
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(NOBODY));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(NOBODY));
        let mut caps = rustix::thread::capabilities(None).unwrap();
        caps.effective = rustix::thread::CapabilitySet::empty();
        rustix::thread::set_capabilities(None, caps).unwrap();
        work()
    })
}

/// Every `.selfdump-*` entry created in the caller's directory (inotify
/// tells the attacker at once) is exchanged (`RENAME_EXCHANGE`) with a bait directory of the caller's: the
/// finding was that the service created its staging directory by name,
/// opened it by name, and CRIU then wrote its log, as root, through a
/// symlink of the bait's. Checkpoints alternate between two swappers: a
/// storm (thousands of exchanges back and forth for as long as the name is
/// there: it hits the moment between the service's mkdir and open) and one
/// late exchange at a random moment (CRIU writing, the cleanup), which
/// leaves the bait under the name. For 6 s, or 30 s with
/// `SELFDUMP_LONG_RACES=1` ([`race_for`]).
pub fn staging_swap_race(ctx: &mut Ctx) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let (base, images) = nobody_dir_on_tmpfs();
    let stop = Arc::new(AtomicBool::new(false));
    let storm = Arc::new(AtomicBool::new(true));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (images, stop, storm, swaps) =
            (images.clone(), stop.clone(), storm.clone(), swaps.clone());
        // at the highest priority: it must race even on a loaded machine,
        // where at the default one it once hardly swapped at all (a load
        // of 9 on 2 cores); it waits for events rather than spinning
        as_nobody_niced(-20, move || {
            use rustix::fs::inotify;
            let dir = std::fs::File::open(&images).unwrap();
            let watch =
                inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
                    .unwrap();
            inotify::add_watch(&watch, &images, inotify::WatchFlags::CREATE).unwrap();
            let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
            let mut events = inotify::Reader::new(&watch, &mut buf);
            let mut round = 0;
            let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut bait_name = format!("bait-{round}");
            bait(&images, &bait_name);
            while !stop.load(Ordering::Relaxed) {
                let name = match events.next() {
                    Ok(event) => match event.file_name() {
                        Some(n) if n.to_bytes().starts_with(b".selfdump-") => {
                            n.to_string_lossy().into_owned()
                        }
                        _ => continue,
                    },
                    Err(_) => {
                        // (waits for the next event rather than spinning:
                        // at its priority it would take a core from the
                        // service; the timeout lets it see `stop`)
                        let mut ready = [rustix::event::PollFd::new(
                            &watch,
                            rustix::event::PollFlags::IN,
                        )];
                        let tick = rustix::event::Timespec {
                            tv_sec: 0,
                            tv_nsec: 50_000_000,
                        };
                        let _ = rustix::event::poll(&mut ready, Some(&tick));
                        continue;
                    }
                };
                let limit = if storm.load(Ordering::Relaxed) {
                    20_000
                } else {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    std::thread::sleep(Duration::from_micros(rng % 2000));
                    1
                };
                let mut flips = 0;
                while flips < limit
                    && rustix::fs::renameat_with(
                        &dir,
                        name.as_str(),
                        &dir,
                        bait_name.as_str(),
                        RenameFlags::EXCHANGE,
                    )
                    .is_ok()
                {
                    flips += 1;
                }
                swaps.fetch_add(flips, Ordering::Relaxed);
                round += 1;
                bait_name = format!("bait-{round}");
                bait(&images, &bait_name);
            }
        })
    };
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    // for the time the race is boxed to, and on (a loaded machine makes
    // few checkpoints a second) until it has swapped a thousand times and
    // a dump was published meanwhile, 60 s at most
    let (boxed, most) = (
        race_for(Duration::from_secs(6), Duration::from_secs(30)),
        Duration::from_secs(60),
    );
    let ran = |outcomes: &std::collections::BTreeMap<String, u32>| {
        swaps.load(Ordering::Relaxed) > 1000 && outcomes.keys().any(|k| k.ends_with(": dumped"))
    };
    while started.elapsed() < boxed || (!ran(&outcomes) && started.elapsed() < most) {
        storm.store(!storm.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut program = Program::start_on(
            &socket,
            &images,
            &args("--at 1 --until 2 --interval-ms 10"),
            Some(NOBODY),
        );
        let line = outcome(&program);
        program.wait();
        if line.contains("latest is not a symlink") {
            // a late swap put a bait directory under the name `latest`
            // (the caller's own doing, in its own directory): the service
            // refuses the directory from then on, so the caller mends it
            let latest = images.join("latest");
            as_nobody(move || {
                let mended =
                    std::fs::remove_dir_all(&latest).or_else(|_| std::fs::remove_file(&latest));
                mended.unwrap_or_else(|e| panic!("cannot remove {}: {e}", latest.display()))
            })
            .join()
            .unwrap();
        }
        let kind = format!(
            "{}: {}",
            if storm.load(Ordering::Relaxed) {
                "storm"
            } else {
                "late"
            },
            classify(&line)
        );
        *outcomes.entry(kind).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    assert!(
        swaps > 1000,
        "the race hardly ran: {swaps} swaps in {:.1?}; {outcomes:?}",
        started.elapsed()
    );
    // the attack reached its target: dumps (by a CRIU running as the
    // caller) got as far as publishing while the swapper ran
    let dumped: u32 = outcomes
        .iter()
        .filter(|(kind, _)| kind.ends_with(": dumped"))
        .map(|(_, n)| n)
        .sum();
    assert!(dumped > 0, "no dump got as far as publishing: {outcomes:?}");
    ctx.reached(format!(
        "{dumped} of {} checkpoints published while the swapper exchanged names ({swaps} swaps)",
        outcomes.values().sum::<u32>()
    ));
    assert_nothing_of_roots(&images);
    ctx.keep.push(Box::new(base));
    format!(
        "{swaps} swaps over {} checkpoints: {outcomes:?}; no root write through a swapped name",
        outcomes.values().sum::<u32>()
    )
}

fn classify(line: &str) -> String {
    if line.starts_with("checkpoint continued") {
        return "dumped".into();
    }
    for (needle, kind) in [
        (
            "latest is not a symlink",
            "latest swapped for a bait (mended)",
        ),
        ("was replaced", "swap detected"),
        ("was filled", "swap detected"),
    ] {
        if line.contains(needle) {
            return kind.into();
        }
    }
    short(line)
}

/// Nothing under `dir` (recursively, symlinks not followed) is root's.
pub fn assert_nothing_of_roots(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            assert_ne!(
                meta.uid(),
                0,
                "{} is root's, in the caller's directory",
                entry.path().display()
            );
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
}

/// A sticky, world-writable directory like `/tmp` (root's, 1777) holding a
/// root-owned `dump.log` and `pstree.img`, and, once the dump is admitted,
/// a root-owned `latest`: the caller itself may not remove or replace
/// them, and root (which the sticky bit does not bind) must not do it for
/// the caller. The dump reaches the commit (CRIU is slowed, so root's
/// `latest` is surely there before it), whose switch of `latest`, done as
/// the caller, fails; root's files stay as they were.
pub fn sticky_directory_with_roots_files(ctx: &mut Ctx) -> String {
    let (wrapper, slow) = slow_criu(1);
    ctx.keep.push(Box::new(wrapper));
    let socket = ctx.service_cold(|b| allow(&[NOBODY])(b).criu(slow));
    let images = images_dir();
    std::fs::set_permissions(
        images.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let roots = ["dump.log", "pstree.img", "latest"];
    for name in &roots[..2] {
        std::fs::write(images.path().join(name), format!("root's {name}\n")).unwrap();
    }
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 2 --interval-ms 20"),
        Some(NOBODY),
    );
    // admitted (its staging directory exists), CRIU not started yet
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(2),
        || match staging_dirs(images.path()).is_empty() {
            true => Err("no staging directory appeared".into()),
            false => Ok(()),
        },
    );
    std::os::unix::fs::symlink("root's latest", images.path().join("latest")).unwrap();
    let before: Vec<_> = roots
        .iter()
        .map(|name| {
            let meta = std::fs::symlink_metadata(images.path().join(name)).unwrap();
            (meta.uid(), meta.ino())
        })
        .collect();
    let line = outcome(&program);
    assert!(program.wait().success());
    // CRIU (running as the caller) dumped; the commit then found root's
    // latest, which the caller may not replace
    assert!(
        line.contains("committing the images failed")
            && line.contains("cannot switch latest")
            && line.contains("uid 65534 may not replace it"),
        "{line}"
    );
    ctx.reached("the caller's CRIU dumped; the commit met root's latest and stopped there");
    for (name, before) in roots.iter().zip(before) {
        let path = images.path().join(name);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.ino()),
            before,
            "root's {name} was replaced"
        );
    }
    for name in &roots[..2] {
        assert_eq!(read(&images.path().join(name)), format!("root's {name}\n"));
    }
    let target = std::fs::read_link(images.path().join("latest")).unwrap();
    assert_eq!(
        target,
        Path::new("root's latest"),
        "root's latest retargeted"
    );
    for (name, uid, _) in image_files(images.path()) {
        assert!(
            roots.contains(&name.as_str()) || uid == NOBODY,
            "{name} is uid {uid}'s"
        );
        assert!(!name.starts_with(".selfdump-"), "staging left: {name}");
        assert!(
            !name.starts_with("gen-"),
            "uncommitted generation left: {name}"
        );
    }
    format!(
        "reached the commit; root's files and latest kept; caller told: {}",
        short(&line)
    )
}

/// While CRIU starts (slowly), the caller moves the staging directory away
/// and leaves a symlink into the victim directory under its name: CRIU
/// writes through the fd, not the name; the cleanup removes nothing through
/// the symlink and leaves nothing of root's, where the staging directory
/// went included.
pub fn staging_moved_mid_dump(ctx: &mut Ctx) -> String {
    let (wrapper, slow) = slow_criu(2);
    ctx.keep.push(Box::new(wrapper));
    let socket = ctx.service_cold(|b| allow(&[NOBODY])(b).criu(slow));
    let (base, images) = nobody_dir_on_tmpfs();
    let mut program = Program::start_on(
        &socket,
        &images,
        &args("--at 1 --until 3 --interval-ms 20"),
        Some(NOBODY),
    );
    let mut staging = Vec::new();
    poll_until(Duration::from_secs(20), Duration::from_millis(2), || {
        staging = staging_dirs(&images);
        if staging.is_empty() {
            Err("no staging directory appeared".into())
        } else {
            Ok(())
        }
    });
    let name = staging[0].clone();
    // moved once the service is done with the name (it has started CRIU,
    // slowed by its wrapper): before that, a loaded machine let the move
    // fall in the making of the directory, which the service then refuses
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(2),
        || match own_children()
            .iter()
            .any(|(_, _, comm)| comm == "slow-criu")
        {
            true => Ok(()),
            false => Err("the service never started its (slow) CRIU".into()),
        },
    );
    let moved = images.join("moved");
    {
        let (images, name, moved) = (images.clone(), name.clone(), moved.clone());
        as_nobody(move || {
            std::fs::rename(images.join(&name), &moved).unwrap();
            std::os::unix::fs::symlink(victim_dir(), images.join(&name)).unwrap();
        })
        .join()
        .unwrap();
    }
    let line = outcome(&program);
    assert!(program.wait().success());
    // the dump went on through the fds and published into the caller's
    // directory, whatever the staging directory's name became
    assert!(line.starts_with("checkpoint continued"), "{line}");
    assert!(images.join("latest/pstree.img").exists());
    ctx.reached("the staging directory moved away mid-dump; the dump committed all the same");
    poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || match std::fs::symlink_metadata(&moved) {
            Ok(m) if m.uid() == 0 => Err(format!("{} is still root's", moved.display())),
            _ => Ok(()),
        },
    );
    assert!(
        std::fs::symlink_metadata(images.join(&name))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_nothing_of_roots(&images);
    ctx.keep.push(Box::new(base));
    format!(
        "moved staging left as the caller's; caller told: {}",
        short(&line)
    )
}

/// The owner of the images rewrites a page file through an fd it opened
/// before the restores, over and over, while the operator restores: each
/// restore is refused (the hash differs) or restores the signed bytes (the
/// copy's memory is intact), never the rewritten ones. The images are made
/// the caller's, as a non-root caller's are, while they stay root's
/// checkpoint (restored by root's CRIU), so the restore copies them before
/// hashing.
pub fn images_rewritten_while_restoring(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 100000 --interval-ms 20 --alloc-mb 8"),
        None,
    );
    let line = outcome(&program);
    assert!(line.starts_with("checkpoint continued"), "{line}");
    let pid = program.pid;
    program.kill();
    kill_and_reap(pid);
    // the generation and its files, as a non-root caller's are
    let generation = images.path().join("latest");
    std::os::unix::fs::chown(&generation, Some(NOBODY), Some(NOBODY)).unwrap();
    for (name, ..) in image_files(&generation) {
        std::os::unix::fs::chown(generation.join(name), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let pages = generation.join("pages-1.img");
    let bytes = std::fs::read(&pages).unwrap();
    let window = 1 << 20;
    let start = (0..bytes.len() - window)
        .step_by(4096)
        .find(|&at| bytes[at..at + window].iter().all(|&b| b == 1))
        .expect("the ballast is in the pages");
    // rewritten and left so: refused, whatever the timing
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&pages)
            .unwrap();
        file.write_all_at(&vec![2u8; window], start as u64).unwrap();
        let e = restore(images.path()).expect_err("rewritten images restored");
        assert!(e.contains("pages-1.img changed since the dump"), "{e}");
        file.write_all_at(&vec![1u8; window], start as u64).unwrap();
    }
    // The owner rewrites 1 MiB of the pages (and back) without pause, and
    // every other restore happens while it does; in between, it is held
    // still (the file as signed) for one restore, which must then succeed
    // intact. So both outcomes come whatever the machine's speed, and no
    // restore may ever run rewritten bytes.
    let stop = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, hold, held, pages) = (stop.clone(), hold.clone(), held.clone(), pages.clone());
        as_nobody(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&pages)
                .unwrap();
            let (ones, twos) = (vec![1u8; window], vec![2u8; window]);
            let mut writes = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if hold.load(Ordering::SeqCst) {
                    held.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                held.store(false, Ordering::SeqCst);
                file.write_all_at(&twos, start as u64).unwrap();
                file.write_all_at(&ones, start as u64).unwrap();
                writes += 2;
            }
            writes
        })
    };
    let (mut refused, mut intact, mut rewriting) = (0, 0, 0);
    let started = Instant::now();
    let mut while_writing = true;
    let rewrite_for = race_for(Duration::from_secs(4), Duration::from_secs(20));
    while started.elapsed() < rewrite_for || refused == 0 || intact == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{refused} refused, {intact} intact"
        );
        hold.store(!while_writing, Ordering::SeqCst);
        if while_writing {
            rewriting += 1;
        } else {
            poll_until(
                Duration::from_secs(10),
                Duration::from_micros(100),
                || match held.load(Ordering::SeqCst) {
                    true => Ok(()),
                    false => Err("the writer never held still".into()),
                },
            );
        }
        match restore(images.path()) {
            Err(e) => {
                assert!(while_writing, "refused with the file as signed: {e}");
                assert!(e.contains("pages-1.img changed since the dump"), "{e}");
                assert!(
                    process_state(pid).is_none(),
                    "a refused restore left pid {pid}"
                );
                refused += 1;
            }
            Ok(restored) => {
                poll_until(
                    Duration::from_secs(30),
                    Duration::from_millis(10),
                    || match read(&program.log).matches("memory ").count() {
                        n if n > intact => Ok(()),
                        _ => Err("the copy never checked its memory".into()),
                    },
                );
                let corrupt = read(&program.log).matches("memory CORRUPT").count();
                assert_eq!(corrupt, 0, "a copy was restored from rewritten bytes");
                kill_and_reap(restored);
                intact += 1;
            }
        }
        while_writing = !while_writing;
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    ctx.reached(format!(
        "{rewriting} restores while the owner rewrote the pages ({refused} refused), the others \
         with them held as signed"
    ));
    format!(
        "{writes} rewrites: {rewriting} restores while rewriting, {refused} refused; {intact} \
         restored intact (those with the file held as signed, and any that came through the \
         rewrites unchanged)"
    )
}
