//! The pub/sub reader: one task per node that takes the room channels'
//! messages off the subscriber connection and hands them to the sink in
//! offset order, exactly once.
//!
//! Per room it keeps the last delivered position (see [`super::rooms`]):
//! duplicates are dropped, a gap is filled from the room's stream before the
//! message that revealed it, and a new epoch starts over. After the
//! subscriber reconnects, or when the reader lagged behind the connection,
//! a resync re-issues every room's subscription (under the room's gate) and
//! catches up from history on what was published meanwhile. Everything runs
//! in this one task, so a room's deliveries never overlap.
//!
//! Offsets history no longer holds are counted in `herald_redis_missed_total`
//! when the next publication of the room shows they were skipped.

use super::error::not_connected;
use super::metrics;
use super::read::MAX_READ;
use super::rooms::{Gate, Offer, Verdict};
use super::RedisBroker;
use crate::wire::{decode_room_message, RoomMessage};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::Server;
use fred::types::Message;
use herald_core::{BrokerError, Publication, RoomKey};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Reconnect events come in bursts (one per cluster node): wait this long
/// for the rest before resyncing once.
const RESYNC_DEBOUNCE: Duration = Duration::from_millis(20);
/// First and longest wait before retrying a resync that failed.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Bounds one room's catch-up (pages read) so a stream that keeps changing
/// epochs cannot hold the reader.
const MAX_CATCHUP_PAGES: usize = 64;

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

/// A pending resync.
struct Resync {
    /// When to run it; `None` when nothing is pending.
    due: Option<Instant>,
    /// Whether subscriptions must be re-issued (after a reconnect) or only
    /// history caught up on (after a lag).
    resubscribe: bool,
    /// Rooms left over by a failed attempt; `None` means every room.
    remaining: Option<Vec<(RoomKey, Gate)>>,
    retry: Duration,
}

impl Resync {
    fn request(&mut self, resubscribe: bool, delay: Duration) {
        let at = Instant::now() + delay;
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
        self.resubscribe |= resubscribe;
        self.remaining = None;
        self.retry = RETRY_MIN;
    }

    fn is_due(&self) -> bool {
        self.due.is_some_and(|d| d <= Instant::now())
    }

