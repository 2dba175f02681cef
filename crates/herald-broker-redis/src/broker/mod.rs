//! The Redis broker engine (its design is documented on [`RedisBroker`]):
//! `publish` and `read` hold the two Lua scripts' callers, `reader` the
//! pub/sub reader (counted subscriptions, ordering and catch-up are
//! `herald_engine_kit`'s).

mod epoch;
mod error;
mod metrics;
mod publish;
mod read;
mod reader;
pub(crate) mod script;

use crate::keys::Keys;
use crate::{wire, RedisClients, RedisSettings};
use async_trait::async_trait;
use error::{from_redis, not_connected};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Value;
use herald_core::{
    Broker, BrokerError, BrokerStats, HistoryPage, PresenceChange, PresenceSink, PublicationSink,
    PublishOutcome, PublishRequest, RoomKey,
};
use herald_engine_kit::ordered::Workers;
use herald_engine_kit::rooms::{NewEpoch, Rooms};
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use script::LuaScript;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rooms' streams in Redis, fanned out over pub/sub to the nodes with
/// members in the room.
///
/// - A room's stream is three keys in one hash slot: a meta hash (epoch,
///   last offset), a Redis stream holding history (entry id `0-<offset>`,
///   so reads seek by offset) and idempotency records. One Lua script per
///   publish assigns the offset, stores the entry, sets expiries and
///   announces it, atomically, so offset order is channel order and a
///   failed publish left nothing behind. The stored entry and the channel
///   message are the same bytes, the payload verbatim.
/// - A room's epoch lives `max(history ttl, 1 hour)` after its last publish
///   (like the memory engine's sweep of idle streams); a quiet room then
///   starts a new epoch. `position` and `history` write nothing: a room
///   without keys reads as offset 0 in the engine epoch, the epoch its
///   first publish will start it in (see `epoch`).
/// - Idempotency keys are kept `max(5 minutes, history ttl)`, per tenant.
/// - `subscribe`/`unsubscribe` are counted per room: the channel is
///   subscribed on the first count and unsubscribed after the last.
/// - One reader task (see [`RedisBroker::spawn`]) delivers each room in
///   offset order, once: it drops duplicates, fills gaps from the stream,
///   and after a reconnect of the subscriber (or a lag) re-subscribes every
///   listened room and catches up on what was published meanwhile. The
///   reader only queues: socket writes run on their own tasks, and a gap
///   fill or catch-up runs on a task owning the room (later publications of
///   that room wait behind it), so one slow room holds up no other.
/// - While a connection is down, calls answer `Unavailable` at once.
///
/// Room channels use sharded pub/sub (SSUBSCRIBE, SPUBLISH), on a single
/// server as on a Redis Cluster, so Redis 7.0 or later is required. On a
/// cluster that keeps a room's messages on its slot's shard; on a single
/// server it is what lets `subscribe` wait for the server's confirmation:
/// fred answers a plain SUBSCRIBE as soon as it is written (the
/// confirmation comes out of band, and a refusal such as an ACL's NOPERM is
/// dropped), while SSUBSCRIBE is a request with a reply.
///
/// History lives in Redis, so [`Broker::stats`] reports the rooms this node
/// listens to as `streams`, 0 stored events and bytes, and the entries this
/// node's publishes trimmed (each room's byte budget is enforced by the
/// publish script; the node-wide total is bounded by Redis's `maxmemory`).
pub struct RedisBroker {
    clients: RedisClients,
    keys: Keys,
    /// `<prefix>:room:`, what every room channel starts with.
    channel_prefix: String,
    node_id: String,
    sink: Arc<dyn PublicationSink>,
    /// Where presence changes from other nodes go.
    presence_sink: Arc<dyn PresenceSink>,
    rooms: Rooms<bool>,
    publish_script: LuaScript,
    read_script: LuaScript,
    receivers: Mutex<Option<reader::Receivers>>,
    /// History entries trimmed by this node's publishes, by reason.
    trimmed: publish::Trimmed,
    epoch_script: LuaScript,
    /// The engine epoch and until when this node may use it unchecked.
    engine_epoch: Mutex<Option<(String, std::time::Instant)>>,
}

impl RedisBroker {
    /// A broker over `clients`, delivering publications to `sink` and other
    /// nodes' presence changes to `presence_sink`. It starts listening
    /// to the subscriber's messages at once, so publications received
    /// before [`RedisBroker::spawn`] wait (in the subscriber's buffer) for
    /// the reader instead of being lost.
    pub fn new(
        clients: RedisClients,
        settings: &RedisSettings,
        sink: Arc<dyn PublicationSink>,
        presence_sink: Arc<dyn PresenceSink>,
    ) -> Arc<Self> {
        metrics::describe();
        let keys = Keys::new(&settings.prefix);
        Arc::new(Self {
            receivers: Mutex::new(Some(reader::Receivers::new(&clients))),
            channel_prefix: format!("{}:room:", keys.prefix()),
            keys,
            node_id: settings.node_id.clone(),
            clients,
            sink,
            presence_sink,
            rooms: Rooms::new(NewEpoch::GapWhenNothingDelivered),
            publish_script: LuaScript::new(script::PUBLISH, "publish"),
            read_script: LuaScript::new(script::READ, "history"),
            trimmed: publish::Trimmed::default(),
            epoch_script: LuaScript::new(epoch::SCRIPT, "epoch"),
            engine_epoch: Mutex::new(None),
        })
    }

