//! Slots counted per uid (open connections, running dumps and restores),
//! each given back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open connections or running dumps, per uid.
pub(super) type UidCounts = Arc<Mutex<HashMap<u32, usize>>>;

/// One of a uid's slots (connections or dumps), given back on drop.
#[derive(Debug)]
pub(super) struct UidSlot {
    counts: UidCounts,
    uid: u32,
}

impl UidSlot {
    /// The uid this slot is counted for.
    pub(super) fn uid(&self) -> u32 {
        self.uid
    }

    /// A slot for `uid` if it holds fewer than `max`.
    pub(super) fn take(counts: &UidCounts, uid: u32, max: usize) -> Option<Self> {
        let mut counts_now = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts_now.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}
