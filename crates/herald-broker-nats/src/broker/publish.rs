//! Publishing: the room's next offset is taken with
//! `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of
//! the room's last message (cached per room on the node); when another
//! publisher took it first the server answers "wrong last sequence", the
//! node re-reads the room's last message and retries (bounded, with
//! jitter). The server stores the message and republishes it to the
//! room's delivery subject, so offset order is stream order is delivery
//! order, and a refused attempt left nothing behind.
//!
//! Idempotency: `Nats-Msg-Id` is the tenant and the key; within the
//! stream's duplicate window the server answers a repeated id with the
//! original's sequence (before checking the expected sequence, see the
//! probe in `tests/broker_jetstream.rs`), whose message gives the original
//! position, or names another room (a conflict).

use super::error::{internal, not_connected, unavailable};
use super::message::{self, event_bytes, headers, meta_of, Stored};
use super::{metrics, NatsBroker};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use herald_core::{BrokerError, HistoryTrims, PublishOutcome, PublishRequest, RoomKey};
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts at one publish before answering `Unavailable` (each lost to
/// another publisher of the room).
pub(super) const MAX_ATTEMPTS: usize = 32;

/// The last message of a room as this node knows it.
#[derive(Debug, Clone)]
pub(super) struct Last {
    pub seq: u64,
    pub position: StreamPosition,
    /// The room's cumulative history bytes through it.
    pub cb: u64,
}

/// A point of the room's stream this node saw, for the storage bound:
/// every message of the room before `seq` is older than `at`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checkpoint {
    pub at: Instant,
    pub seq: u64,
    pub offset: u64,
}

/// What the node keeps per room it publishes to.
#[derive(Default)]
pub(super) struct RoomState {
    /// The room's last message as last seen (publish, read or delivery).
    pub last: Mutex<Option<Last>>,
    /// Serializes this node's publishes of the room: concurrent ones would
    /// only race each other for the same offset.
    pub turn: tokio::sync::Mutex<Window>,
    /// Checkpoints for the storage bound, oldest first.
    pub checkpoints: Mutex<VecDeque<Checkpoint>>,
    /// When this node last published to the room.
    pub used: Mutex<Option<Instant>>,
    /// The room's `history.size` as of this node's last publish.
    pub keep: Mutex<usize>,
}

/// The room's history as this node's own consecutive publishes built it
/// (offset, bytes), to count what each publish trims; reset when another
/// publisher's events come between.
#[derive(Default)]
pub(super) struct Window {
    events: VecDeque<(u64, u64)>,
    bytes: u64,
}

impl Window {
    /// Adds the event at `offset`; returns how many the size and the byte
    /// budget trimmed.
    fn push(&mut self, offset: u64, bytes: u64, size: usize, max_bytes: usize) -> (u64, u64) {
        if size == 0 {
            // Nothing is kept, so nothing is trimmed (as in the other
            // engines, which store nothing then).
            self.events.clear();
            self.bytes = 0;
            return (0, 0);
        }
        if self.events.back().is_some_and(|&(o, _)| o + 1 != offset) {
            self.events.clear();
            self.bytes = 0;
        }
        self.events.push_back((offset, bytes));
        self.bytes += bytes;
        let (mut by_size, mut by_bytes) = (0, 0);
        while let Some(&(_, b)) = self.events.front() {
            if self.events.len() > size {
                by_size += 1;
            } else if max_bytes > 0 && self.bytes > max_bytes as u64 {
                by_bytes += 1;
            } else {
                break;
            }
            self.bytes -= b;
            self.events.pop_front();
        }
        (by_size, by_bytes)
    }
}

/// History entries this node's publishes trimmed, by reason.
#[derive(Default)]
pub(super) struct Trimmed {
    size: AtomicU64,
    room_bytes: AtomicU64,
}

impl Trimmed {
    pub(super) fn snapshot(&self) -> HistoryTrims {
        HistoryTrims {
            size: self.size.load(Ordering::Relaxed),
            ttl: 0,
            room_bytes: self.room_bytes.load(Ordering::Relaxed),
            total_bytes: 0,
        }
    }
}

