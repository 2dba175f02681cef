//! The broker contract: what every engine (memory, Redis, NATS) promises.
//!
//! A broker owns each room's stream: it assigns offsets, keeps history, and
//! hands every publication to the node's [`PublicationSink`]. The node keeps
//! one subscription per room, shared by all its local members.

use crate::{RoomKey, TraceContext};
use async_trait::async_trait;
use herald_protocol::{
    ClientCodec, PublicationFrame, Sender, StreamPosition, CODEC_SLOTS, HERALD_JSON,
};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How much of a room's stream to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryPolicy {
    /// Events kept; 0 keeps none (offsets still count up).
    pub size: usize,
    /// How long a kept event lives.
    pub ttl: Duration,
    /// Bytes of history the room keeps, oldest events trimmed first; 0 sets
    /// no byte budget (the node always sets one: `limits.history_room_bytes`
    /// or the namespace's `history_max_bytes`).
    pub max_bytes: usize,
}

/// One event to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Target room.
    pub room: RoomKey,
    /// Event name.
    pub event: String,
    /// Payload, the publisher's JSON verbatim.
    pub data: Box<RawValue>,
    /// The sending connection, for `send_message`.
    pub from: Option<Sender>,
    /// A connection that must not receive this event.
    pub exclude_connection: Option<String>,
    /// Retries with the same key (per tenant) get the first outcome back.
    pub idempotency_key: Option<String>,
    /// History kept for the room.
    pub history: HistoryPolicy,
    /// The trace this publish continues (the node's `broker.publish` span),
    /// when tracing is on and the publish is sampled; engines carry it to
    /// every node's fan-out and never interpret it.
    pub trace: Option<TraceContext>,
    /// Never dropped or conflated under backpressure (the publisher's flag
    /// or the namespace's `critical_events`, resolved by the node).
    pub critical: bool,
    /// Events of a room with the same key supersede each other in a
    /// `conflate` namespace's full queue.
    pub conflation_key: Option<String>,
}

/// A published event as delivered to nodes and kept in history.
#[derive(Debug)]
pub struct Publication {
    /// The room.
    pub room: RoomKey,
    /// Its place in the room's stream.
    pub position: StreamPosition,
    /// Event name.
    pub event: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// When it was accepted, ms since the Unix epoch.
    pub ts: u64,
    /// Unique id.
    pub event_id: String,
    /// Sender, for `message` frames.
    pub from: Option<Sender>,
    /// A connection that must not receive it.
    pub exclude_connection: Option<String>,
    /// When this process accepted it (local publications only), for the
    /// publish-to-write latency histogram.
    pub accepted_at: Option<Instant>,
    /// The publishing node's `broker.publish` span, carried through the
    /// engine so each node's fan-out span continues the trace; `None` when
    /// tracing is off or the publish was not sampled (and for messages from
    /// older nodes).
    pub trace: Option<TraceContext>,
    /// Published as critical (see [`PublishRequest::critical`]); engines
    /// carry it and keep it in history. Messages from older nodes: false.
    pub critical: bool,
    /// The publisher's conflation key (see
    /// [`PublishRequest::conflation_key`]), carried and kept like
    /// `critical`.
    pub conflation_key: Option<String>,
    /// How a full queue may treat this event, resolved once by the
    /// receiving node's fan-out; engines build it with
    /// `Default::default()`.
    pub policy: crate::PolicyCell,
    /// Its frame per codec, encoded on first use; engines build it with
    /// `Default::default()`.
    pub encoded: EncodedFrames,
}

/// A publication's frame in each codec, encoded at most once: fan-out,
/// replay and history share the bytes, and per-recipient work stays a
/// clone of [`bytes::Bytes`]. The first codec's (Herald JSON's) cell is
/// inline; the others' are allocated when one is first used, so every
/// stored event does not carry empty cells for codecs nobody uses.
///
/// The permessage-deflate payloads (compressed once per event, shared by
/// every recipient that negotiated the same window) are allocated when
/// the event is first compressed, behind one cell of that lazily allocated
/// part: a stored event encoded for one codec and never compressed is no
/// bigger.
#[derive(Debug, Default)]
pub struct EncodedFrames {
    first: OnceLock<bytes::Bytes>,
    rest: OnceLock<Box<Rest>>,
}

