//! One `syncfs` for the dumps that commit together on one filesystem.
//!
//! A commit syncs its filesystem before it names its generation (step 3
//! of `generations/commit.rs`), so that every file of the generation is on
//! disk. `syncfs` writes and waits for every dirty page of the whole
//! filesystem, and concurrent calls on one filesystem wait for one another
//! in the kernel, so N dumps finishing together used to pay N syncs of the
//! same data. Here they share them, as a database shares a log flush
//! between the transactions that commit together (a group commit):
//!
//! - a commit asks for a sync only once its files are written and handed
//!   over ([`Member::sync`]); it is served by the first sync that *starts*
//!   after it asked: that sync writes and waits for everything dirty at its
//!   start, the commit's files included. A sync already running when it
//!   asks may have started before its last write, so it never counts: the
//!   commit waits for the next one, which starts as soon as the running one
//!   ends and serves everyone who asked meanwhile. So every commit is
//!   followed by a whole `syncfs` started after its writes, as before.
//! - errors: `syncfs` reports a writeback error of the filesystem once per
//!   open file, the errors since that file was opened (or last synced).
//!   The syncs here go through one file per filesystem (`sentinel`), opened
//!   before the generation directory of any commit it serves
//!   ([`join`] comes before `seal` makes that directory), so it sees every
//!   error a commit's own directory would have seen. An error it reports
//!   fails every commit that joined before that sync ended (some of them
//!   for another dump's error, as a commit's own `syncfs` would have
//!   reported any error of the filesystem): never fewer failures than each
//!   syncing alone.
//!
//! A filesystem's entry lives while a commit on it holds a [`Member`]: the
//! table never holds more entries than dumps in flight.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// The syncs of one filesystem.
#[derive(Debug)]
struct Shared {
    dev: u64,
    sentinel: OwnedFd,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Syncs started, and syncs ended (each numbered from 1).
    started: u64,
    ended: u64,
    running: bool,
    /// The last sync that reported an error, and the error.
    failed: Option<(u64, rustix::io::Errno)>,
}

/// A commit's place among the commits of its filesystem.
#[derive(Debug)]
pub(crate) struct Member {
    shared: Arc<Shared>,
    /// Syncs ended before it joined: their errors are not its.
    since: u64,
}

static TABLE: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());

/// Joins the commits of the filesystem of `dir` (the images directory),
/// before anything of the generation is made.
pub(crate) fn join(dir: &impl AsFd) -> io::Result<Member> {
    let dev = rustix::fs::fstat(dir)?.st_dev;
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let shared = match table.iter().find(|s| s.dev == dev) {
        Some(shared) => Arc::clone(shared),
        None => {
            let sentinel = rustix::fs::openat(
                dir,
                ".",
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            let shared = Arc::new(Shared {
                dev,
                sentinel,
                state: Mutex::default(),
                done: Condvar::new(),
            });
            table.push(Arc::clone(&shared));
            shared
        }
    };
    let since = shared.lock().ended;
    Ok(Member { shared, since })
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Member {
    /// Returns once a `syncfs` of the filesystem that started after this
    /// call has ended (see the module docs); its error, or that of any
    /// sync since this member joined.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let shared = &self.shared;
        let mut state = shared.lock();
        // a sync running now may have started before the caller's writes
        let needed = state.started + 1;
        while state.ended < needed {
            if state.running {
                state = shared
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.running = true;
            state.started += 1;
            let number = state.started;
            drop(state);
            let synced = rustix::fs::syncfs(&shared.sentinel);
            state = shared.lock();
            state.running = false;
            state.ended = number;
            if let Err(e) = synced {
                state.failed = Some((number, e));
            }
            shared.done.notify_all();
        }
        match state.failed {
            Some((number, e)) if number > self.since => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        // the table's and this one's: the last commit of its filesystem
        if Arc::strong_count(&self.shared) == 2 {
            table.retain(|s| !Arc::ptr_eq(s, &self.shared));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These tests share /dev/shm's entry: one at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    #[test]
    fn commits_of_one_filesystem_share_an_entry_until_the_last_goes() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        // a filesystem no other test here syncs through this table
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let fd = std::fs::File::open(dir.path()).unwrap();
        let (a, b) = (join(&fd).unwrap(), join(&fd).unwrap());
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        a.sync().unwrap();
        b.sync().unwrap();
        assert!(b.shared.lock().ended >= 1);
        drop(a);
        let dev = b.shared.dev;
        drop(b);
        let table = TABLE.lock().unwrap();
        assert!(
            !table.iter().any(|s| s.dev == dev),
            "the entry outlived its commits"
        );
    }

    #[test]
    fn a_sync_running_when_a_commit_asks_does_not_serve_it() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let fd = std::fs::File::open(dir.path()).unwrap();
        let member = join(&fd).unwrap();
        {
            // as if sync 5 were running: started before the commit asks
            let mut state = member.shared.lock();
            (state.started, state.ended, state.running) = (5, 4, true);
        }
        std::thread::scope(|scope| {
            // whether it asks before or after sync 5 ends, only a sync
            // started after it asked may serve it
            let asking = scope.spawn(|| member.sync());
            {
                let mut state = member.shared.lock();
                (state.ended, state.running) = (5, false);
                member.shared.done.notify_all();
            }
            asking.join().unwrap().unwrap();
        });
        // served by a sync it started itself once 5 ended: number 6
        assert_eq!(member.shared.lock().ended, 6);
    }
}
