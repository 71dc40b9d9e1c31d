//! Resources that must be put away before a checkpoint and brought back
//! after it, CRaC style.
//!
//! Register each [`Resource`] with [`Hooks`], then checkpoint through
//! [`Hooks::checkpoint`]:
//!
//! - `before_checkpoint` runs in reverse order of registration (the last
//!   resource set up is the first put away);
//! - then the checkpoint;
//! - `after_restore` (in a restored copy) or `after_continue` (in the
//!   original, whether the dump succeeded or failed) runs in order of
//!   registration.
//!
//! When a `before_checkpoint` fails, nothing is dumped: the resources
//! already put away get their `after_continue`, and the checkpoint returns
//! [`Error::Hook`] with that failure.
//!
//! ```no_run
//! use selfdump::{Hooks, HookError, Options, Resource};
//! use std::net::TcpListener;
//!
//! struct Listener(Option<TcpListener>, std::net::SocketAddr);
//!
//! impl Resource for Listener {
//!     fn before_checkpoint(&mut self) -> Result<(), HookError> {
//!         self.0 = None; // close it: the images hold no socket
//!         Ok(())
//!     }
//!     fn after_restore(&mut self) -> Result<(), HookError> {
//!         self.0 = Some(TcpListener::bind(self.1)?);
//!         Ok(())
//!     }
//!     fn after_continue(&mut self) -> Result<(), HookError> {
//!         self.after_restore()
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let addr = "127.0.0.1:8080".parse()?;
//! let mut hooks = Hooks::new();
//! hooks.register("http listener", Listener(Some(TcpListener::bind(addr)?), addr));
//! let outcome = selfdump::blocking::checkpoint_with(&mut hooks, Options::new("/tmp/images"))?;
//! # Ok(()) }
//! ```

pub use super::error::{HookError, HookFailure, Phase};
use super::{Error, Options, Outcome, checkpoint};
use std::fmt;

/// Something the application must put away before a checkpoint and bring
/// back after it: a listening socket, a connection to a database, a lock
/// file, a device. Every method does nothing by default.
pub trait Resource: Send {
    /// Called before the dump, in reverse order of registration. An error
    /// aborts the checkpoint.
    fn before_checkpoint(&mut self) -> Result<(), HookError> {
        Ok(())
    }

    /// Called in a copy restored from the images, in order of registration.
    fn after_restore(&mut self) -> Result<(), HookError> {
        Ok(())
    }

    /// Called in the original process after the checkpoint (or after an
    /// aborted or failed one), in order of registration.
    fn after_continue(&mut self) -> Result<(), HookError> {
        Ok(())
    }
}

/// The registered resources, in order of registration.
#[derive(Default)]
pub struct Hooks {
    resources: Vec<(String, Box<dyn Resource>)>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.resources.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Hooks {
    /// No resources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a resource under a name used in errors.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        resource: impl Resource + 'static,
    ) -> &mut Self {
        self.resources.push((name.into(), Box::new(resource)));
        self
    }

    /// How many resources are registered.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether no resource is registered.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Runs the `before_checkpoint` hooks, [`checkpoint`], then the
    /// `after_restore` or `after_continue` hooks (see the [module](self)).
    ///
    /// The preflight of [`checkpoint`] runs after the `before_checkpoint`
    /// hooks, so that what they close is not reported.
    pub async fn checkpoint(&mut self, options: Options) -> Result<Outcome, Error> {
        self.before_checkpoint()?;
        match checkpoint(options).await {
            Ok(outcome @ Outcome::Restored(_)) => self.after(Phase::AfterRestore, outcome),
            Ok(outcome @ Outcome::Continued(_)) => self.after(Phase::AfterContinue, outcome),
            Err(e) => {
                // The original goes on: give it its resources back, but
                // report the checkpoint's error, which came first.
                let failures = self.run_after(Phase::AfterContinue, 0);
                for (name, error) in failures {
                    log::warn!(
                        "after-continue hook of {name:?} failed after a failed checkpoint: {error}"
                    );
                }
                Err(e)
            }
        }
    }

    /// Runs every `before_checkpoint`, last registered first; on a failure,
    /// undoes the ones that ran and returns the failure.
    pub(crate) fn before_checkpoint(&mut self) -> Result<(), Error> {
        for i in (0..self.resources.len()).rev() {
            let (name, resource) = &mut self.resources[i];
            if let Err(error) = resource.before_checkpoint() {
                let name = name.clone();
                for (undo, e) in self.run_after(Phase::AfterContinue, i + 1) {
                    log::warn!("undoing before-checkpoint of {undo:?} failed: {e}");
                }
                return Err(Error::Hook(HookFailure {
                    phase: Phase::BeforeCheckpoint,
                    failures: vec![(name, error)],
                    outcome: None,
                }));
            }
        }
        Ok(())
    }

    fn after(&mut self, phase: Phase, outcome: Outcome) -> Result<Outcome, Error> {
        let failures = self.run_after(phase, 0);
        if failures.is_empty() {
            Ok(outcome)
        } else {
            Err(Error::Hook(HookFailure {
                phase,
                failures,
                outcome: Some(Box::new(outcome)),
            }))
        }
    }

    /// Runs the `phase` hook of the resources from `from` on, in order of
    /// registration, every one even when some fail.
    fn run_after(&mut self, phase: Phase, from: usize) -> Vec<(String, HookError)> {
        let mut failures = Vec::new();
        for (name, resource) in self.resources.iter_mut().skip(from) {
            let result = match phase {
                Phase::AfterRestore => resource.after_restore(),
                _ => resource.after_continue(),
            };
            if let Err(e) = result {
                failures.push((name.clone(), e));
            }
        }
        failures
    }
}