/// Window sizes below 15 bits a client may ask for (9..=14).
const SMALL_WINDOWS: usize = 6;

/// What [`EncodedFrames`] allocates on first use of a codec other than the
/// first, or of compression.
#[derive(Debug, Default)]
struct Rest {
    codecs: [OnceLock<bytes::Bytes>; CODEC_SLOTS - 1],
    /// The compressed frames, allocated when the event is first
    /// compressed: an event encoded for several codecs but never
    /// compressed carries only this empty cell.
    deflated: OnceLock<Box<Deflated>>,
}

/// An event's permessage-deflate payloads.
#[derive(Debug, Default)]
struct Deflated {
    /// Per codec slot: the frame deflated with a 15-bit window, what
    /// nearly every client negotiates.
    full: [OnceLock<bytes::Bytes>; CODEC_SLOTS],
    /// Frames deflated with a smaller window a client asked for
    /// (`server_max_window_bits` 9..=14), by slot and window: rare, so
    /// allocated only when one is first used.
    small: OnceLock<Box<[OnceLock<bytes::Bytes>; SMALL_WINDOWS * CODEC_SLOTS]>>,
}

impl EncodedFrames {
    fn cell(&self, slot: usize) -> Option<&OnceLock<bytes::Bytes>> {
        match slot {
            0 => Some(&self.first),
            n => self.rest().codecs.get(n - 1),
        }
    }

    fn rest(&self) -> &Rest {
        self.rest.get_or_init(Box::default)
    }
}

impl Publication {
    /// A room event as a plain publish makes it: no sender, no excluded
    /// connection, no trace, not critical, no conflation key, nothing
    /// encoded yet. Callers set the optional fields they need with struct
    /// update syntax (`Publication { from, ..Publication::new(…) }`).
    pub fn new(
        room: RoomKey,
        position: StreamPosition,
        event: impl Into<String>,
        data: Box<RawValue>,
        ts: u64,
        event_id: impl Into<String>,
    ) -> Self {
        Self {
            room,
            position,
            event: event.into(),
            data,
            ts,
            event_id: event_id.into(),
            from: None,
            exclude_connection: None,
            accepted_at: None,
            trace: None,
            critical: false,
            conflation_key: None,
            policy: Default::default(),
            encoded: Default::default(),
        }
    }

    /// The `event` (or, with a sender, `message`) frame clients of `codec`
    /// receive, encoded on first use and shared by every recipient:
    /// borrowed from the cache, so a recipient's queue takes the only clone.
    pub fn encoded(&self, codec: &dyn ClientCodec) -> Cow<'_, bytes::Bytes> {
        match self.encoded.cell(codec.slot()) {
            Some(cell) => {
                Cow::Borrowed(cell.get_or_init(|| codec.encode_publication(&self.frame())))
            }
            None => Cow::Owned(codec.encode_publication(&self.frame())),
        }
    }

    /// The permessage-deflate payload of this event's frame in the codec
    /// at `slot`, for a raw-deflate window of `window_bits` (9..=15):
    /// `compress` runs once per (slot, window) for the event and every
    /// recipient shares its bytes. `compress` returns empty bytes when the
    /// frame is better sent plain; that answer is kept too, so the same
    /// recipient always gets the same bytes.
    pub fn deflated(
        &self,
        slot: usize,
        window_bits: u8,
        compress: impl FnOnce() -> bytes::Bytes,
    ) -> bytes::Bytes {
        let deflated = self.encoded.rest().deflated.get_or_init(Box::default);
        if window_bits == 15 {
            if let Some(cell) = deflated.full.get(slot) {
                return cell.get_or_init(compress).clone();
            }
            return compress();
        }
        let window = usize::from(window_bits.clamp(9, 14) - 9);
        let cells = deflated
            .small
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        match cells.get(slot * SMALL_WINDOWS + window) {
            Some(cell) if slot < CODEC_SLOTS => cell.get_or_init(compress).clone(),
            _ => compress(),
        }
    }

    /// The frame in Herald JSON ([`Self::encoded`] with that codec).
    pub fn encode(&self) -> bytes::Bytes {
        self.encoded(&HERALD_JSON).into_owned()
    }

    fn frame(&self) -> PublicationFrame<'_> {
        PublicationFrame::new(
            self.room.name.as_str(),
            &self.event,
            &self.data,
            &self.position,
            self.ts,
            &self.event_id,
            self.from.as_ref(),
        )
    }
}

