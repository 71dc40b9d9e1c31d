//! Restore needs every pid, session and process group of the images free
//! (CRIU recreates them): these checks name the process holding one.

use super::settings::RestoreError;
use crate::procfs::{self, PROC};
use crate::server::images::criu_entries::PstreeEntry;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Checks that every pid, session id and process group id of the images is
/// free; names the first that is not. With `shell_job`, the root's session
/// and group come from the restorer and are not checked.
pub fn check_ids_free(tree: &[PstreeEntry], shell_job: bool) -> Result<(), RestoreError> {
    let Some(root) = tree.first() else {
        return Ok(());
    };
    let pids: BTreeSet<u32> = tree
        .iter()
        .flat_map(|t| std::iter::once(t.pid).chain(t.threads.iter().copied()))
        .collect();
    for &pid in &pids {
        if PROC.exists(pid) {
            return Err(RestoreError::IdInUse {
                what: "pid",
                id: pid,
                holder: describe(pid),
            });
        }
    }
    // A session or group outlives its leader while a member lives (an
    // orphaned child holding the old group, say).
    for task in tree {
        for (what, id) in [("session", task.sid), ("process group", task.pgid)] {
            let inherited = shell_job && (id == root.sid || id == root.pgid);
            if inherited {
                continue;
            }
            if let Some(member) = member_of(what, id) {
                return Err(RestoreError::IdInUse {
                    what,
                    id,
                    holder: describe(member),
                });
            }
        }
    }
    Ok(())
}

/// A live process whose session or process group is `id`.
fn member_of(what: &str, id: u32) -> Option<u32> {
    let field = if what == "session" {
        procfs::SESSION
    } else {
        procfs::PGRP
    };
    PROC.pids().ok()?.into_iter().find_map(|pid| {
        let stat = PROC.read(pid, "stat").ok()?;
        let pid = u32::try_from(pid).ok()?;
        (procfs::field::<u32>(&stat, field) == Some(id)).then_some(pid)
    })
}

fn describe(pid: u32) -> String {
    let name = PROC.read(pid, "comm").unwrap_or_default();
    let state = PROC
        .read(pid, "stat")
        .ok()
        .and_then(|s| procfs::field::<String>(&s, procfs::STATE))
        .unwrap_or_default();
    let zombie = if state == "Z" { ", a zombie" } else { "" };
    format!("process {pid} ({}{zombie})", name.trim())
}

/// Like [`check_ids_free`], but waits up to `timeout` for the ids to be
/// freed (a previous restored tree still dying, or not reaped yet), polling.
/// After the timeout, names the process still holding one.
pub fn wait_ids_free(
    tree: &[PstreeEntry],
    shell_job: bool,
    timeout: Duration,
) -> Result<(), RestoreError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        match check_ids_free(tree, shell_job) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => log::debug!("waiting: {e}"),
        }
        std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}
