//! The pub/sub reader: one task per node that takes the room channels'
//! messages off the subscriber connection and hands them to the sink in
//! offset order, exactly once.
//!
//! Per room it keeps the last delivered position (see [`super::rooms`]):
//! duplicates are dropped, a gap is filled from the room's stream before the
//! message that revealed it, and a new epoch starts over. After the
//! subscriber reconnects, or when the reader lagged behind the connection,
//! every listened room is re-subscribed (after a reconnect) and caught up
//! from history on what was published meanwhile.
//!
//! The reader itself never waits on Redis nor writes a socket, so one slow
//! room cannot hold up the others: the sink only queues, and the socket
//! writes it returns run on their own task; a gap fill or a catch-up makes
//! the room *owned* by a task of its own (at most [`ROOM_WORKERS`] reading
//! history at once), and what the channel brings for that room meanwhile
//! waits in the owner's backlog, delivered in order once the fill is done.
//! Resyncs coalesce: a room already owned is only asked to catch up once
//! more before its owner lets go, so a lag cannot pile up reads.
//!
//! Offsets history no longer holds are counted in `herald_redis_missed_total`
//! when the next publication of the room shows they were skipped.

use super::error::not_connected;
use super::metrics;
use super::read::MAX_READ;
use super::rooms::{Gate, Next, Offer, Verdict};
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
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Reconnect events come in bursts (one per cluster node): wait this long
/// for the rest before resyncing once.
const RESYNC_DEBOUNCE: Duration = Duration::from_millis(20);
/// First and longest wait before a room's owner retries a catch-up that
/// failed.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Bounds one room's catch-up (pages read) so a stream that keeps changing
/// epochs cannot hold its owner.
const MAX_CATCHUP_PAGES: usize = 64;
/// Rooms whose owners read history at once; the others wait their turn
/// (their publications queued behind them), so a resync of many rooms
/// cannot flood Redis.
pub(super) const ROOM_WORKERS: usize = 8;

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

/// Where the reader's work off the reader runs: the node's task tracker and
/// cancellation, and the permits bounding history reads.
#[derive(Clone)]
pub(super) struct Workers {
    tasks: TaskTracker,
    cancel: CancellationToken,
    reads: Arc<Semaphore>,
}

impl Workers {
    pub(super) fn new(tasks: TaskTracker, cancel: CancellationToken) -> Self {
        Self {
            tasks,
            cancel,
            reads: Arc::new(Semaphore::new(ROOM_WORKERS)),
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
}

impl Resync {
    fn request(&mut self, resubscribe: bool, delay: Duration) {
        let at = Instant::now() + delay;
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
        self.resubscribe |= resubscribe;
    }

    /// Takes the pending resync when it is due: whether to re-subscribe.
    fn take_due(&mut self) -> Option<bool> {
        if self.due.is_none_or(|d| d > Instant::now()) {
            return None;
        }
        self.due = None;
        Some(std::mem::take(&mut self.resubscribe))
    }
}

/// A room owner's first piece of work.
enum Work {
    /// Fill the offsets after `after` from history, then offer `p`.
    Fill(Arc<Publication>, u64),
    /// Catch up from history, under the room's gate.
    CatchUp { gate: Gate, resubscribe: bool },
}

pub(super) async fn run(broker: Arc<RedisBroker>, mut rx: Receivers, workers: Workers) {
    let cancel = workers.cancel.clone();
    let mut resync = Resync {
        due: None,
        resubscribe: false,
    };
    let mut watch_commands = true;
    loop {
        // Checked on every turn so a busy channel cannot starve it.
        if let Some(resubscribe) = resync.take_due() {
            broker.resync(resubscribe, &workers);
        }
        let wake = resync.due;
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

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
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
            Ok(RoomMessage::Publication(p, _node)) => self.on_publication(p, workers),
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

    /// On the reader: delivers `p` at once when it is next, or leaves it to
    /// the room's owner (starting one to fill a gap).
    fn on_publication(self: &Arc<Self>, p: Arc<Publication>, workers: &Workers) {
        match self.rooms.classify(&p) {
            Verdict::Drop | Verdict::Queued => {}
            Verdict::Deliver => {
                // Queued here, in order; the sockets are written elsewhere.
                let writes = self.sink.deliver(p);
                if !writes.is_empty() {
                    workers.tasks.spawn(async move { writes.run() });
                }
            }
            Verdict::Gap { after, owner } => {
                let room = p.room.clone();
                self.start_owner(room, owner, Some(Work::Fill(p, after)), workers);
            }
        }
    }

    /// On the reader: catches every listened room up from history
    /// (re-subscribing first when asked), each by an owner of its own; a
    /// room already owned only gets its owner to catch up once more.
    fn resync(self: &Arc<Self>, resubscribe: bool, workers: &Workers) {
        for (room, _gate) in self.rooms.listened() {
            if let Some(owner) = self.rooms.claim_catch_up(&room, resubscribe) {
                self.start_owner(room, owner, None, workers);
            }
        }
    }

    /// Runs the owner `id` of `room` on its own task, until the room has
    /// nothing left for it (or the node shuts down).
    fn start_owner(self: &Arc<Self>, room: RoomKey, id: u64, first: Option<Work>, w: &Workers) {
        let broker = self.clone();
        let (cancel, reads) = (w.cancel.clone(), w.reads.clone());
        w.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = broker.own(&room, id, first, &reads) => {}
            }
        });
    }