/// What a publish returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Where the event landed.
    pub position: StreamPosition,
    /// True when an earlier publish with the same idempotency key was found
    /// and nothing new was published.
    pub duplicate: bool,
}

/// Events read back from a room's stream.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The stream's current position (its last offset).
    pub position: StreamPosition,
    /// Stored events after the requested offset, oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// Whether every event after the requested offset is in `publications`
    /// (false when some were trimmed or expired, or the limit cut the page).
    pub complete: bool,
}

/// Memory and size figures an engine reports for `/api/v1/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Rooms with a live stream.
    pub streams: usize,
    /// Events held in history.
    pub stored_events: usize,
    /// Approximate bytes held by history.
    pub stored_bytes: usize,
    /// Events trimmed from history since start, by reason (engines that do
    /// not count report zeros).
    pub trimmed: HistoryTrims,
}

/// Events trimmed from history, by why they went. Trimming always takes a
/// room's oldest events, so what is left stays contiguous and a resume
/// from a trimmed offset reports `recovered: false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryTrims {
    /// Past the namespace's `history_size`.
    pub size: u64,
    /// Older than the namespace's `history_ttl`.
    pub ttl: u64,
    /// Past the room's byte budget.
    pub room_bytes: u64,
    /// Past the node-wide byte budget (`limits.history_total_bytes`).
    pub total_bytes: u64,
}

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The engine's backing service cannot be reached; clients should retry.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The idempotency key was already used, for another room.
    #[error("idempotency_key was already used for room `{room}`")]
    IdempotencyConflict {
        /// The room the key was first used for.
        room: String,
    },
    /// Anything else; a bug or an unexpected reply.
    #[error("broker error: {0}")]
    Internal(String),
}

/// The socket writes a delivery left to do: the frames are already queued
/// (in order) on every recipient's connection; running this writes them.
///
/// An engine holds its room lock (or is its one reader task) while it calls
/// [`PublicationSink::deliver`]; it runs the returned `Writes` only after it
/// let go of that lock, or hands it to a worker task, so no socket is
/// written while a room's publishes wait. Running it at any later time is
/// correct: each connection's queue keeps its own order, and a write takes
/// whatever is queued. Dropped without [`Writes::run`], it runs on drop, so
/// queued frames are never stranded.
#[must_use = "run the writes once the engine's locks are released"]
pub struct Writes(Option<Box<dyn FnOnce() + Send>>);

impl Writes {
    /// Nothing to write.
    pub fn none() -> Self {
        Self(None)
    }

    /// Writes done by `write`.
    pub fn new(write: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(write)))
    }

    /// Whether there is nothing to write (an engine need not schedule it).
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Writes now, on the calling thread.
    pub fn run(mut self) {
        if let Some(write) = self.0.take() {
            write();
        }
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        if let Some(write) = self.0.take() {
            write();
        }
    }
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("empty", &self.is_empty())
            .finish()
    }
}

/// Receives publications from a broker.
///
/// Contract: for any one room, `deliver` is called in offset order and never
/// concurrently with itself; the engine may hold the room's lock meanwhile,
/// which is what keeps every connection's queue in offset order. `deliver`
/// only queues (it never blocks nor writes a socket) and returns the writes
/// to do, which the engine runs after releasing its locks (see [`Writes`]).
pub trait PublicationSink: Send + Sync + 'static {
    /// Queues one publication for the node's recipients; returns the socket
    /// writes to run once the engine let go of its locks.
    fn deliver(&self, publication: Arc<Publication>) -> Writes;
}

