//! Placing a restore's image files in its private directory (the module
//! docs of `verify.rs` say how each is placed), hashed as they are placed,
//! on several threads at once.

use super::gate::{DEFER_AT_LEAST, Unhashed, is_pages};
use super::settings::RestoreError;
use super::verify::Verified;
use crate::server::images::format::{copy, only_root_writes};
use crate::server::images::manifest::{
    FileDigest, Manifest, count_hashed_on_this_thread, hash_file, hashed_on_this_thread,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::io;

/// Threads that place and hash a restore's files at most.
const WORKERS: usize = 4;

impl Verified {
    /// Places (and hashes) every file of `wanted`; with `defer_pages`, the
    /// pages files of a root checkpoint with [`DEFER_AT_LEAST`] bytes of
    /// pages are left unhashed, for the restore (`gate.rs`).
    pub(super) fn place_all(
        &mut self,
        wanted: &[FileDigest],
        manifest: Option<&Manifest>,
        defer_pages: bool,
    ) -> Result<(), RestoreError> {
        let pages: u64 = wanted
            .iter()
            .filter(|f| is_pages(&f.name))
            .map(|f| f.size)
            .sum();
        let defer =
            defer_pages && manifest.is_some_and(|m| m.meta.uid == 0) && pages >= DEFER_AT_LEAST;
        for (file, taken) in wanted
            .iter()
            .zip(self.take_all(wanted, manifest.is_some(), defer))
        {
            let (size, unhashed) = taken?;
            self.bytes += size;
            self.placed.push((file.name.clone(), size));
            self.unhashed.extend(unhashed);
        }
        Ok(())
    }

    /// [`Self::take`] of every file in `wanted`, on up to [`WORKERS`]
    /// threads (the largest files first); the results in `wanted`'s order.
    fn take_all(
        &self,
        wanted: &[FileDigest],
        signed: bool,
        defer_pages: bool,
    ) -> Vec<Result<(u64, Option<Unhashed>), RestoreError>> {
        let mut order: Vec<usize> = (0..wanted.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(wanted[i].size));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let (mut done, hashed_before) = (Vec::new(), hashed_on_this_thread());
            loop {
                let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&i) = order.get(at) else {
                    break (done, hashed_on_this_thread() - hashed_before);
                };
                let defer = defer_pages && is_pages(&wanted[i].name);
                done.push((i, self.take(&wanted[i], signed, defer)));
            }
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(WORKERS));
        let mut results: Vec<_> = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..workers).map(|_| scope.spawn(work)).collect();
            let (mut all, _) = work();
            for helper in helpers {
                let (done, hashed) = helper.join().unwrap_or_default();
                all.extend(done);
                // the caller's count includes what its helpers hashed
                count_hashed_on_this_thread(hashed);
            }
            all
        });
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// Places one image file in the private directory (see the module
    /// docs); returns its size, and the file itself if its hash is left
    /// to check (`defer`).
    fn take(
        &self,
        want: &FileDigest,
        signed: bool,
        defer: bool,
    ) -> Result<(u64, Option<Unhashed>), RestoreError> {
        let name = want.name.as_str();
        let changed = |why: &str| RestoreError::Refused(format!("{name} {why}"));
        let io = |e: io::Error| RestoreError::Refused(format!("{name}: {e}"));
        let src = match rustix::fs::openat(
            &self.subdir.parent,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(f) => f,
            Err(rustix::io::Errno::NOENT) => {
                return Err(changed("is missing (removed after the dump)"));
            }
            Err(rustix::io::Errno::LOOP) => return Err(changed("is a symlink, not an image file")),
            Err(e) => return Err(io(e.into())),
        };
        let stat = rustix::fs::fstat(&src).map_err(|e| io(e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(changed("is not a regular file"));
        }
        let size = stat.st_size as u64;
        if signed && size != want.size {
            return Err(changed(&format!(
                "changed since the dump ({size} bytes, signed {})",
                want.size
            )));
        }
        let placed = if only_root_writes(&stat) {
            rustix::fs::linkat(&src, "", &self.subdir.dir, name, AtFlags::EMPTY_PATH)
                .map_err(|e| io(e.into()))?;
            src
        } else {
            copy(&src, &self.subdir.dir, name, size).map_err(io)?
        };
        if signed && defer {
            let unhashed = Unhashed {
                name: name.to_owned(),
                file: placed,
                size,
                hash: want.hash,
            };
            return Ok((size, Some(unhashed)));
        }
        if signed && hash_file(&placed, size).map_err(io)? != want.hash {
            return Err(changed("changed since the dump (its hash differs)"));
        }
        Ok((size, None))
    }
}
