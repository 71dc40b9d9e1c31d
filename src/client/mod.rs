//! The application side: [`checkpoint`] asks the service to dump this
//! process and tells, when it returns, whether this is the original process
//! ([`Outcome::Continued`]) or a copy restored from the images
//! ([`Outcome::Restored`]).

pub mod blocking;
mod connect;
mod copy_slot;
mod error;
pub mod hooks;
mod identity;
pub mod preflight;
mod restore;
mod result;

pub use error::Error;
pub use hooks::{HookError, HookFailure, Hooks, Phase, Resource};
pub use preflight::{Finding, Preflight, Severity, preflight};
pub use restore::{RestoreOptions, Restored, restore};

use crate::proto::{
    DumpOptions, DumpReport, FrameError, JobId, Request, Response, encode_frame, read_frame,
    write_frame,
};
use async_io::Async;
use connect::connect;
use identity::Identity;
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the service socket.
pub const SOCKET_ENV: &str = "SELFDUMP_SOCKET";
/// Socket used when neither the options nor [`SOCKET_ENV`] name one.
pub const DEFAULT_SOCKET: &str = "/run/selfdump.sock";

/// One process's checkpoints run one at a time: a second live connection in
/// the tree would make CRIU refuse the dump.
static ONE_AT_A_TIME: async_lock::Mutex<()> = async_lock::Mutex::new(());

/// What to checkpoint, and how.
///
/// ```
/// use selfdump::Options;
/// let opts = Options::new("/tmp/images").exit_after_dump().tcp_established(true);
/// assert_eq!(opts.images_dir(), std::path::Path::new("/tmp/images"));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    images_dir: PathBuf,
    socket: Option<PathBuf>,
    dump: DumpOptions,
    preflight: PreflightLevel,
}

/// Which preflight findings stop a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreflightLevel {
    Off,
    Refusals,
    All,
}

impl Options {
    /// Images go into `images_dir`, which must exist and be writable by this process.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            socket: None,
            dump: DumpOptions::default(),
            preflight: PreflightLevel::Refusals,
        }
    }

    /// Do not run the [preflight](preflight::Preflight) before the dump: let
    /// CRIU find out, while the process is frozen, what it refuses.
    pub fn skip_preflight(mut self) -> Self {
        self.preflight = PreflightLevel::Off;
        self
    }

    /// Fail the checkpoint on every preflight finding, the
    /// [risky](Severity::Risky) ones included (by default they are logged,
    /// and only what CRIU would refuse stops the checkpoint).
    pub fn strict_preflight(mut self) -> Self {
        self.preflight = PreflightLevel::All;
        self
    }

    /// The preflight that [`checkpoint`] runs with these options (same TCP
    /// and unix socket choices), to run it yourself.
    pub fn preflight(&self) -> Preflight {
        Preflight::new()
            .tcp_established(self.dump.tcp_established)
            .ext_unix_sk(self.dump.ext_unix_sk)
    }

    /// Have CRIU end this process tree after a successful dump (by default
    /// it keeps running). A failed dump still returns its error here.
    pub fn exit_after_dump(mut self) -> Self {
        self.dump.leave_running = false;
        self
    }

    /// The service socket (default: `$SELFDUMP_SOCKET`, else `/run/selfdump.sock`).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Dump established TCP connections (CRIU `--tcp-established`).
    pub fn tcp_established(mut self, on: bool) -> Self {
        self.dump.tcp_established = on;
        self
    }

    /// Dump file locks (CRIU `--file-locks`).
    pub fn file_locks(mut self, on: bool) -> Self {
        self.dump.file_locks = on;
        self
    }

    /// Allow connections to unix sockets outside the tree (CRIU `--ext-unix-sk`).
    pub fn ext_unix_sk(mut self, on: bool) -> Self {
        self.dump.ext_unix_sk = on;
        self
    }

    /// Generations to keep in the images directory, this checkpoint's
    /// included (default [`DEFAULT_KEEP`](crate::proto::DEFAULT_KEEP); at
    /// least 1; the service caps it at its operator's limit,
    /// `selfdump serve --max-keep`). Each checkpoint is a new generation,
    /// `DIR/gen-...`, which `DIR/latest` names once it is whole; older ones
    /// go after it is committed, oldest first, except one `latest` still
    /// names or one being restored.
    pub fn keep(mut self, generations: u32) -> Self {
        self.dump.keep = generations.max(1);
        self
    }

    /// The images directory.
    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// The socket this call will use.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }
}

/// `$SELFDUMP_SOCKET`, else the default path.
fn default_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Which process returned from [`checkpoint`].
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

