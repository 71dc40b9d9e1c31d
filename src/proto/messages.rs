//! The messages client and service exchange.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a client asks of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Dump the calling process and its children into the directory whose fd
    /// travels with this message.
    Checkpoint(DumpOptions),
    /// The result of a job this very process asked for earlier.
    Result(JobId),
    /// Restore the signed images in the directory whose fd travels with
    /// this message (the caller must be their owner, or root).
    Restore(RestoreRequest),
}

/// How the owner of a checkpoint asks the service to restore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore images without a manifest (plain CRIU's), unchecked: root
    /// only.
    pub trust_unsigned: bool,
}

/// What a restore through the service did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreReport {
    /// The restored root pid.
    pub pid: i32,
    /// The images' owner, whose credentials the restored tasks have.
    pub owner: u32,
    /// The generation restored (`latest` resolved, or the one named);
    /// `None` for images directly in the directory (made before
    /// generations, or by plain CRIU).
    pub generation: Option<String>,
    /// Microseconds spent verifying the images.
    pub verify_us: u64,
    /// Microseconds from the request to CRIU's answer.
    pub total_us: u64,
}

/// The CRIU options a self-dumping process may choose. Whether the caller is
/// a shell job is not here: the service decides that from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpOptions {
    /// Keep the process running after the dump (otherwise CRIU kills it).
    pub leave_running: bool,
    /// Dump established TCP connections (CRIU `--tcp-established`).
    pub tcp_established: bool,
    /// Dump file locks (CRIU `--file-locks`).
    pub file_locks: bool,
    /// Allow connections to unix sockets outside the tree, as CRIU allows (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Reserved for an iterative pre-dump, which this service does not
    /// implement yet: a request with it is refused (saying also whether the
    /// kernel's soft-dirty memory tracking, which it would need, exists).
    /// The client library never sets it.
    pub pre_dump: bool,
    /// The caller's copy slot: an fd of its own, the read end of a pipe
    /// with no writer, that a restore of many copies replaces in each copy
    /// with a pipe holding that copy's number and restore id (CRIU's
    /// `--inherit-fd`). The service records which pipe it is in the
    /// images' metadata. Absent from older clients.
    #[serde(default)]
    pub copy_slot_fd: Option<i32>,
    /// Generations to keep in the images directory after this one is
    /// committed, this one included (at least 1; the service caps it at
    /// its operator's limit). Older ones go, oldest first, never the one
    /// `latest` names nor one being restored.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

/// [`DumpOptions::keep`] when the caller does not say: the newest and two
/// before it, a quarter of an hour of fallbacks for a program that
/// checkpoints every five minutes, at three times the disk of one
/// checkpoint.
pub const DEFAULT_KEEP: u32 = 3;

fn default_keep() -> u32 {
    DEFAULT_KEEP
}

/// For logs: what the dump does, in CRIU's words (`keep 3, leave
/// running, tcp-established`).
impl fmt::Display for DumpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = if self.leave_running {
            "leave running"
        } else {
            "exit after the dump"
        };
        write!(f, "keep {}, {end}", self.keep)?;
        for (on, name) in [
            (self.tcp_established, "tcp-established"),
            (self.file_locks, "file-locks"),
            (self.ext_unix_sk, "ext-unix-sk"),
            (self.pre_dump, "pre-dump"),
        ] {
            if on {
                write!(f, ", {name}")?;
            }
        }
        Ok(())
    }
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            leave_running: true,
            tcp_established: false,
            file_locks: false,
            ext_unix_sk: false,
            pre_dump: false,
            copy_slot_fd: None,
            keep: DEFAULT_KEEP,
        }
    }
}

/// Names one dump: the service instance that ran it and its sequence number.
/// A restarted service has a new `service` value, so it can tell that it
/// never ran an old job.
///
/// On the wire (MessagePack) it is the two numbers. In a human-readable
/// format (JSON: `selfdump inspect --json`) it is the string it displays
/// as, `SERVICE-SEQ` with the service in hex: a `u64` above 2^53 is not a
/// number every JSON reader keeps exact.
///
/// ```
/// let job: selfdump::proto::JobId = "3cd8044016212a2b-1".parse().unwrap();
/// assert_eq!(job.service, 0x3cd8044016212a2b);
/// assert_eq!(job.to_string(), "3cd8044016212a2b-1");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct JobId {
    /// Random per service start.
    pub service: u64,
    /// Counts jobs within one service start.
    pub seq: u64,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.service, self.seq)
    }
}