    /// The owner's loop: its first work, then the room's backlog in order
    /// and any catch-up asked meanwhile. A catch-up that fails is retried
    /// (with backoff) while the room is still this owner's.
    async fn own(&self, room: &RoomKey, id: u64, first: Option<Work>, reads: &Semaphore) {
        let mut work = first;
        let mut retry = RETRY_MIN;
        loop {
            if let Some(job) = work.take() {
                let Ok(permit) = reads.acquire().await else {
                    return;
                };
                match job {
                    Work::Fill(p, after) => {
                        if let Err(e) = self.fill(&p, after, id).await {
                            tracing::warn!(room = %p.room, error = %e, "could not fill a gap from history");
                        }
                        self.offer(p, false, id);
                    }
                    Work::CatchUp { gate, resubscribe } => {
                        let result = self.resync_room(room, &gate, resubscribe, id).await;
                        drop(permit);
                        if let Err(e) = result {
                            tracing::warn!(room = %room, error = %e, "resync failed; retrying");
                            tokio::time::sleep(retry).await;
                            retry = (retry * 2).min(RETRY_MAX);
                            if !self.rooms.owns(room, id) {
                                return;
                            }
                            work = Some(Work::CatchUp { gate, resubscribe });
                            continue;
                        }
                        retry = RETRY_MIN;
                    }
                }
            }
            match self.rooms.next(room, id) {
                Next::Publication(p) => match self.rooms.classify_owned(&p, id) {
                    Verdict::Deliver => self.sink.deliver(p).run(),
                    Verdict::Gap { after, .. } => work = Some(Work::Fill(p, after)),
                    Verdict::Drop | Verdict::Queued => {}
                },
                Next::CatchUp { gate, resubscribe } => {
                    work = Some(Work::CatchUp { gate, resubscribe });
                }
                Next::Done => return,
            }
        }
    }

    /// Delivers the stored publications between `after` and `p`.
    async fn fill(&self, p: &Publication, after: u64, owner: u64) -> Result<(), BrokerError> {
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
                self.offer(q, true, owner);
            }
            since = last;
        }
        Ok(())
    }

    /// Delivers `p` if it is new, counting offsets skipped over; by the
    /// room's owner, which writes the sockets itself (off the reader).
    fn offer(&self, p: Arc<Publication>, from_history: bool, owner: u64) {
        let Offer::Deliver { missed } = self.rooms.offer(&p, owner) else {
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

    /// Re-subscribes one room (when asked) and catches up on it, under its
    /// gate so a concurrent unsubscribe cannot interleave.
    async fn resync_room(
        &self,
        room: &RoomKey,
        gate: &Gate,
        resubscribe: bool,
        owner: u64,
    ) -> Result<(), BrokerError> {
        if !self.clients.is_connected() {
            return Err(not_connected());
        }
        let live = gate.lock().await;
        if !*live || !self.rooms.is_wanted(room, gate) {
            return Ok(());
        }
        if resubscribe {
            self.subscribe_channel(room).await?;
        }
        self.catch_up(room, owner).await
    }

    /// Delivers what `room` published since the last delivered position;
    /// after an epoch change, everything of the new epoch history holds.
    async fn catch_up(&self, room: &RoomKey, owner: u64) -> Result<(), BrokerError> {
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
                self.offer(p, true, owner);
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