/// Checkpoints this process and its children.
///
/// Returns [`Outcome::Continued`] in the original process once the images
/// are on disk, committed as a new generation of the images directory
/// (`DIR/gen-...`, which `DIR/latest` then names), and
/// [`Outcome::Restored`] in a copy restored from them.
/// Concurrent calls from one process run one after another. Runs under any
/// executor (it uses `async-io`'s reactor); [`blocking::checkpoint`] runs
/// without one, and [`Hooks::checkpoint`] runs resource hooks around it.
///
/// First it runs the [preflight](preflight::Preflight) on this process
/// tree and fails with [`Error::Preflight`] if CRIU would refuse it, before
/// anything is frozen (see [`Options::skip_preflight`],
/// [`Options::strict_preflight`]).
///
/// ```no_run
/// # async fn run() -> Result<(), selfdump::Error> {
/// use selfdump::{checkpoint, Options, Outcome};
/// match checkpoint(Options::new("/tmp/images")).await? {
///     Outcome::Continued(report) => println!("frozen for {:?}", report.frozen),
///     Outcome::Restored(_) => println!("restored"),
/// }
/// # Ok(()) }
/// ```
pub async fn checkpoint(options: Options) -> Result<Outcome, Error> {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    run_preflight(&options)?;
    let socket = options.socket_path();
    let images_dir = options.images_dir.clone();
    let dir = rustix::fs::open(
        &images_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::ImagesDir {
        path: images_dir.clone(),
        source: e.into(),
    })?;

    let before = Identity::current();
    // Kept across the dump; see `copy_slot`.
    let slot = copy_slot::make();
    let mut dump = options.dump;
    dump.copy_slot_fd = slot.as_ref().map(|s| s.as_raw_fd());
    let stream = connect(&socket).await?;
    let request = encode_frame(&Request::Checkpoint(dump));
    let answer = ask(&stream, &request, &[dir.as_fd()]).await;
    drop(dir);

    let (job, generation) = match answer? {
        Response::Frozen(notice) => (notice.job, notice.generation),
        other => return Err(unexpected(other, &images_dir)),
    };
    // The service closed its end while we were frozen: the frame above was
    // the last one, and both the original and a restored copy see EOF next.
    if let Some(frame) = read_frame(&stream).await? {
        return Err(Error::Protocol(FrameError::Malformed(format!(
            "unexpected frame after Frozen ({} bytes)",
            frame.body.len()
        ))));
    }
    drop(stream);

    if Identity::current() != before {
        let (copy, restore_id) = match slot.as_ref().and_then(copy_slot::read) {
            Some((copy, id)) => (Some(copy), id),
            None => (None, copy_slot::fresh_id()),
        };
        drop(slot);
        log::debug!("checkpoint {job}: this is a restored copy of {generation} ({copy:?})");
        return Ok(Outcome::Restored(RestoredInfo {
            job,
            images_dir,
            generation,
            copy,
            restore_id,
        }));
    }
    drop(slot);
    result::result(&socket, job, images_dir).await
}

/// Fails with the findings that stop a checkpoint at `options`' level; logs the rest.
fn run_preflight(options: &Options) -> Result<(), Error> {
    if options.preflight == PreflightLevel::Off {
        return Ok(());
    }
    let findings = match options.preflight().run() {
        Ok(f) => f,
        Err(e) => {
            log::warn!("preflight could not look at this process: {e}; checkpointing anyway");
            return Ok(());
        }
    };
    let (stop, go): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Refused || options.preflight == PreflightLevel::All);
    for finding in &go {
        log::warn!("preflight: {finding}");
    }
    if stop.is_empty() {
        Ok(())
    } else {
        Err(Error::Preflight(stop))
    }
}

/// Sends a request and reads the answer. A service that refuses a client
/// before reading its request (it cannot identify it, it is busy) answers
/// and closes: the write then fails, but the answer is there to read.
async fn ask(
    stream: &Async<UnixStream>,
    request: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<Response, Error> {
    if let Err(e) = write_frame(stream, request, fds).await {
        return read_response(stream)
            .await
            .map_err(|_| Error::Protocol(FrameError::Io(e)));
    }
    read_response(stream).await
}

async fn read_response(stream: &Async<UnixStream>) -> Result<Response, Error> {
    let frame = read_frame(stream).await?.ok_or_else(|| {
        Error::Protocol(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the service closed the connection without answering",
        )))
    })?;
    if !frame.fds.is_empty() {
        return Err(Error::Protocol(FrameError::UnexpectedFds(frame.fds.len())));
    }
    Ok(crate::proto::decode_body(frame.header, &frame.body)?)
}

/// Turns an answer that is not the expected one into the error it means.
fn unexpected(response: Response, images_dir: &Path) -> Error {
    match response {
        Response::Refused(r) => Error::Refused {
            kind: r.kind,
            message: r.message,
        },
        Response::DumpFailed(f) => Error::Dump {
            message: f.message,
            log: f.log_file.map(|name| images_dir.join(name)),
        },
        other => Error::Protocol(FrameError::Malformed(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

fn to_report(r: DumpReport, images_dir: PathBuf) -> Report {
    Report {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Refusal, RefusalKind};
    use std::io::Write;

    #[test]
    fn an_answer_sent_before_the_service_closed_is_read_even_if_the_request_could_not_be_sent() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let refusal = Response::Refused(Refusal {
            kind: RefusalKind::NotPermitted,
            message: "cannot identify you".into(),
        });
        theirs.write_all(&encode_frame(&refusal)).unwrap();
        drop(theirs); // closed without reading: our write fails (EPIPE)
        let ours = Async::new(ours).unwrap();
        let request = encode_frame(&Request::Checkpoint(DumpOptions::default()));
        let answer = async_io::block_on(ask(&ours, &request, &[]));
        assert_eq!(answer.unwrap(), refusal);
    }
}