    /// Tries again later with `remaining` (`None`: every room).
    fn retry_later(&mut self, remaining: Option<Vec<(RoomKey, Gate)>>) {
        self.due = Some(Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(RETRY_MAX);
        self.remaining = remaining;
    }

    fn done(&mut self) {
        self.due = None;
        self.resubscribe = false;
        self.remaining = None;
        self.retry = RETRY_MIN;
    }
}

pub(super) async fn run(broker: Arc<RedisBroker>, mut rx: Receivers, cancel: CancellationToken) {
    let mut resync = Resync {
        due: None,
        resubscribe: false,
        remaining: None,
        retry: RETRY_MIN,
    };
    let mut watch_commands = true;
    loop {
        // Checked on every turn so a busy channel cannot starve it.
        if resync.is_due() && !until_cancelled(&cancel, broker.resync(&mut resync)).await {
            return;
        }
        let wake = resync.due;
        tokio::select! {
            // Messages before reconnects: the ones the old connection
            // received are all queued before the reconnect event, and must
            // be delivered before the catch-up that follows it.
            biased;
            () = cancel.cancelled() => return,
            message = rx.messages.recv() => match message {
                Ok(message) => {
                    if !until_cancelled(&cancel, broker.on_message(message)).await {
                        return;
                    }
                }
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

/// Runs `work` unless `cancel` fires first (a history read may wait for
/// the command timeout; shutdown should not). Returns whether it ran.
async fn until_cancelled(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = work => true,
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl RedisBroker {
    async fn on_message(&self, message: Message) {
        if !self.is_room_channel(&message.channel) {
            return;
        }
        let Some(bytes) = message.value.as_bytes() else {
            return;
        };
        match decode_room_message(bytes) {
            Ok(RoomMessage::Publication(p, _node)) => self.on_publication(p).await,
            Ok(RoomMessage::Presence(change)) => {
                if change.node_id != self.node_id && self.rooms.is_listened(&change.room) {
                    self.sink.presence(&change);
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

    async fn on_publication(&self, p: Arc<Publication>) {
        match self.rooms.classify(&p) {
            Verdict::Drop => {}
            Verdict::Deliver => self.sink.deliver(p).run(),
            Verdict::Gap { after } => {
                if let Err(e) = self.fill(&p, after).await {
                    tracing::warn!(room = %p.room, error = %e, "could not fill a gap from history");
                }
                self.offer(p, false);
            }
        }
    }

    /// Delivers the stored publications between `after` and `p`.
    async fn fill(&self, p: &Publication, after: u64) -> Result<(), BrokerError> {
        let before = p.position.offset;
        let mut since = after;
        while since + 1 < before {
            let want = usize::try_from(before - since - 1).unwrap_or(MAX_READ);
            let page = self.read(&p.room, since, want).await?;
            if page.position.epoch != p.position.epoch {
                return Ok(());
            }
            let Some(last) = page.publications.last().map(|q| q.position.offset) else {
                return Ok(());
            };
            for q in page.publications {
                if q.position.offset >= before {
                    return Ok(());
                }
                self.offer(q, true);
            }
            since = last;
        }
        Ok(())
    }

    /// Delivers `p` if it is new, counting offsets skipped over.
    fn offer(&self, p: Arc<Publication>, from_history: bool) {
        let Offer::Deliver { missed } = self.rooms.offer(&p) else {
            return;
        };
        if missed > 0 {
            metrics::missed(missed);
            tracing::warn!(
                room = %p.room,
                missed,
                before = p.position.offset,
                "publications gone from history before delivery"
            );
        }
        if from_history {
            metrics::catchup_delivered(1);
        }
        self.sink.deliver(p).run();
    }

    async fn resync(&self, resync: &mut Resync) {
        if !self.clients.is_connected() {
            // The next reconnect event asks again; retry anyway in case the
            // commands connection was the one away.
            let remaining = resync.remaining.take();
            resync.retry_later(remaining);
            return;
        }
        let rooms = resync
            .remaining
            .take()
            .unwrap_or_else(|| self.rooms.listened());
        for (i, (room, gate)) in rooms.iter().enumerate() {
            if let Err(e) = self.resync_room(room, gate, resync.resubscribe).await {
                tracing::warn!(room = %room, error = %e, "resync failed; retrying");
                resync.retry_later(Some(rooms[i..].to_vec()));
                return;
            }
        }
        resync.done();
    }

    /// Re-subscribes one room (when asked) and catches up on it, under its
    /// gate so a concurrent unsubscribe cannot interleave.
    async fn resync_room(
        &self,
        room: &RoomKey,
        gate: &Gate,
        resubscribe: bool,
    ) -> Result<(), BrokerError> {
        let live = gate.lock().await;
        if !*live || !self.rooms.is_wanted(room, gate) {
            return Ok(());
        }
        if resubscribe {
            self.subscribe_channel(room).await?;
        }
        self.catch_up(room).await
    }

    /// Delivers what `room` published since the last delivered position;
    /// after an epoch change, everything of the new epoch history holds.
    async fn catch_up(&self, room: &RoomKey) -> Result<(), BrokerError> {
        let Some(cursor) = self.rooms.cursor(room) else {
            let page = self.read(room, 0, 0).await?;
            self.rooms.set_baseline(room, page.position);
            return Ok(());
        };
        let (mut epoch, mut since) = (cursor.epoch, cursor.offset);
        for _ in 0..MAX_CATCHUP_PAGES {
            let page = self.read(room, since, MAX_READ).await?;
            if page.position.epoch != epoch {
                epoch = page.position.epoch;
                since = 0;
                continue;
            }
            let Some(last) = page.publications.last().map(|p| p.position.offset) else {
                return Ok(());
            };
            for p in page.publications {
                self.offer(p, true);
            }
            if last >= page.position.offset {
                return Ok(());
            }
            since = last;
        }
        Ok(())
    }

    /// SSUBSCRIBE the room's channel; returns once the server confirmed.
    pub(super) async fn subscribe_channel(&self, room: &RoomKey) -> Result<(), BrokerError> {
        use fred::interfaces::PubsubInterface;
        if !self.clients.subscriber.is_connected() {
            return Err(not_connected());
        }
        let channel = self.keys.room_channel(room);
        let subscribed = self.clients.subscriber.ssubscribe(channel).await;
        subscribed.map_err(super::error::from_redis)
    }
}
