//! Reading a room: its position is its last message's (direct get by
//! subject); a room without messages reads as offset 0 in the engine
//! epoch, and nothing is written. History is the room's stored messages
//! after an offset, with the room's policy as of its last message applied
//! on read: the last `history.size` events, each until its own expiry,
//! and the newest ones within `history.max_bytes` (each message carries
//! the room's cumulative byte count, so the budget needs no scan).
//!
//! nats-server 2.9 has no batched direct get, so a page is read one
//! message at a time (`next_by_subj`), after a binary search over stream
//! sequences for its first message: ~log2(stream length) + page length
//! round trips.

use super::error::internal;
use super::message::{self, now_ms, Stored};
use super::publish::Last;
use super::NatsBroker;
use async_nats::jetstream::stream::DirectGetErrorKind;
use herald_core::{BrokerError, RoomKey};
use herald_engine_kit::history::{Page, MAX_READ};
use herald_protocol::StreamPosition;
use std::sync::Arc;

/// The room's history policy and head, as its last message says.
#[derive(Clone, Copy)]
struct Head {
    offset: u64,
    size: u64,
    budget: u64,
    cb: u64,
}

impl Head {
    fn of(last: &Stored) -> Self {
        Self {
            offset: last.publication.position.offset,
            size: last.meta.k as u64,
            budget: last.meta.b as u64,
            cb: last.cb,
        }
    }
}

/// Whether `m` is in the history `head` defines, after `since`: monotone
/// over a room's messages (false, then true).
fn wanted(m: &Stored, head: Head, since: u64, now: u64) -> bool {
    let offset = m.publication.position.offset;
    let by_size = offset + head.size > head.offset;
    let before = m.cb.saturating_sub(m.bytes);
    let by_bytes = head.budget == 0 || head.cb.saturating_sub(before) <= head.budget;
    offset > since && by_size && by_bytes && m.meta.ex > now
}

impl NatsBroker {
    /// The message of `room` at or after stream sequence `seq`.
    async fn next_at(&self, room: &RoomKey, seq: u64) -> Result<Option<Stored>, BrokerError> {
        let stream = self.stream_handle()?;
        let subject = self.names.room_subject(room);
        let started = std::time::Instant::now();
        let got = stream.direct_get_next_for_subject(subject, Some(seq)).await;
        let ok = match &got {
            Ok(_) => true,
            Err(e) => matches!(e.kind(), DirectGetErrorKind::NotFound),
        };
        crate::commands::HISTORY.record(started.elapsed(), ok);
        match got {
            Ok(m) => message::decode(room.clone(), Some(m.sequence), &m.headers, &m.payload)
                .map(Some)
                .map_err(|e| internal("a room's message", e)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(self.read_failed("reading a room's message", e)),
        }
    }

    /// The room's position and up to `limit` stored publications after
    /// `since`, oldest first.
    pub(super) async fn read(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        self.check_ready()?;
        let Some(last) = self.read_last(room).await? else {
            return Ok(Page {
                position: StreamPosition::new(self.engine_epoch().await?, 0),
                publications: Vec::new(),
            });
        };
        self.published.saw(
            room,
            Last {
                seq: last.seq,
                position: last.publication.position.clone(),
                cb: last.cb,
            },
        );
        let position = last.publication.position.clone();
        let head = Head::of(&last);
        let limit = limit.min(MAX_READ);
        let now = now_ms();
        if limit == 0 || since >= position.offset || !wanted(&last, head, since, now) {
            return Ok(Page {
                position,
                publications: Vec::new(),
            });
        }
        // The first wanted message: a binary search over sequences, from
        // the room's first stored message to its last.
        let Some(first) = self.next_at(room, 0).await? else {
            return Ok(Page {
                position,
                publications: Vec::new(),
            });
        };
        let start = if wanted(&first, head, since, now) {
            first
        } else {
            // Invariant: `best` is the room's first message at or after
            // sequence `hi`, and it is wanted.
            let (mut lo, mut hi) = (first.seq + 1, last.seq);
            let mut best = None;
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match self.next_at(room, mid).await? {
                    Some(m) if wanted(&m, head, since, now) => {
                        hi = mid;
                        best = Some(m);
                    }
                    // Every sequence up to `m.seq` leads to `m`.
                    Some(m) => lo = m.seq + 1,
                    None => break,
                }
            }
            best.unwrap_or(last)
        };
        let mut publications = Vec::new();
        let mut next = Some(start);
        while let Some(m) = next.take() {
            let (seq, offset) = (m.seq, m.publication.position.offset);
            if offset > position.offset {
                break;
            }
            // Clocks of different publishers may disagree on expiries: an
            // event left out leaves a hole, and the page is incomplete.
            if wanted(&m, head, since, now) {
                publications.push(Arc::new(m.publication));
            }
            if publications.len() >= limit || offset >= position.offset {
                break;
            }
            next = self.next_at(room, seq + 1).await?;
        }
        Ok(Page {
            position,
            publications,
        })
    }
}