/// A broker engine.
///
/// Contract:
/// - `publish` is atomic per room: assigning the offset, storing the event
///   in history and announcing it to subscribed nodes happen as one step, so
///   offsets are gap-free and every node sees a room's events in offset order.
/// - `publish` returns only once the event is durable in the engine (as far
///   as the engine is durable) and announced; on error nothing was published.
/// - Offsets start at 1 and count up by one; the epoch changes whenever the
///   stream is recreated without its history.
/// - `subscribe` and `unsubscribe` are counted: the node calls `subscribe`
///   once for every local member joining a room and `unsubscribe` once for
///   every member leaving it. The engine listens to the room while the count
///   is above zero, and `subscribe` returns only once listening is live, even
///   when a concurrent caller started it. After `subscribe(room)` returns,
///   every later publication of that room reaches the sink; publications of
///   rooms not listened to may or may not.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Short engine name for logs and stats (`memory`, `redis`, `nats`).
    fn kind(&self) -> &'static str;

    /// Publishes one event (see the trait contract).
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError>;

    /// Starts delivering `room`'s publications to this node's sink.
    async fn subscribe(&self, room: &RoomKey) -> Result<(), BrokerError>;

    /// Stops delivering `room`'s publications.
    async fn unsubscribe(&self, room: &RoomKey) -> Result<(), BrokerError>;

    /// The room's current position (offset 0 and the engine's current epoch
    /// when the room has no stream). A read never creates a stream or key:
    /// only `publish` and `subscribe` may.
    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError>;

    /// Stored events of `room` with offset greater than `since`, at most
    /// `limit`. Like `position`, creates nothing for an unknown room.
    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError>;

    /// Whether the engine can serve requests now (readiness).
    fn is_ready(&self) -> bool;

    /// Size figures for stats and metrics.
    fn stats(&self) -> BrokerStats;
}

#[cfg(test)]
mod tests {
    use super::Writes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting(runs: &Arc<AtomicUsize>) -> Writes {
        let runs = runs.clone();
        Writes::new(move || {
            runs.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn writes_run_once_when_run_or_when_dropped() {
        let runs = Arc::new(AtomicUsize::new(0));
        let writes = counting(&runs);
        assert!(!writes.is_empty());
        assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing written yet");
        writes.run();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        drop(counting(&runs));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a dropped Writes still writes"
        );
        assert!(Writes::none().is_empty());
        Writes::none().run();
    }

    #[test]
    fn each_slot_and_window_is_compressed_once() {
        use super::Publication;
        use crate::{RoomKey, RoomName, Tenant};
        use herald_protocol::StreamPosition;
        let room = RoomKey::new(
            Tenant::default_tenant(),
            RoomName::parse("r").expect("room"),
        );
        let p = Publication::new(
            room,
            StreamPosition::new("e", 1),
            "e",
            serde_json::value::to_raw_value(&1).expect("raw"),
            0,
            "id",
        );
        let runs = AtomicUsize::new(0);
        let runs = &runs;
        let z = |tag: &'static [u8]| {
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                bytes::Bytes::from_static(tag)
            }
        };
        for _ in 0..3 {
            assert_eq!(p.deflated(0, 15, z(b"a")), &b"a"[..]);
            assert_eq!(p.deflated(1, 15, z(b"b")), &b"b"[..]);
            assert_eq!(p.deflated(0, 10, z(b"c")), &b"c"[..]);
            assert_eq!(p.deflated(1, 9, z(b"d")), &b"d"[..]);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 4, "once per (slot, window)");
        assert_eq!(
            p.deflated(0, 15, z(b"x")),
            &b"a"[..],
            "the first answer stays"
        );
    }
}