/// Per-room state of the rooms this node publishes to or reads.
#[derive(Default)]
pub(super) struct Published {
    pub map: Mutex<HashMap<RoomKey, Arc<RoomState>>>,
}

impl Published {
    pub(super) fn room(&self, room: &RoomKey) -> Arc<RoomState> {
        self.map.lock().entry(room.clone()).or_default().clone()
    }

    /// Records `last` as the room's last message if it is newer than what
    /// the node knew (only for rooms the node keeps state for).
    pub(super) fn saw(&self, room: &RoomKey, last: Last) {
        let state = self.map.lock().get(room).cloned();
        if let Some(state) = state {
            let mut known = state.last.lock();
            if known.as_ref().is_none_or(|k| k.seq < last.seq) {
                *known = Some(last);
            }
        }
    }

    pub(super) fn forget_all(&self) {
        for state in self.map.lock().values() {
            *state.last.lock() = None;
        }
    }
}

/// How long to wait before retry `attempt` (1-based): a few ms of jitter,
/// growing, so racing publishers spread out.
fn backoff(attempt: usize) -> Duration {
    let top = 1 + 2 * attempt.min(10) as u64;
    Duration::from_micros(rand::random_range(0..top * 1000))
}

impl NatsBroker {
    /// Fails fast while the connection or the stream is not there.
    pub(super) fn check_ready(&self) -> Result<(), BrokerError> {
        if !self.clients.is_connected() {
            self.forget_engine_epoch();
            return Err(not_connected());
        }
        if !self.stream_ready() {
            return Err(self.not_ready());
        }
        Ok(())
    }

