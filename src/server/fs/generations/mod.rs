//! Generations: every checkpoint into an images directory `DIR` is a
//! directory of its own there, `DIR/gen-YYYYMMDD-HHMMSS.UUUUUU-RRRRRRRR`
//! (UTC time of the request, microseconds, 32 random bits), and
//! `DIR/latest` is a symlink naming the newest whole one by that single
//! name, so that plain CRIU restores it as it is (`criu restore -D
//! DIR/latest`). How a generation is made and committed is `commit.rs`'s;
//! how old ones go, `retention.rs`'s.
//!
//! Names sort as their times do, so "the newest" is the greatest name. A
//! name is decided before the dump (it travels in the `Frozen` frame, which
//! a restored copy reads too); a second program checkpointing into the
//! same directory at the same microsecond gets other random bits.
//!
//! Resolving what to restore (`resolve`) reads `latest` through the
//! directory's fd, takes only a single plain name from it, and opens that
//! with `O_NOFOLLOW | O_DIRECTORY` relative to the same fd, with the
//! credentials of whoever the restore acts for: nothing is followed
//! through a path the directory's owner could change. The generation is
//! then held with a shared `flock` for as long as its fd is open, which
//! retention respects (it takes an exclusive one, without waiting, and
//! skips what it cannot lock).

pub(crate) mod adopt;
pub(crate) mod commit;
pub(crate) mod files;
pub(crate) mod retention;

use crate::server::caller::credentials::Credentials;
use crate::server::images::manifest::MANIFEST_FILE;
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime};

/// The symlink naming the newest committed generation.
pub const LATEST: &str = "latest";

/// Every generation's name starts so.
pub const PREFIX: &str = "gen-";

/// A new generation's name, for a checkpoint asked for at `now`.
pub fn new_name(now: SystemTime) -> io::Result<String> {
    let mut random = [0u8; 4];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(name_at(since, u32::from_le_bytes(random)))
}

