//! A connection's bounded send queue, and how its frames reach the socket.
//!
//! Fan-out and sessions queue frames without waiting. A transport whose
//! socket can be written without waiting (WebSocket) attaches a
//! [`SocketWriter`]: whoever queued a frame then writes it at once, from its
//! own task, together with anything else queued (one vectored write), so a
//! delivery costs one system call and no wake-up of the connection's task.
//! Only when the socket is full does the connection's task take over: it
//! waits until the socket drains, then resumes writing ([`SendQueue::duty`],
//! [`SendQueue::resume`]). Transports without a writer (SSE) drain the queue
//! from their own task with [`SendQueue::next_batch`].
//!
//! One writer at a time: the `writing` flag, taken under the queue's lock,
//! makes every other pusher only queue, and the writer loops until the queue
//! is empty before letting go, so frames reach the socket in queue order.
//!
//! A push that would pass either bound does not wait either: it reports an
//! overflow and the connection is cut (4011), so one slow client never
//! slows anyone else; in a namespace with `overflow = "drop"` or
//! `"conflate"` fan-out first tries to make room (`overflow.rs`).

use crate::metrics;
use bytes::Bytes;
use herald_core::{Publication, RoomName};
use herald_protocol::{CloseCode, StreamPosition};
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Notify;

/// One item for a connection's writer.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame.
    Frame {
        /// The frame's JSON, shared between recipients.
        bytes: Bytes,
        /// The room event this frame carries, if it is one: its position
        /// (SSE ids) and acceptance time (latency histogram).
        publication: Option<Arc<Publication>>,
        /// How this control frame moves the client's positions in its
        /// rooms (`room_joined`, `room_left`, `authenticated`), for
        /// transports that track them whatever the codec (SSE ids,
        /// Socket.IO recovery tokens). Boxed: rare, and frames are many.
        change: Option<Box<PositionChange>>,
    },
    /// A keep-alive (a WebSocket ping, an SSE comment).
    Ping,
    /// Bytes the transport framed itself (a WebSocket pong or close frame),
    /// written as they are.
    Raw(Bytes),
}

/// How a control frame moves a client's positions (see
/// [`Outbound::Frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PositionChange {
    /// `room_joined`: the room stands at `position` from now on, unless it
    /// is being recovered (`recovered: Some(true)`): then the client's own
    /// position stands until its replayed events move it on.
    Joined {
        /// The room.
        room: RoomName,
        /// Where live delivery starts.
        position: StreamPosition,
        /// The join's `recovered` (only when it resumed from `since`).
        recovered: Option<bool>,
    },
    /// `room_left`: the room is no longer tracked.
    Left {
        /// The room.
        room: RoomName,
    },
    /// `authenticated`: the auto-joined rooms at their positions; a room
    /// already tracked (being resumed) keeps its own.
    Listed(Vec<(RoomName, StreamPosition)>),
    /// `events_dropped`: the room lost events after `position` (a full
    /// queue shed them, see `queue/overflow.rs`). Moves no position: the
    /// kept events after the gap still do.
    Dropped {
        /// The room.
        room: RoomName,
        /// The position just before its first dropped event.
        position: StreamPosition,
    },
}

impl Outbound {
    /// A control frame (no publication) with no position change.
    pub fn control(bytes: Bytes) -> Self {
        Self::Frame {
            bytes,
            publication: None,
            change: None,
        }
    }

    /// A control frame that moves the client's positions.
    pub fn changing(bytes: Bytes, change: PositionChange) -> Self {
        Self::Frame {
            bytes,
            publication: None,
            change: Some(Box::new(change)),
        }
    }

    /// Payload bytes, counted against `limits.send_queue_bytes`.
    fn len(&self) -> usize {
        match self {
            Self::Frame { bytes, .. } | Self::Raw(bytes) => bytes.len(),
            Self::Ping => 0,
        }
    }
}

