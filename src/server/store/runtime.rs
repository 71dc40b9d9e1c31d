//! The store's own tokio runtime. `object_store`'s cloud clients (reqwest,
//! hyper, tokio's timers) must run inside a tokio runtime; the rest of the
//! crate runs under any executor. So the store's work is spawned on a
//! runtime of its own, started at its first use (two worker threads, a
//! bounded pool for compression and file reads), and awaited through its
//! join handle, which is an ordinary future: `async_io::block_on`, smol,
//! async-std or a tokio of the application's all can wait for it.

use super::Error;
use std::future::Future;
use std::sync::Mutex;

fn runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RUNTIME: Mutex<Option<&'static tokio::runtime::Runtime>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = *slot {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("selfdump-store")
        .enable_all()
        .build()
        .map_err(|e| Error::Local(format!("cannot start the store's runtime: {e}")))?;
    // lives as long as the process: its threads serve every later call
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *slot = Some(rt);
    Ok(rt)
}

/// Runs `work` on the store's runtime and waits for it from any executor.
pub(crate) async fn on_runtime<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match runtime()?.spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Local(format!("the store's work was cancelled: {e}"))),
    }
}

/// Runs blocking `work` (file reads, hashing, compression) on the
/// runtime's pool; to be awaited on the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Local(format!("cancelled: {e}"))),
    }
}

/// Chunks read, compressed or transferred at once.
pub(crate) const IN_FLIGHT: usize = 8;

/// Runs a future `start` makes of each job, at most [`IN_FLIGHT`] at once,
/// on the runtime, handing each result to `each`. After a failure no job
/// starts, those running finish (a write in flight is never cut short),
/// and the first error is returned.
pub(crate) async fn bounded<J, T, F>(
    jobs: impl IntoIterator<Item = J>,
    mut start: impl FnMut(J) -> F,
    mut each: impl FnMut(T),
) -> Result<(), Error>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut jobs = jobs.into_iter();
    let mut failed = None;
    loop {
        while failed.is_none()
            && tasks.len() < IN_FLIGHT
            && let Some(job) = jobs.next()
        {
            tasks.spawn(start(job));
        }
        let Some(finished) = tasks.join_next().await else {
            break;
        };
        match finished {
            Ok(Ok(value)) => each(value),
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                failed.get_or_insert(Error::Local(format!("cancelled: {e}")));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}
