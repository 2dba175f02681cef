//! The pub/sub reader: one task per node that takes the room channels'
//! messages off the subscriber connection and hands them to the sink in
//! offset order, exactly once.
//!
//! Per room it keeps the last delivered position (see
//! `herald_engine_kit::rooms`; the ordering itself is `herald_engine_kit::ordered`):
//! duplicates are dropped, a gap is filled from the room's stream before the
//! message that revealed it, and a new epoch starts over. After the
//! subscriber reconnects, or when the reader lagged behind the connection,
//! every listened room is re-subscribed (after a reconnect) and caught up
//! from history on what was published meanwhile.
//!
//! The reader itself never waits on Redis nor writes a socket, so one slow
//! room cannot hold up the others: the sink only queues, and the socket
//! writes it returns run on their own task; a gap fill or a catch-up makes
//! the room *owned* by a task of its own (at most `ROOM_WORKERS` reading
//! history at once), and what the channel brings for that room meanwhile
//! waits in the owner's backlog, delivered in order once the fill is done.
//! Resyncs coalesce: a room already owned is only asked to catch up once
//! more before its owner lets go, so a lag cannot pile up reads.
//!
//! Offsets history no longer holds are counted in `herald_redis_missed_total`
//! when the next publication of the room shows they were skipped.

use super::error::not_connected;
use super::metrics;
use super::RedisBroker;
use crate::wire::{decode_room_message, RoomMessage};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::Server;
use fred::types::Message;
use herald_core::{BrokerError, PublicationSink, RoomKey};
use herald_engine_kit::history::Page;
use herald_engine_kit::ordered::{self, sleep_until, Backend, Resync, Workers, RESYNC_DEBOUNCE};
use herald_engine_kit::rooms::Rooms;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

/// The receivers the reader drains, taken when the broker is built so that
/// nothing sent before [`RedisBroker::spawn`] is lost.
pub(super) struct Receivers {
    pub(super) messages: Receiver<Message>,
    pub(super) subscriber_reconnects: Receiver<Server>,
    pub(super) command_reconnects: Receiver<Server>,
}

impl Receivers {
    pub(super) fn new(broker_clients: &crate::RedisClients) -> Self {
        Self {
            messages: broker_clients.subscriber.message_rx(),
            subscriber_reconnects: broker_clients.subscriber.reconnect_rx(),
            command_reconnects: broker_clients.commands.reconnect_rx(),
        }
    }
}

pub(super) async fn run(broker: Arc<RedisBroker>, mut rx: Receivers, workers: Workers) {
    let cancel = workers.cancel().clone();
    let mut resync = Resync::default();
    let mut watch_commands = true;
    loop {
        // Checked on every turn so a busy channel cannot starve it.
        if let Some(resubscribe) = resync.take_due() {
            ordered::resync(&broker, resubscribe, &workers);
        }
        let wake = resync.due();
        tokio::select! {
            // Messages before reconnects: the ones the old connection
            // received are all queued before the reconnect event, and must
            // be delivered before the catch-up that follows it.
            biased;
            () = cancel.cancelled() => return,
            message = rx.messages.recv() => match message {
                Ok(message) => broker.on_message(message, &workers),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "redis broker reader lagged; catching up from history");
                    resync.request(false, Duration::ZERO);
                }
                // The client quit: nothing more will come.
                Err(RecvError::Closed) => {
                    cancel.cancelled().await;
                    return;
                }
            },
            event = rx.subscriber_reconnects.recv() => {
                if !matches!(event, Err(RecvError::Closed)) {
                    metrics::reconnected("subscriber");
                    tracing::info!("redis subscriber connected; resubscribing and catching up");
                    resync.request(true, RESYNC_DEBOUNCE);
                }
            }
            event = rx.command_reconnects.recv(), if watch_commands => match event {
                Err(RecvError::Closed) => watch_commands = false,
                _ => {
                    // Redis may have lost its data: check the engine epoch
                    // again before the next new stream uses it.
                    broker.forget_engine_epoch();
                    metrics::reconnected("commands");
                }
            },
            () = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

impl RedisBroker {
    fn on_message(self: &Arc<Self>, message: Message, workers: &Workers) {
        if !self.is_room_channel(&message.channel) {
            return;
        }
        let Some(bytes) = message.value.as_bytes() else {
            return;
        };
        match decode_room_message(bytes) {
            Ok(RoomMessage::Publication(p, _node)) => ordered::on_publication(self, p, workers),
            Ok(RoomMessage::Presence(change)) => {
                if change.node_id != self.node_id && self.rooms.is_listened(&change.room) {
                    self.presence_sink.changed(&change);
                }
            }
            Err(e) => {
                tracing::warn!(channel = %message.channel, error = %e, "unreadable room message")
            }
        }
    }

    fn is_room_channel(&self, channel: &str) -> bool {
        channel.starts_with(&self.channel_prefix) && channel.ends_with(":ch")
    }

    /// SSUBSCRIBE the room's channel; returns once the server confirmed.
    pub(super) async fn subscribe_channel(&self, room: &RoomKey) -> Result<(), BrokerError> {
        use fred::interfaces::PubsubInterface;
        if !self.clients.subscriber.is_connected() {
            metrics::SUBSCRIBE.refused();
            return Err(not_connected());
        }
        let channel = self.keys.room_channel(room);
        let subscribed = metrics::SUBSCRIBE
            .time(self.clients.subscriber.ssubscribe(channel))
            .await;
        subscribed.map_err(super::error::from_redis)
    }
}

impl Backend for RedisBroker {
    /// Whether the room's channel subscription is live.
    type Live = bool;
    const SOURCE: &'static str = "history";

    fn rooms(&self) -> &Rooms<bool> {
        &self.rooms
    }

    fn sink(&self) -> &dyn PublicationSink {
        &*self.sink
    }

    fn is_live(live: &bool) -> bool {
        *live
    }

    fn check_connected(&self) -> Result<(), BrokerError> {
        if self.clients.is_connected() {
            Ok(())
        } else {
            Err(not_connected())
        }
    }

    async fn read(&self, room: &RoomKey, since: u64, limit: usize) -> Result<Page, BrokerError> {
        RedisBroker::read(self, room, since, limit).await
    }

    /// Re-issues the channel subscription (the subscriber reconnected).
    async fn renew(&self, room: &RoomKey) -> Result<(), BrokerError> {
        self.subscribe_channel(room).await
    }

    fn count_missed(&self, n: u64) {
        metrics::missed(n);
    }

    fn count_catchup(&self, n: u64) {
        metrics::catchup_delivered(n);
    }
}