/// Writes queued items to a client's socket without waiting.
pub trait SocketWriter: Send + Sync + std::fmt::Debug {
    /// Writes as much of `items` as the socket takes right now, the first
    /// one from byte `*offset` of its encoding on. Returns how many items
    /// were written whole and leaves in `*offset` how far the next one got;
    /// fewer than all means the socket is full. An error means the socket
    /// is unusable.
    fn write_now(&self, items: &[Outbound], offset: &mut usize) -> std::io::Result<usize>;
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Queued (and, with a writer, written if the socket took it).
    Queued,
    /// The queue is full; the caller should cut the connection.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// What a connection's own task must do for its writer-backed queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// The socket was full: wait until it is writable, then call
    /// [`SendQueue::resume`].
    AwaitWritable,
    /// A write failed; the socket is dead.
    Failed,
    /// The connection is closing with this code.
    Close(CloseCode),
    /// A paced replay waits for room and the queue has drained: feed it
    /// more ([`crate::Session::feed_replay`]).
    Refill,
}

/// Where the last frames of a closing connection stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Everything queued was written.
    Done,
    /// Writing failed; nothing more will be written.
    Failed,
    /// The socket is full: wait until it is writable, then `resume`.
    Blocked,
    /// Another task is writing right now; wait with [`SendQueue::duty`]'s
    /// wake-up ([`SendQueue::wait`]).
    Busy,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outbound>,
    bytes: usize,
    /// Bytes of the front item already written (a partial write).
    offset: usize,
    closing: Option<CloseCode>,
    /// Someone is writing; others only queue.
    writing: bool,
    /// The socket was full; the connection's task waits for it to drain.
    blocked: bool,
    /// A write failed, or the writer was detached.
    failed: bool,
    /// A paced replay waits for room (see [`SendQueue::want_room`]).
    want_room: bool,
    writer: Option<Arc<dyn SocketWriter>>,
    /// Counts writer changes ([`SendQueue::attach`],
    /// [`SendQueue::detach_writer`]): a write through a writer that was
    /// replaced meanwhile gives its batch back.
    generation: u64,
}

/// A bounded queue of outbound frames.
#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<State>,
    /// Wakes the connection's task: frames to drain (no writer), or a duty
    /// (writer: blocked, failed, closing, a writer letting go while closing).
    notify: Notify,
    /// Wakes everyone waiting in `closed`; kept apart from `notify` so a
    /// close watcher can never swallow a wake-up meant for the task.
    close_notify: Notify,
    max_items: usize,
    max_bytes: usize,
}

impl SendQueue {
    /// A queue holding at most `max_items` frames and `max_bytes` bytes,
    /// drained by its connection's task ([`Self::next_batch`]).
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            close_notify: Notify::new(),
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// A queue whose frames are written by `writer` as they are queued.
    pub fn with_writer(max_items: usize, max_bytes: usize, writer: Arc<dyn SocketWriter>) -> Self {
        let queue = Self::new(max_items, max_bytes);
        queue.state.lock().writer = Some(writer);
        queue
    }

    /// Attaches `writer` to the queue (an Engine.IO polling session that
    /// upgraded to WebSocket), replacing any other: frames queued before
    /// are written through it, in order, and so is everything queued
    /// after. A frame the previous writer had begun is written whole.
    /// Does nothing once a write failed or the queue was detached.
    pub fn attach(&self, writer: Arc<dyn SocketWriter>) {
        {
            let mut s = self.state.lock();
            if s.failed {
                return;
            }
            s.writer = Some(writer);
            s.generation += 1;
            s.blocked = false;
            s.offset = 0;
        }
        self.flush();
    }

    /// Lets go of the writer without closing the connection (a transport
    /// switching sockets): frames stay queued, and the connection's task
    /// drains them ([`Self::next_batch`]) until a writer is attached again.
    pub fn detach_writer(&self) {
        {
            let mut s = self.state.lock();
            s.writer = None;
            s.generation += 1;
            s.blocked = false;
            s.offset = 0;
        }
        self.notify.notify_one();
    }

    /// Queues a frame unless that would pass a bound, and writes what is
    /// queued if the socket takes it now.
    pub fn push(&self, item: Outbound) -> PushResult {
        let result = self.enqueue(item);
        if result == PushResult::Queued {
            self.flush();
        }
        result
    }

    /// Queues a frame without writing it; the caller must call
    /// [`Self::flush`] afterwards (fan-out queues under a room lock and
    /// writes after letting it go).
    pub(crate) fn enqueue(&self, item: Outbound) -> PushResult {
        match self.try_enqueue(item) {
            Ok(()) => PushResult::Queued,
            Err((result, _)) => result,
        }
    }