/// The name of a generation made `since` the epoch, with `random` bits.
pub(crate) fn name_at(since: Duration, random: u32) -> String {
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{PREFIX}{year:04}{month:02}{day:02}-{:02}{:02}{:02}.{:06}-{random:08x}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a time in seconds since the epoch.
pub fn utc(secs: u64) -> String {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Whether `name` is a generation's name, exactly as [`new_name`] makes them.
pub fn is_generation_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let b = rest.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() == 31
        && digits(0..8)
        && b[8] == b'-'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..22)
        && b[22] == b'-'
        && hex(23..31)
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The generations in `dir` (directories with a generation's name, not
/// followed through symlinks), oldest first.
pub(crate) fn list(dir: &impl AsFd) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = crate::server::images::format::entry_names(dir)?
        .into_iter()
        .filter(|n| is_generation_name(n))
        .filter(|n| {
            rustix::fs::statat(dir, n.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The name `latest` holds in `dir`: `None` without a `latest`; an error
/// when it is not a symlink or names anything but a single plain name.
pub(crate) fn read_latest(dir: &impl AsFd) -> io::Result<Option<String>> {
    let stat = match rustix::fs::statat(dir, LATEST, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        other => other?,
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink {
        return Err(io::Error::other(format!(
            "{LATEST} is not a symlink (selfdump keeps {LATEST} as a symlink to the newest \
             generation); move it away"
        )));
    }
    let target = rustix::fs::readlinkat(dir, LATEST, Vec::new())?;
    let target = target.to_string_lossy().into_owned();
    if target.is_empty() || target.contains('/') || target == "." || target == ".." {
        return Err(io::Error::other(format!(
            "{LATEST} points to {target:?}, not to a generation in the same directory"
        )));
    }
    Ok(Some(target))
}

/// Whether uid `uid` may switch `latest` in the directory `dir` (whose
/// stat is `dir_stat`): in a sticky directory (`/tmp`), only the owner of
/// `latest` or of the directory may replace it (root may, but the service
/// switches it as the caller).
pub(crate) fn may_switch_latest(
    dir: &impl AsFd,
    dir_stat: &rustix::fs::Stat,
    uid: u32,
) -> Result<(), String> {
    const STICKY: u32 = 0o1000;
    let Ok(latest) = rustix::fs::statat(dir, LATEST, AtFlags::SYMLINK_NOFOLLOW) else {
        return Ok(());
    };
    if uid == 0 || dir_stat.st_mode & STICKY == 0 || uid == latest.st_uid || uid == dir_stat.st_uid
    {
        return Ok(());
    }
    Err(format!(
        "{LATEST} in the images directory is uid {}'s, and the directory is sticky: uid {uid} \
         may not replace it; use a directory of your own",
        latest.st_uid
    ))
}

/// What a restore reads: the images directory proper and its generation.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The directory holding the image files, held with a shared `flock`.
    pub(crate) dir: OwnedFd,
    /// The generation's name; `None` for images directly in the directory
    /// that was given (made before generations, by plain CRIU, or a
    /// generation named by its own path).
    pub(crate) generation: Option<String>,
}

/// How long a restore waits for a generation that another process holds
/// exclusively (being committed, or being removed by retention).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What to restore from `dir`: the generation `latest` names, or `dir`
/// itself when it has no `latest` (images directly in it). `open_as`
/// opens the generation (see the module docs). Held with a shared lock.
pub(crate) fn resolve(dir: OwnedFd, open_as: &Credentials) -> Result<Resolved, String> {
    for _ in 0..5 {
        let Some(name) = read_latest(&dir).map_err(|e| e.to_string())? else {
            no_latest_but_generations(&dir)?;
            lock_shared(&dir)?;
            return Ok(Resolved {
                dir,
                generation: None,
            });
        };
        let opened = open_as
            .run(|| {
                rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            })
            .map_err(|e| e.to_string())?;
        let generation = match opened {
            // retention removed it between the look and the open: look again
            Err(rustix::io::Errno::NOENT) => continue,
            Err(rustix::io::Errno::ACCESS) => return Err(not_theirs(&dir, &name, open_as)),
            Err(e) => return Err(format!("{LATEST} -> {name}: {e}")),
            Ok(fd) => fd,
        };
        lock_shared(&generation)?;
        if rustix::fs::fstat(&generation)
            .map_err(|e| e.to_string())?
            .st_nlink
            == 0
        {
            continue; // removed while the lock was awaited
        }
        return Ok(Resolved {
            dir: generation,
            generation: Some(name),
        });
    }
    Err(format!(
        "{LATEST} kept changing while it was resolved (generations committed and removed \
         meanwhile); try again"
    ))
}

/// Why `open_as` may not open generation `name`: whose it is.
fn not_theirs(dir: &OwnedFd, name: &str, open_as: &Credentials) -> String {
    let owner = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_or_else(|e| format!("unknown ({e})"), |s| s.st_uid.to_string());
    format!(
        "these images are uid {owner}'s ({LATEST} names {name}, which uid {} may not open); \
         only their owner or root may restore them",
        open_as.uid
    )
}

/// A directory without `latest` whose only checkpoints are generations
/// (`latest` removed by hand, or the first commit cut short): say which
/// to name, rather than that the directory holds no signed images.
fn no_latest_but_generations(dir: &OwnedFd) -> Result<(), String> {
    let has = |name: &str| rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    if has(MANIFEST_FILE) || has("pstree.img") {
        return Ok(());
    }
    match list(dir).unwrap_or_default().last() {
        None => Ok(()),
        Some(newest) => Err(format!(
            "the directory has generations but no {LATEST}; name one (the newest is \
             {newest}: DIR/{newest})"
        )),
    }
}

/// Takes a shared `flock` on a generation, waiting up to [`LOCK_WAIT`]
/// for an exclusive holder (a commit or a removal, both short) to let go.
pub(crate) fn lock_shared(dir: &impl AsFd) -> Result<(), String> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(dir, FlockOperation::NonBlockingLockShared) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                return Err(format!(
                    "the generation is held by another process ({e}) for more than {LOCK_WAIT:?}"
                ));
            }
        }
    }
}

/// A borrowed fd's generation lock, taken without waiting: whether it was.
pub(crate) fn try_lock_exclusive(dir: BorrowedFd<'_>) -> bool {
    rustix::fs::flock(dir, FlockOperation::NonBlockingLockExclusive).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_their_times_and_parse_back() {
        let at = |s: u64, us: u32| Duration::new(s, us * 1000);
        let a = name_at(at(0, 0), 0xdead_beef);
        assert_eq!(a, "gen-19700101-000000.000000-deadbeef");
        let b = name_at(at(1_700_000_000, 5), 1);
        assert_eq!(b, "gen-20231114-221320.000005-00000001");
        let c = name_at(at(1_700_000_000, 6), 0);
        assert!(a < b && b < c);
        // 2000-02-29 and 2100-03-01 (leap rules)
        assert!(name_at(at(951_782_400, 0), 0).starts_with("gen-20000229-"));
        assert!(name_at(at(4_107_542_400, 0), 0).starts_with("gen-21000301-"));
        for name in [&a, &b, &c] {
            assert!(is_generation_name(name), "{name}");
        }
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        let fresh = new_name(SystemTime::now()).unwrap();
        assert!(is_generation_name(&fresh), "{fresh}");
        for not in [
            "gen-",
            "latest",
            "gen-20231114-221320.000005-0000000g",
            "gen-20231114-221320.000005-00000001x",
            "gen-2023111a-221320.000005-00000001",
            "xgen-20231114-221320.000005-00000001",
        ] {
            assert!(!is_generation_name(not), "{not}");
        }
    }

    #[test]
    fn latest_must_be_a_symlink_to_a_plain_name() {
        let dir = tempfile::tempdir().unwrap();
        let fd = std::fs::File::open(dir.path()).unwrap();
        assert_eq!(read_latest(&fd).unwrap(), None);
        let latest = dir.path().join(LATEST);
        std::os::unix::fs::symlink("gen-x", &latest).unwrap();
        assert_eq!(read_latest(&fd).unwrap().as_deref(), Some("gen-x"));
        for bad in ["../elsewhere", "/etc", "a/b", ".", ".."] {
            std::fs::remove_file(&latest).unwrap();
            std::os::unix::fs::symlink(bad, &latest).unwrap();
            assert!(read_latest(&fd).is_err(), "{bad}");
        }
        std::fs::remove_file(&latest).unwrap();
        std::fs::create_dir(&latest).unwrap();
        let err = read_latest(&fd).unwrap_err().to_string();
        assert!(err.contains("not a symlink"), "{err}");
    }
}
