//! `criu swrk` workers started ahead of time, so that a dump does not wait
//! for CRIU to exec and start. `benches/checkpoint/workers.rs` measured the
//! gain on these VMs: 3–11 ms per dump over three runs, for workers that had
//! waited 50 ms to 10 s (BENCHMARKS.md).

use super::{Criu, Worker};
use std::sync::{Arc, Mutex};

/// Up to `size` started workers, each used for one dump.
///
/// A worker that died while it waited (killed by an operator, say) is
/// reaped and skipped; a dump that finds none ready starts its own, as
/// without a pool.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    criu: Criu,
    size: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<Worker>,
    /// Workers being started by `refill`.
    starting: usize,
    stopped: bool,
}

impl WorkerPool {
    /// A pool of at most `size` ready workers running `criu` (0: none, every
    /// dump starts its own). Nothing starts until [`WorkerPool::refill`].
    pub(crate) fn new(criu: Criu, size: usize) -> Arc<Self> {
        Arc::new(Self {
            criu,
            size,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A ready worker if a live one waits (the caller starts one
    /// otherwise, off the executor: a fork and an exec).
    pub(crate) fn take_ready(&self) -> Option<Worker> {
        loop {
            let mut worker = self.state().ready.pop()?;
            if worker.is_alive() {
                return Some(worker);
            }
            log::warn!("a waiting criu swrk worker had exited; skipping it");
        }
    }

    /// Starts workers, on a thread of the `blocking` pool, until `size`
    /// are ready or starting. A failure is logged: dumps then start their own.
    pub(crate) fn refill(self: &Arc<Self>) {
        let missing = {
            let mut state = self.state();
            if state.stopped {
                return;
            }
            let missing = self.size.saturating_sub(state.ready.len() + state.starting);
            state.starting += missing;
            missing
        };
        for _ in 0..missing {
            let pool = self.clone();
            blocking::unblock(move || {
                let started = Worker::start(&pool.criu);
                let mut state = pool.state();
                state.starting -= 1;
                match started {
                    Ok(worker) if !state.stopped => state.ready.push(worker),
                    Ok(worker) => {
                        drop(state);
                        futures_lite::future::block_on(worker.finish(true));
                    }
                    Err(e) => log::warn!("cannot start a criu swrk worker ahead: {e}"),
                }
            })
            .detach();
        }
    }

    /// Stops the waiting workers and reaps them, once those being started
    /// are up; no more start.
    pub(crate) async fn stop(&self) {
        self.state().stopped = true;
        while self.state().starting > 0 {
            async_io::Timer::after(std::time::Duration::from_millis(5)).await;
        }
        let ready = std::mem::take(&mut self.state().ready);
        for worker in ready {
            worker.finish(true).await;
        }
    }
}