    /// [`Self::enqueue`], giving the item back when it was not queued.
    fn try_enqueue(&self, item: Outbound) -> Result<(), (PushResult, Outbound)> {
        let len = item.len();
        let mut s = self.state.lock();
        if s.closing.is_some() {
            return Err((PushResult::Closed, item));
        }
        if s.items.len() >= self.max_items || s.bytes + len > self.max_bytes {
            return Err((PushResult::Overflow, item));
        }
        s.bytes += len;
        s.items.push_back(item);
        Ok(())
    }

    /// Writes what is queued if nobody else is writing and the socket is not
    /// known to be full; without a writer, wakes the connection's task.
    pub fn flush(&self) {
        let mut s = self.state.lock();
        let Some(writer) = s.writer.clone() else {
            drop(s);
            self.notify.notify_one();
            return;
        };
        if s.writing || s.blocked || s.failed || s.items.is_empty() {
            return;
        }
        s.writing = true;
        self.write_claimed(s, writer.as_ref());
    }

    /// Writes until the queue is empty or the socket full, releasing the
    /// lock during each write. The caller set `writing`.
    fn write_claimed<'q>(&'q self, mut s: MutexGuard<'q, State>, writer: &dyn SocketWriter) {
        loop {
            let mut batch = std::mem::take(&mut s.items);
            let mut offset = s.offset;
            let generation = s.generation;
            drop(s);
            let result = writer.write_now(batch.make_contiguous(), &mut offset);
            let written = *result.as_ref().unwrap_or(&0);
            record_written(batch.iter().take(written));
            s = self.state.lock();
            if s.generation != generation {
                // The writer was replaced or taken away while this write ran:
                // what it did not finish goes back in front, whole (a frame
                // begun on the old socket starts over on the new one), for
                // the new writer or the connection's task.
                batch.drain(..written.min(batch.len()));
                batch.append(&mut s.items);
                s.bytes = batch.iter().map(Outbound::len).sum();
                s.items = batch;
                s.offset = 0;
                s.writing = false;
                drop(s);
                self.flush();
                return;
            }
            let Ok(written) = result else {
                s.failed = true;
                s.writing = false;
                s.items.clear();
                s.bytes = 0;
                drop(s);
                self.notify.notify_one();
                return;
            };
            let done: usize = batch.drain(..written).map(|i| i.len()).sum();
            s.bytes = s.bytes.saturating_sub(done);
            if batch.is_empty() {
                s.offset = 0;
                if s.items.is_empty() {
                    s.writing = false;
                    let wake = s.closing.is_some() || s.want_room;
                    drop(s);
                    if wake {
                        self.notify.notify_one();
                    }
                    return;
                }
                // More arrived while writing.
                continue;
            }
            // The socket is full: the rest goes back in front of whatever
            // arrived meanwhile, and the connection's task takes over.
            s.offset = offset;
            if s.closing == Some(CloseCode::SlowConsumer) {
                // Cut while writing: only a frame already begun must end.
                batch.truncate(usize::from(offset > 0));
                s.items.clear();
            }
            batch.append(&mut s.items);
            s.bytes = batch.iter().map(Outbound::len).sum();
            s.items = batch;
            s.blocked = true;
            s.writing = false;
            drop(s);
            self.notify.notify_one();
            return;
        }
    }

    /// Called by the connection's task once the socket is writable again
    /// after [`Duty::AwaitWritable`] or [`Drain::Blocked`]: writes on.
    pub fn resume(&self) {
        self.state.lock().blocked = false;
        self.flush();
    }

    /// Waits until the connection's task has something to do for a
    /// writer-backed queue.
    pub async fn duty(&self) -> Duty {
        loop {
            {
                let mut s = self.state.lock();
                if s.failed {
                    return Duty::Failed;
                }
                if let Some(code) = s.closing {
                    return Duty::Close(code);
                }
                if s.blocked {
                    return Duty::AwaitWritable;
                }
                // Not while another task writes: it wakes this one once the
                // queue is empty.
                if s.want_room && !s.writing && self.room_in(&s) {
                    s.want_room = false;
                    return Duty::Refill;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Whether a paced replay may queue another frame: the queue is open
    /// and at most half full (by frames and by bytes), so live frames of
    /// other rooms and replies keep the other half.
    pub(crate) fn has_room(&self) -> bool {
        let s = self.state.lock();
        s.closing.is_none() && self.room_in(&s)
    }

    fn room_in(&self, s: &State) -> bool {
        s.items.len() < self.max_items.div_ceil(2) && s.bytes < self.max_bytes / 2
    }

    /// Asks for a [`Duty::Refill`] once the queue has room again (queues
    /// with a writer; a transport that drains the queue itself feeds the
    /// replay after each batch instead).
    pub(crate) fn want_room(&self) {
        self.state.lock().want_room = true;
    }

    /// Waits for the next wake-up of the connection's task.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Queues the last frames of a closing connection (its `disconnect` and
    /// close frame) past the closing mark and the bounds, and writes them if
    /// the socket takes them.
    pub fn finish(&self, last: impl IntoIterator<Item = Outbound>) {
        {
            let mut s = self.state.lock();
            if s.failed {
                return;
            }
            for item in last {
                s.bytes += item.len();
                s.items.push_back(item);
            }
        }
        self.flush();
    }

    /// Where the frames of a closing connection stand.
    pub fn drain_state(&self) -> Drain {
        let s = self.state.lock();
        if s.failed {
            Drain::Failed
        } else if s.writing {
            Drain::Busy
        } else if s.items.is_empty() {
            Drain::Done
        } else {
            // Blocked, or queued by a push whose own flush has not run
            // yet: either way the caller resumes.
            Drain::Blocked
        }
    }

    /// Lets go of the writer (the socket is being closed): nothing is
    /// written any more and later pushes are dropped.
    pub fn detach(&self) {
        let mut s = self.state.lock();
        s.writer = None;
        s.failed = true;
        s.items.clear();
        s.bytes = 0;
        if s.closing.is_none() {
            s.closing = Some(CloseCode::Normal);
        }
    }

    /// Marks the queue closing with `code`. The first call wins and returns
    /// true. For a slow consumer the queued frames are dropped, since the
    /// client is not reading them; otherwise they are still written first.
    pub fn close(&self, code: CloseCode) -> bool {
        let first = {
            let mut s = self.state.lock();
            if s.closing.is_some() {
                false
            } else {
                s.closing = Some(code);
                if code == CloseCode::SlowConsumer {
                    // A frame already begun must end, or the stream breaks.
                    let begun = if s.offset > 0 {
                        s.items.pop_front()
                    } else {
                        None
                    };
                    s.items.clear();
                    s.bytes = begun.as_ref().map_or(0, Outbound::len);
                    s.items.extend(begun);
                }
                true
            }
        };
        if first {
            self.notify.notify_one();
            self.close_notify.notify_waiters();
        }
        first
    }

    /// The close code, once closing.
    pub fn closing(&self) -> Option<CloseCode> {
        self.state.lock().closing
    }

    /// Number of queued frames.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Frames and bytes queued, read together under one lock (the
    /// sampled send-queue metrics).
    pub fn depth(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.items.len(), s.bytes)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for work, then moves every queued item into `batch`. Returns
    /// the close code once the queue is closing and drained. For queues
    /// without a writer.
    pub async fn next_batch(&self, batch: &mut Vec<Outbound>) -> Option<CloseCode> {
        loop {
            {
                let mut s = self.state.lock();
                if !s.items.is_empty() {
                    // Taken whole, buffer and all: an idle connection's
                    // queue then holds no memory between two drains.
                    let items = std::mem::take(&mut s.items);
                    s.bytes = 0;
                    drop(s);
                    if batch.is_empty() {
                        // The queue's buffer becomes the batch's.
                        *batch = Vec::from(items);
                    } else {
                        batch.extend(items);
                    }
                    return None;
                }
                if let Some(code) = s.closing {
                    return Some(code);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Resolves once the queue is closing.
    pub async fn closed(&self) -> CloseCode {
        loop {
            // Registered before the check, so a close between the check
            // and the wait is not missed (`notify_waiters` keeps no permit).
            let notified = self.close_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.closing() {
                return code;
            }
            notified.await;
        }
    }
}

/// Counts written frames and records each event's publish-to-write latency.
fn record_written<'a>(items: impl Iterator<Item = &'a Outbound>) {
    let mut frames = 0u64;
    for item in items {
        if let Outbound::Frame { publication, .. } = item {
            frames += 1;
            if let Some(t) = publication.as_ref().and_then(|p| p.accepted_at) {
                metrics::delivery_latency(t.elapsed());
            }
        }
    }
    if frames > 0 {
        metrics::messages_sent(frames);
    }
}

mod overflow;

#[cfg(test)]
mod tests;