    /// Tells the other nodes listening to `change.room` about a presence
    /// change, on the room's channel (so it keeps its order with the room's
    /// publications); their readers hand it to their presence sink.
    pub async fn announce(&self, change: &PresenceChange) -> Result<(), BrokerError> {
        if !self.clients.commands.is_connected() {
            metrics::PRESENCE_PUBLISH.refused();
            return Err(not_connected());
        }
        let channel = self.keys.room_channel(&change.room);
        let message = Value::Bytes(wire::encode_presence(change).into());
        let published: Result<Value, _> = metrics::PRESENCE_PUBLISH
            .time(self.clients.commands.spublish(channel, message))
            .await;
        published.map(drop).map_err(from_redis)
    }

    /// Starts the pub/sub reader (and its reconnect catch-up); it stops
    /// when `cancel` fires. The tasks it starts (socket writes, rooms'
    /// gap fills and catch-ups) are tracked by `tasks` and stop on `cancel`
    /// too. Call it once; later calls do nothing.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken, tasks: &TaskTracker) {
        let Some(receivers) = self.receivers.lock().take() else {
            tracing::warn!("RedisBroker::spawn called twice; the reader already runs");
            return;
        };
        let workers = Workers::new(tasks.clone(), cancel);
        tasks.spawn(reader::run(self.clone(), receivers, workers));
    }

    /// Starts listening to a room whose channel is not subscribed: reads
    /// the position first (delivery starts after it; publications between
    /// that read and the subscription are filled from history), then
    /// subscribes.
    async fn listen(&self, room: &RoomKey) -> Result<(), BrokerError> {
        let page = self.read(room, 0, 0).await?;
        self.rooms.set_baseline(room, page.position);
        self.subscribe_channel(room).await
    }

    async fn unlisten(&self, room: &RoomKey) -> Result<(), BrokerError> {
        // A dead connection holds no subscription, and the reconnect
        // re-issues only the rooms still listened to.
        if !self.clients.subscriber.is_connected() {
            return Ok(());
        }
        let channel = self.keys.room_channel(room);
        let unsubscribed = metrics::UNSUBSCRIBE
            .time(self.clients.subscriber.sunsubscribe(channel))
            .await;
        unsubscribed.map_err(from_redis)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// One atomic script (see [`RedisBroker`]). A timeout is answered
    /// `Unavailable` although the script may have run: Redis gives no way
    /// to know.
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let result = self.publish_once(request).await;
        match &result {
            Err(BrokerError::Unavailable(_)) => metrics::publish_failed("unavailable"),
            Err(BrokerError::Internal(_)) => metrics::publish_failed("internal"),
            _ => {}
        }
        result
    }

    /// Counted: returns once the room's channel subscription is live, even
    /// when a concurrent call started it. On error the count is not kept
    /// (do not `unsubscribe` for a failed `subscribe`).
    async fn subscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        if !self.clients.is_connected() {
            return Err(not_connected());
        }
        let gate = self.rooms.join(room);
        let mut live = gate.lock().await;
        if *live {
            return Ok(());
        }
        match self.listen(room).await {
            Ok(()) => {
                *live = true;
                Ok(())
            }
            Err(e) => {
                self.rooms.undo_join(room, &gate);
                Err(e)
            }
        }
    }

    /// Counted: the channel is unsubscribed when the last count goes. The
    /// room stops being delivered even when the UNSUBSCRIBE command fails
    /// (the error is returned; the stray subscription's messages are
    /// ignored and it ends with the connection).
    async fn unsubscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        let Some(gate) = self.rooms.leave(room) else {
            return Ok(());
        };
        let mut live = gate.lock().await;
        // A subscribe may have come in since the count reached zero.
        if !self.rooms.is_idle(room, &gate) {
            return Ok(());
        }
        let result = if *live {
            self.unlisten(room).await
        } else {
            Ok(())
        };
        *live = false;
        self.rooms.forget_if_idle(room, &gate);
        result
    }

    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError> {
        Ok(self.read(room, 0, 0).await?.position)
    }

    /// At most 10 000 publications per page (a cut page is incomplete).
    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.read(room, since, limit).await?.into_history(since))
    }

    fn is_ready(&self) -> bool {
        self.clients.is_connected()
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            streams: self.rooms.listened_count(),
            stored_events: 0,
            stored_bytes: 0,
            trimmed: self.trimmed.snapshot(),
        }
    }
}
