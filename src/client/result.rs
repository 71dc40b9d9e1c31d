//! The original process, thawed, asks the service for the result of its
//! dump on a new connection. The service keeps that result for it, so a
//! service that is busy at the accept (at its connection limit, out of
//! fds) is asked again after a pause, for a while: only a service that
//! stays busy past that makes the checkpoint fail, and then as a refusal
//! to retry, never as an outcome unknown.

use super::wire::{ask, connect, unexpected};
use super::{Error, Outcome, Report};
use crate::proto::{JobId, RefusalKind, Request, Response, encode_frame};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a busy service is asked again for a result.
const PATIENCE: Duration = Duration::from_secs(10);
/// The first pause after a busy answer; each next one doubles, up to 1 s.
const FIRST_PAUSE: Duration = Duration::from_millis(20);

/// Asks the service at `socket` for the result of `job`, the dump into
/// `images_dir`.
pub(super) async fn result(
    socket: &Path,
    job: JobId,
    images_dir: PathBuf,
) -> Result<Outcome, Error> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        match ask_once(socket, job, &images_dir).await {
            Err(Error::Refused {
                kind: RefusalKind::Busy,
                message,
            }) => {
                if started.elapsed() >= PATIENCE {
                    return Err(still_busy(job, &message));
                }
                log::debug!("checkpoint {job}: the service is busy ({message}); asking again");
                async_io::Timer::after(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// The refusal of a service that stayed busy: the dump itself ran (its
/// images may be committed, `latest` names the newest whole generation
/// either way), but its result could not be fetched; checkpointing again
/// later is what to do.
fn still_busy(job: JobId, message: &str) -> Error {
    Error::Refused {
        kind: RefusalKind::Busy,
        message: format!(
            "{message} (asked for {}s for the result of checkpoint {job}, whose dump ran: \
             `latest` names the newest whole generation; checkpoint again later)",
            PATIENCE.as_secs()
        ),
    }
}

/// One connection, one question. A refusal other than `Busy` ("result
/// expired") and a lost connection leave the outcome unknown.
async fn ask_once(socket: &Path, job: JobId, images_dir: &Path) -> Result<Outcome, Error> {
    let stream = match connect(socket).await {
        Ok(stream) => stream,
        Err(e @ Error::Refused { .. }) => return Err(e),
        Err(e) => {
            return Err(Error::OutcomeUnknown {
                job,
                reason: format!("cannot ask the service for the result: {e}"),
            });
        }
    };
    match ask(&stream, &encode_frame(&Request::Result(job)), &[]).await {
        Ok(Response::Dumped(report)) => Ok(Outcome::Continued(Report::of(
            report,
            images_dir.to_path_buf(),
        ))),
        Ok(Response::UnknownJob(job)) => Err(Error::OutcomeUnknown {
            job,
            reason: "the service does not know this job (it restarted, or the result expired)"
                .into(),
        }),
        Ok(Response::Refused(r)) if r.kind == RefusalKind::Busy => Err(Error::Refused {
            kind: r.kind,
            message: r.message,
        }),
        // "result expired": the service dropped the result unclaimed
        Ok(Response::Refused(r)) => Err(Error::OutcomeUnknown {
            job,
            reason: r.message,
        }),
        Ok(other) => Err(unexpected(other, images_dir)),
        Err(Error::Protocol(e)) => Err(Error::OutcomeUnknown {
            job,
            reason: format!("the service did not answer the result query: {e}"),
        }),
        Err(e) => Err(e),
    }
}
