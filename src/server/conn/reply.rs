//! What the service decided, in its own terms: a refusal (kind and
//! message), how a dump ended, why a result cannot be handed out, and
//! what a request handler leaves its connection to send ([`Reply`]). They
//! become wire [`Response`]s here and nowhere else (the `From` impls).

use crate::proto::{DumpFailure, DumpReport, JobId, Refusal, RefusalKind, Response, clip};

/// The service will not do what was asked, for this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) kind: RefusalKind,
    pub(crate) message: String,
}

impl Refused {
    pub(crate) fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A `NotPermitted` refusal.
    pub(crate) fn not_permitted(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::NotPermitted, message)
    }

    /// A `Busy` refusal.
    pub(crate) fn busy(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Busy, message)
    }

    /// A `BadDirectory` refusal.
    pub(crate) fn bad_directory(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::BadDirectory, message)
    }

    /// A `BadRequest` refusal.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::BadRequest, message)
    }

    /// What a request gets once the server is asked to stop.
    pub(crate) fn shutting_down() -> Self {
        Self::new(
            RefusalKind::ShuttingDown,
            "the selfdump service is shutting down; retry against its successor",
        )
    }
}

/// What a request handler leaves its connection to send.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Send this, then close.
    Answer(Response),
    /// Nothing: the connection was closed at the freeze, and the caller
    /// collects its answer as the result of its job.
    ThroughJob,
}

impl<T: Into<Response>> From<T> for Reply {
    fn from(answer: T) -> Self {
        Self::Answer(answer.into())
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused ({}): {}", self.kind, self.message)
    }
}

/// An answer in one line for the service log (never a Rust `Debug` value),
/// and whether it is worth a warning (something failed).
pub(crate) fn logged(answer: &Response) -> (log::Level, String) {
    use log::Level::{Info, Warn};
    match answer {
        Response::Refused(r) => (Info, format!("refused ({}): {}", r.kind, r.message)),
        Response::Frozen(_) => (Info, "frozen".into()),
        Response::Dumped(r) => (Info, format!("dumped, {} bytes", r.bytes_written)),
        Response::DumpFailed(f) => (Warn, format!("dump failed: {}", f.message)),
        Response::UnknownJob(job) => (Info, format!("unknown job {job}")),
        Response::Restored(r) => (
            Info,
            format!(
                "restored as pid {} (owner uid {}{})",
                r.pid,
                r.owner,
                r.generation
                    .as_deref()
                    .map_or(String::new(), |g| format!(", generation {g}"))
            ),
        ),
        Response::RestoreFailed(m) => (Warn, format!("restore failed: {m}")),
    }
}

impl From<Refused> for Response {
    fn from(r: Refused) -> Self {
        Response::Refused(Refusal {
            kind: r.kind,
            message: clip(r.message),
        })
    }
}

/// How a dump that started ended: what its job keeps for the caller.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The images are saved.
    /// (boxed: by far the largest of what a dump can end with)
    Dumped(Box<DumpReport>),
    /// No usable images.
    Failed {
        /// The job, if one had started.
        job: Option<JobId>,
        /// Why.
        message: String,
        /// CRIU's log, kept in the images directory.
        log_file: Option<String>,
    },
}

impl Outcome {
    pub(crate) fn failed(job: Option<JobId>, message: impl Into<String>) -> Self {
        Self::Failed {
            job,
            message: message.into(),
            log_file: None,
        }
    }

    /// One line for the service log.
    pub(crate) fn summary(&self) -> String {
        match self {
            Self::Dumped(r) => format!(
                "dumped {} process(es), {} bytes, frozen {} us, total {} us",
                r.processes, r.bytes_written, r.frozen_us, r.total_us
            ),
            Self::Failed { message, .. } => format!("failed: {message}"),
        }
    }
}

impl From<Outcome> for Response {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Dumped(report) => Response::Dumped(*report),
            Outcome::Failed {
                job,
                message,
                log_file,
            } => Response::DumpFailed(DumpFailure {
                job,
                message: clip(message),
                log_file,
            }),
        }
    }
}

/// Why a job's result is not handed to the asker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unclaimed {
    /// No such job for this asker (anyone but its owner is told this too).
    Unknown(JobId),
    /// The owner's result was dropped unclaimed (a cap or the TTL).
    Expired(JobId),
}

impl From<Unclaimed> for Response {
    fn from(u: Unclaimed) -> Self {
        match u {
            Unclaimed::Unknown(id) => Response::UnknownJob(id),
            Unclaimed::Expired(id) => Refused::new(
                RefusalKind::Invalid,
                format!(
                    "result expired: the service dropped the result of checkpoint {id} \
                     before you asked for it (too many unclaimed results, or it waited \
                     longer than the result TTL); whether that dump succeeded is unknown"
                ),
            )
            .into(),
        }
    }
}