impl std::str::FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a job id (SERVICE-SEQ, the service in hex)");
        let (service, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            service: u64::from_str_radix(service, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// [`JobId`] as it travels: its two numbers.
#[derive(Serialize, Deserialize)]
#[serde(rename = "JobId", deny_unknown_fields)]
struct JobIdFields {
    service: u64,
    seq: u64,
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_str(self);
        }
        JobIdFields {
            service: self.service,
            seq: self.seq,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            return text.parse().map_err(serde::de::Error::custom);
        }
        let JobIdFields { service, seq } = JobIdFields::deserialize(d)?;
        Ok(Self { service, seq })
    }
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The caller's tree is frozen and the dump goes on; this is the last
    /// frame on the connection, which the service then closes. Both the
    /// original and every copy restored from the images read it.
    Frozen(FrozenNotice),
    /// The request was refused before anything ran.
    Refused(Refusal),
    /// The job finished and its images are on disk.
    Dumped(DumpReport),
    /// The dump failed; the caller's process was left running.
    DumpFailed(DumpFailure),
    /// The service knows nothing of this job (it may have restarted, or the
    /// result expired): the outcome is unknown.
    UnknownJob(JobId),
    /// The images were restored.
    Restored(RestoreReport),
    /// The images verified, but CRIU could not restore them.
    RestoreFailed(String),
}

/// The last frame of a checkpoint's connection, queued while the tree is
/// frozen: the original and every restored copy read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenNotice {
    /// The job dumping the tree.
    pub job: JobId,
    /// The generation the images become once committed: a directory of
    /// that name inside the images directory, which `latest` then names.
    /// Decided before the dump, so a copy restored from the images knows
    /// which generation it came from.
    pub generation: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The class of refusal.
    pub kind: RefusalKind,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

/// Classes of refusal, so programs can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The request was malformed or missing its directory fd.
    BadRequest,
    /// The policy does not allow this caller, or the caller may not be dumped.
    NotPermitted,
    /// The images directory is unusable (not a directory, not writable by the caller).
    BadDirectory,
    /// Too many dumps at once; try again later.
    Busy,
    /// The service is shutting down.
    ShuttingDown,
    /// The request is not valid in this state (e.g. a result that expired
    /// before its process asked for it).
    Invalid,
    /// This machine, or this version of the service, cannot do what was asked.
    Unsupported,
}

/// For logs and messages: `not permitted`, `busy`, ...
impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadRequest => "bad request",
            Self::NotPermitted => "not permitted",
            Self::BadDirectory => "bad directory",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting down",
            Self::Invalid => "invalid",
            Self::Unsupported => "unsupported",
        })
    }
}

/// What a finished dump took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpReport {
    /// The job.
    pub job: JobId,
    /// The generation committed: a directory of that name inside the
    /// images directory, which `latest` names.
    pub generation: String,
    /// Microseconds the tree was frozen, from CRIU's own statistics.
    pub frozen_us: u64,
    /// Microseconds CRIU took to freeze the tree.
    pub freezing_us: u64,
    /// Microseconds CRIU spent dumping memory (collecting the pages, the
    /// tree frozen).
    pub memdump_us: u64,
    /// Microseconds CRIU spent writing the pages out.
    pub memwrite_us: u64,
    /// Microseconds from the service receiving the request to the images being on disk.
    pub total_us: u64,
    /// Microseconds putting the generation on disk took (`syncfs`, and
    /// `fsync` of the images directory around the commit; in `total_us`).
    pub sync_us: u64,
    /// Microseconds of the frozen time spent waiting for the service (its
    /// checks and answers at CRIU's notifications); the rest is CRIU's.
    pub service_frozen_us: u64,
    /// Memory pages CRIU looked at.
    pub pages_scanned: u64,
    /// Memory pages CRIU wrote.
    pub pages_written: u64,
    /// Bytes of image files written.
    pub bytes_written: u64,
    /// Number of processes in the dumped tree.
    pub processes: u32,
}

/// Why a dump failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpFailure {
    /// The job, when it got that far.
    pub job: Option<JobId>,
    /// CRIU's (or the service's) message.
    pub message: String,
    /// Name of the dump log inside the images directory, when one was kept.
    pub log_file: Option<String>,
}

/// Longest text (a refusal or a failure message) the service sends; longer
/// ones are cut, so that no message can exceed the frame limit.
pub const MAX_TEXT: usize = 4096;

/// Cuts `text` to at most [`MAX_TEXT`] bytes, on a character boundary.
///
/// ```
/// let long = "é".repeat(5000);
/// assert!(selfdump::proto::clip(long).len() <= selfdump::proto::MAX_TEXT);
/// ```
pub fn clip(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}
