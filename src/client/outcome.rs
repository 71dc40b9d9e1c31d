//! What a checkpoint returns: which process this is, and what the dump
//! took or where the copy came from.

use crate::proto::{DumpReport, JobId};
use std::path::PathBuf;
use std::time::Duration;

/// Which process returned from [`checkpoint`](crate::checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The original process, after a successful dump.
    Continued(Report),
    /// A copy restored from the images.
    Restored(RestoredInfo),
}

/// What a successful dump took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The job that ran the dump.
    pub job: JobId,
    /// The images directory the checkpoint was asked into.
    pub images_dir: PathBuf,
    /// The generation committed: the images are in
    /// `images_dir.join(&generation)`, which `images_dir/latest` names.
    pub generation: String,
    /// How long the tree was frozen (CRIU's own measure).
    pub frozen: Duration,
    /// How long CRIU took to freeze the tree.
    pub freezing: Duration,
    /// How long CRIU took to collect the memory pages, the tree frozen
    /// (CRIU's own measure; part of `frozen`).
    pub memdump: Duration,
    /// How long CRIU took to write the pages out (CRIU's own measure).
    pub memwrite: Duration,
    /// From the service receiving the request to the images being on disk.
    pub total: Duration,
    /// What putting the generation on disk took of that (`syncfs` of its
    /// files, `fsync` of the directory around its naming and the switch of
    /// `latest`; CRIU itself never syncs).
    pub sync: Duration,
    /// How much of the frozen time CRIU waited for the service (its checks
    /// and answers); the rest of `frozen` is CRIU's own work.
    pub service_frozen: Duration,
    /// Bytes of image files.
    pub bytes_written: u64,
    /// Memory pages CRIU looked at.
    pub pages_scanned: u64,
    /// Memory pages written.
    pub pages_written: u64,
    /// Processes in the dumped tree.
    pub processes: u32,
}

/// What a restored copy knows about the checkpoint it came from.
///
/// **Every copy of one image starts identical**: the same memory, so the
/// same state of every random generator seeded before the checkpoint
/// (`rand::thread_rng`, a `HashMap`'s `RandomState`, a UUID generator),
/// the same ids already handed out, the same pids inside its namespace,
/// the same open files (appending to the same log). Only what the kernel
/// hands out afresh differs (`getrandom`, host pids, clocks). Reseed and
/// renumber in the `Restored` branch, from `restore_id` (or `getrandom`):
///
/// ```no_run
/// # fn main() -> Result<(), selfdump::Error> {
/// use selfdump::{Options, Outcome};
/// let mut seed: u64 = 42; // what the app's RNG was seeded with at start
/// let mut worker = String::from("original");
/// if let Outcome::Restored(info) = selfdump::blocking::checkpoint(Options::new("/tmp/images"))? {
///     seed = info.restore_id as u64; // distinct in every copy
///     worker = match info.copy {
///         Some(n) => format!("copy-{n}"),
///         None => format!("restored-{:032x}", info.restore_id),
///     };
/// }
/// # let _ = (seed, worker); Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredInfo {
    /// The job that wrote the images.
    pub job: JobId,
    /// The images directory the checkpoint was asked into.
    pub images_dir: PathBuf,
    /// The generation this copy was restored from (a directory of that
    /// name in `images_dir`), as the service named it at the freeze.
    pub generation: String,
    /// Which copy this is (0, 1, ... N-1) when the restorer started many
    /// copies (`selfdump restore --copies N`); `None` for a restore that
    /// did not say (a plain `selfdump restore`).
    pub copy: Option<u32>,
    /// A random id of this restore, fresh in every copy: from the restorer
    /// with the copy number, or else drawn by the copy itself from the
    /// kernel. Use it to reseed random generators and make unique ids.
    pub restore_id: u128,
}

impl Report {
    /// The report of the service's `r`, for a checkpoint into `images_dir`.
    pub(super) fn of(r: DumpReport, images_dir: PathBuf) -> Self {
        Self {
            job: r.job,
            images_dir,
            generation: r.generation,
            frozen: Duration::from_micros(r.frozen_us),
            freezing: Duration::from_micros(r.freezing_us),
            memdump: Duration::from_micros(r.memdump_us),
            memwrite: Duration::from_micros(r.memwrite_us),
            total: Duration::from_micros(r.total_us),
            sync: Duration::from_micros(r.sync_us),
            service_frozen: Duration::from_micros(r.service_frozen_us),
            bytes_written: r.bytes_written,
            pages_scanned: r.pages_scanned,
            pages_written: r.pages_written,
            processes: r.processes,
        }
    }
}
