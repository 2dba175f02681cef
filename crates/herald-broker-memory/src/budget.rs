//! History byte accounting and the node-wide byte budget.
//!
//! Every stream adds and removes its stored bytes here, so the node's total
//! is known without walking the rooms. When the total passes the budget,
//! the oldest events of any room go first until it is back at
//! [`LOW_WATER`] of the budget: one walk over the rooms pays for many
//! publishes, instead of one walk per publish.

use crate::stream::RoomStream;
use herald_core::HistoryTrims;
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Fraction (in eighths) of the node-wide budget a trim brings the total
/// back to.
const LOW_WATER: usize = 7;

/// Why an event left history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trim {
    Size,
    Ttl,
    RoomBytes,
    TotalBytes,
}

/// Bytes held by all rooms' history, and trim counts by reason.
#[derive(Default)]
pub(crate) struct Accounting {
    bytes: AtomicUsize,
    size: AtomicU64,
    ttl: AtomicU64,
    room_bytes: AtomicU64,
    total_bytes: AtomicU64,
}

impl Accounting {
    pub(crate) fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, bytes: usize, why: Trim) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        let counter = match why {
            Trim::Size => &self.size,
            Trim::Ttl => &self.ttl,
            Trim::RoomBytes => &self.room_bytes,
            Trim::TotalBytes => &self.total_bytes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn trims(&self) -> HistoryTrims {
        HistoryTrims {
            size: self.size.load(Ordering::Relaxed),
            ttl: self.ttl.load(Ordering::Relaxed),
            room_bytes: self.room_bytes.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Trims the oldest events across `streams` (oldest by store time, whatever
/// the room) until `acct` is at [`LOW_WATER`] eighths of `budget`. Locks
/// one stream at a time, never the room map.
pub(crate) fn trim_to_budget(
    streams: Vec<Arc<Mutex<RoomStream>>>,
    budget: usize,
    acct: &Accounting,
) {
    let target = budget / 8 * LOW_WATER;
    let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = streams
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.lock().oldest_stored_at().map(|t| Reverse((t, i))))
        .collect();
    while acct.bytes() > target {
        let Some(Reverse((at, i))) = heap.pop() else {
            return;
        };
        let mut stream = streams[i].lock();
        match stream.oldest_stored_at() {
            // The room trimmed its own front meanwhile: requeue it by its
            // new oldest event, so the order across rooms holds.
            Some(now_oldest) if now_oldest > at => heap.push(Reverse((now_oldest, i))),
            Some(_) => {
                stream.pop_front(acct, Trim::TotalBytes);
                if let Some(next) = stream.oldest_stored_at() {
                    heap.push(Reverse((next, i)));
                }
            }
            None => {}
        }
    }
}
