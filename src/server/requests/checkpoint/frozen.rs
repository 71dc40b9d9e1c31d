//! What the service does while CRIU holds the caller's tree frozen: check
//! the tree, tell the caller, save the images before an "exit after dump"
//! ends the tree.

use crate::procfs::PROC;
use crate::proto::{FrozenNotice, JobId};
use crate::server::caller::pidns;
use crate::server::caller::process::Process;
use crate::server::caller::status::TaskStatus;
use crate::server::caller::tree::check_frozen_tree;
use crate::server::conn::{Connection, Peer};
use crate::server::engine::{DumpHooks, FrozenVerdict};
use crate::server::fs::staging::Staging;
use crate::server::images::format::{ImageMeta, Published};

/// A value lent to the file-work threads and given back: the staging
/// directory between CRIU's notifications.
pub(super) struct Lent<T>(Option<T>);

impl<T: Send + 'static> Lent<T> {
    pub(super) fn new(value: T) -> Self {
        Self(Some(value))
    }

    /// Runs `f` on the value on a file-work thread.
    async fn with<R: Send + 'static>(&mut self, f: impl FnOnce(&mut T) -> R + Send + 'static) -> R {
        let mut value = self.0.take().expect("given back after every loan");
        let (value, r) = blocking::unblock(move || {
            let r = f(&mut value);
            (value, r)
        })
        .await;
        self.0 = Some(value);
        r
    }

    pub(super) fn into_inner(self) -> T {
        self.0.expect("given back after every loan")
    }
}

/// What the service does while CRIU holds the caller's tree frozen.
pub(super) struct Hooks<'a> {
    pub(super) peer: &'a Peer,
    /// The dump's root when it is not the caller: its namespace's init.
    pub(super) root: Option<&'a Process>,
    /// The caller's copy slot fd (`DumpOptions::copy_slot_fd`).
    pub(super) copy_slot_fd: Option<i32>,
    pub(super) caller: &'a TaskStatus,
    pub(super) job: JobId,
    /// The caller's connection, closed at the freeze (kept open when the
    /// freeze is vetoed: the caller then reads the error on it).
    pub(super) conn: &'a mut Connection,
    pub(super) staging: Lent<Staging>,
    /// The generation the images become (told the caller at the freeze).
    pub(super) generation: String,
    pub(super) meta: ImageMeta,
    /// "Exit after dump": CRIU ends the tree after `post-dump`, so the images
    /// are saved before that, or the tree is kept alive.
    pub(super) save_before_exit: bool,
    pub(super) saved: Option<Published>,
}

impl DumpHooks for Hooks<'_> {
    async fn frozen(&mut self) -> FrozenVerdict {
        if !self.conn.is_open() {
            return FrozenVerdict::Veto("criu announced the freeze twice".into());
        }
        match self.at_freeze().await {
            Ok(()) => FrozenVerdict::Proceed,
            Err(why) => {
                log::warn!("job {}: vetoed at the freeze: {why}", self.job);
                FrozenVerdict::Veto(why)
            }
        }
    }

    async fn images_written(&mut self) -> FrozenVerdict {
        if !self.save_before_exit {
            return FrozenVerdict::Proceed;
        }
        let meta = self.meta.clone();
        match self.staging.with(move |staging| staging.save(&meta)).await {
            Ok(saved) => {
                self.saved = Some(saved);
                FrozenVerdict::Proceed
            }
            Err(e) => FrozenVerdict::Veto(format!(
                "the images could not be saved ({e}), so the process was left running"
            )),
        }
    }
}

impl Hooks<'_> {
    /// Runs with the tree frozen, before CRIU collects sockets: checks the
    /// caller is still the process that asked and every task of its tree
    /// may be dumped for it, notes its copy slot, then tells it it is
    /// frozen and closes its connection, so that CRIU records it
    /// half-closed. `Err` is why the dump must not go on.
    async fn at_freeze(&mut self) -> Result<(), String> {
        // A whole namespace: every task under its init, the caller among them.
        let caller = &self.peer.process;
        check_frozen_tree(PROC, self.root.unwrap_or(caller), self.caller)?;
        caller.alive_or("the caller exited while its tree was checked")?;
        let copy_slot = self
            .copy_slot_fd
            .and_then(|fd| pidns::copy_slot(PROC, caller, fd));
        let notice = FrozenNotice {
            job: self.job,
            generation: self.generation.clone(),
        };
        self.conn.tell_frozen(notice).await?;
        self.meta.copy_slot = copy_slot;
        Ok(())
    }
}