    /// The room's last stored message, read from the stream.
    pub(super) async fn read_last(&self, room: &RoomKey) -> Result<Option<Stored>, BrokerError> {
        let stream = self.stream_handle()?;
        let subject = self.names.room_subject(room);
        let started = std::time::Instant::now();
        let got = stream.direct_get_last_for_subject(subject).await;
        // A room with no message yet is an answer, not a failure.
        let ok = match &got {
            Ok(_) => true,
            Err(e) => matches!(e.kind(), DirectGetErrorKind::NotFound),
        };
        crate::commands::POSITION.record(started.elapsed(), ok);
        match got {
            Ok(m) => message::decode(room.clone(), Some(m.sequence), &m.headers, &m.payload)
                .map(Some)
                .map_err(|e| internal("a room's last message", e)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(self.read_failed("reading a room's last message", e)),
        }
    }

    /// A failed read: the stream may be gone (then it is ensured again).
    pub(super) fn read_failed(&self, what: &str, e: impl std::fmt::Display) -> BrokerError {
        let text = e.to_string();
        if text.contains("no responders") || text.contains("stream not found") {
            self.stream_lost();
        }
        unavailable(what, text)
    }

    pub(super) async fn publish_once(
        &self,
        request: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        if let Err(e) = self.check_ready() {
            crate::commands::PUBLISH.refused();
            return Err(e);
        }
        let room = &request.room;
        let subject = self.names.room_subject(room);
        let meta = meta_of(&request, &self.node_id);
        // Serialized once; a retry only changes the per-attempt headers.
        let meta_json = serde_json::to_string(&meta).map_err(|e| internal("meta", e))?;
        let bytes = event_bytes(&request.data, &meta_json);
        let payload = Bytes::copy_from_slice(request.data.get().as_bytes());
        let state = self.published.room(room);
        let mut window = state.turn.lock().await;
        *state.used.lock() = Some(Instant::now());
        *state.keep.lock() = meta.k;
        let msg_id = request.idempotency_key.as_ref().map(|key| {
            format!(
                "{}.{}",
                crate::names::token(room.tenant.as_str()),
                crate::names::token(key)
            )
        });
        for attempt in 1..=MAX_ATTEMPTS {
            let known = state.last.lock().clone();
            let last = match known {
                Some(last) => Some(last),
                None => self.read_last(room).await?.map(|s| Last {
                    seq: s.seq,
                    position: s.publication.position,
                    cb: s.cb,
                }),
            };
            let (position, expected, cb) = match &last {
                Some(l) => (
                    StreamPosition::new(l.position.epoch.clone(), l.position.offset + 1),
                    l.seq,
                    l.cb,
                ),
                None => (StreamPosition::new(self.engine_epoch().await?, 1), 0, 0),
            };
            let cb = cb + bytes;
            let mut publish = PublishMessage::build()
                .payload(payload.clone())
                .headers(headers(&position, cb, &meta_json, request.trace.as_ref()))
                .expected_last_subject_sequence(expected);
            if let Some(id) = &msg_id {
                publish = publish.message_id(id);
            }
            let started = std::time::Instant::now();
            let sent = self
                .clients
                .jetstream
                .send_publish(subject.clone(), publish)
                .await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            // Losing the race for the next offset is retried, not a failure.
            let ok = match &acked {
                Ok(_) => true,
                Err(e) => e.kind() == PublishErrorKind::WrongLastSequence,
            };
            crate::commands::PUBLISH.record(started.elapsed(), ok);
            match acked {
                Ok(ack) if ack.duplicate => return self.duplicate(room, ack.sequence).await,
                Ok(ack) => {
                    *state.last.lock() = Some(Last {
                        seq: ack.sequence,
                        position: position.clone(),
                        cb,
                    });
                    let (size, room_bytes) = window.push(position.offset, bytes, meta.k, meta.b);
                    self.trimmed.size.fetch_add(size, Ordering::Relaxed);
                    self.trimmed
                        .room_bytes
                        .fetch_add(room_bytes, Ordering::Relaxed);
                    self.checkpoint(&state, ack.sequence, position.offset);
                    return Ok(PublishOutcome {
                        position,
                        duplicate: false,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    metrics::publish_retried();
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    *state.last.lock() = None;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    self.stream_lost();
                    return Err(self.not_ready());
                }
                Err(e) => {
                    // The message may have been stored (a timeout): what
                    // the node knows of the room may be stale.
                    *state.last.lock() = None;
                    return Err(unavailable("publish", e));
                }
            }
        }
        Err(BrokerError::Unavailable(format!(
            "room {room}: {MAX_ATTEMPTS} publishers took the next offset first; retry"
        )))
    }

    /// The outcome of a publish whose idempotency key was seen: the
    /// original's position, or a conflict naming the original's room.
    async fn duplicate(&self, room: &RoomKey, seq: u64) -> Result<PublishOutcome, BrokerError> {
        let stream = self.stream_handle()?;
        let original = crate::commands::HISTORY
            .time(stream.direct_get(seq))
            .await
            .map_err(|e| unavailable("reading the original of a duplicate", e))?;
        let Some(first_room) = message::room_of_subject(original.subject.as_str()) else {
            return Err(internal("duplicate", "the original names no room"));
        };
        if &first_room != room {
            return Err(BrokerError::IdempotencyConflict {
                room: first_room.name.as_str().to_owned(),
            });
        }
        let stored = message::decode(first_room, Some(seq), &original.headers, &original.payload)
            .map_err(|e| internal("the original of a duplicate", e))?;
        Ok(PublishOutcome {
            position: stored.publication.position,
            duplicate: true,
        })
    }

    /// Notes a checkpoint for the storage bound, at most one per
    /// [`super::purge::CHECKPOINT_EVERY`].
    fn checkpoint(&self, state: &RoomState, seq: u64, offset: u64) {
        let now = Instant::now();
        let mut checkpoints = state.checkpoints.lock();
        if checkpoints
            .back()
            .is_some_and(|c| now.duration_since(c.at) < super::purge::CHECKPOINT_EVERY)
        {
            return;
        }
        if checkpoints.len() >= super::purge::MAX_CHECKPOINTS {
            checkpoints.pop_front();
        }
        checkpoints.push_back(Checkpoint {
            at: now,
            seq,
            offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_trims_like_the_other_engines() {
        let mut w = Window::default();
        assert_eq!(w.push(1, 10, 2, 0), (0, 0));
        assert_eq!(w.push(2, 10, 2, 0), (0, 0));
        assert_eq!(w.push(3, 10, 2, 0), (1, 0), "past the size");
        assert_eq!(w.push(4, 10, 10, 25), (0, 1), "past the bytes");
        assert_eq!(w.push(9, 10, 10, 25), (0, 0), "another publisher: reset");
        assert!(backoff(1) <= Duration::from_millis(3));
    }
}
