//! The reader: one task delivering what the rooms' subscriptions bring, in
//! offset order per room, once. Each listened room has a subscription on
//! its delivery subject, drained by a small forwarding task into the
//! reader's queue.
//!
//! - Duplicates and stale messages are dropped by the room's cursor.
//! - A gap (an offset skipped) is filled from the stream by a task owning
//!   the room; what the subscription brings meanwhile waits behind it.
//! - After a reconnect (async-nats re-subscribes, but what was published
//!   meanwhile is gone) and after a slow-consumer drop, every listened
//!   room catches up from the stream. Offsets gone from the stream by then
//!   are counted as missed; the next delivery shows they were skipped.

use super::error::not_connected;
use super::message::{self, Stored};
use super::metrics;
use super::publish::Last;
use super::read::MAX_READ;
use super::rooms::{Gate, Next, Offer, Verdict};
use super::NatsBroker;
use crate::wire;
use async_nats::{Event, Message};
use futures_util::StreamExt;
use herald_core::{BrokerError, Publication, RoomKey};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Reconnect events may come in bursts: wait this long for the rest
/// before resyncing once.
const RESYNC_DEBOUNCE: Duration = Duration::from_millis(20);
/// First and longest wait before a room's owner retries a catch-up that
/// failed.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Bounds one room's catch-up (pages read).
const MAX_CATCHUP_PAGES: usize = 64;
/// Rooms whose owners read the stream at once.
const ROOM_WORKERS: usize = 8;
/// Messages queued from the subscriptions to the reader; when the reader
/// falls behind, the subscriptions' own buffers fill and the client drops
/// (a slow consumer), and the reader catches up from the stream.
const QUEUE: usize = 16_384;

/// One message of a room's delivery subject.
pub(super) type Delivery = (RoomKey, Message);
pub(super) type DeliverySender = mpsc::Sender<Delivery>;

/// What the reader drains, made when the broker is built.
pub(super) struct Receivers {
    deliveries: mpsc::Receiver<Delivery>,
    events: broadcast::Receiver<Event>,
}

impl Receivers {
    pub(super) fn new(clients: &crate::NatsClients) -> (DeliverySender, Self) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let receivers = Self {
            deliveries: rx,
            events: clients.events(),
        };
        (tx, receivers)
    }
}

/// The node's task tracker and cancellation, and the permits bounding
/// stream reads by room owners.
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
#[derive(Default)]
struct Resync {
    due: Option<Instant>,
    resubscribe: bool,
}

impl Resync {
    fn request(&mut self, resubscribe: bool, delay: Duration) {
        let at = Instant::now() + delay;
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
        self.resubscribe |= resubscribe;
    }

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
    Fill(Arc<Publication>, u64),
    CatchUp { gate: Gate, resubscribe: bool },
}

pub(super) async fn run(broker: Arc<NatsBroker>, mut rx: Receivers, workers: Workers) {
    let cancel = workers.cancel.clone();
    let mut resync = Resync::default();
    let mut watch_events = true;
    loop {
        if let Some(resubscribe) = resync.take_due() {
            broker.resync(resubscribe, &workers);
        }
        let wake = resync.due;
        tokio::select! {
            // Messages before events: what arrived before a reconnect is
            // delivered before the catch-up that follows it.
            biased;
            () = cancel.cancelled() => return,
            delivery = rx.deliveries.recv() => match delivery {
                Some((room, message)) => broker.on_message(room, message, &workers),
                None => {
                    cancel.cancelled().await;
                    return;
                }
            },
            event = rx.events.recv(), if watch_events => match event {
                Ok(Event::Connected) => {
                    metrics::reconnected();
                    tracing::info!("nats broker connected; catching up on listened rooms");
                    resync.request(true, RESYNC_DEBOUNCE);
                }
                Ok(Event::SlowConsumer(_)) => {
                    tracing::warn!("a room subscription dropped messages; catching up from the stream");
                    resync.request(false, Duration::ZERO);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => resync.request(true, Duration::ZERO),
                Err(RecvError::Closed) => watch_events = false,
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

/// Drains one room's subscription into the reader's queue until `stop`.
async fn forward(
    mut subscription: async_nats::Subscriber,
    room: RoomKey,
    queue: DeliverySender,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                let _ = subscription.unsubscribe().await;
                return;
            }
            message = subscription.next() => match message {
                Some(message) => {
                    if queue.send((room.clone(), message)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

impl NatsBroker {
    /// Returns once the server processed everything this connection sent
    /// before (subscriptions included): a request nobody answers, which the
    /// server refuses at once ("no responders"). async-nats' `flush` only
    /// writes the buffer out and waits for no reply.
    pub(super) async fn round_trip(&self) -> Result<(), BrokerError> {
        let subject = format!(
            "{}.ping.{}",
            self.names.prefix(),
            crate::names::token(&self.node_id)
        );
        match self
            .clients
            .client
            .request(subject, bytes::Bytes::new())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(super::error::unavailable("round trip", e)),
        }
    }

    /// Subscribes to the room's delivery subject and returns once the
    /// server has it ([`Self::round_trip`]); its forwarding task stops on
    /// the returned token (or the node's cancellation).
    pub(super) async fn subscribe_subject(
        &self,
        room: &RoomKey,
        workers: &Workers,
    ) -> Result<CancellationToken, BrokerError> {
        let subject = self.names.delivery_subject(room);
        let subscription = self
            .clients
            .client
            .subscribe(subject)
            .await
            .map_err(|e| super::error::unavailable("subscribe", e))?;
        let flushed = self.round_trip().await;
        let stop = workers.cancel.child_token();
        // Started before the flush's outcome is known, so the subscription
        // is always drained or unsubscribed.
        workers.tasks.spawn(forward(
            subscription,
            room.clone(),
            self.deliveries.clone(),
            stop.clone(),
        ));
        if let Err(e) = flushed {
            stop.cancel();
            return Err(e);
        }
        Ok(stop)
    }

    fn on_message(self: &Arc<Self>, room: RoomKey, message: Message, workers: &Workers) {
        let headers = message.headers.as_ref();
        if wire::is_presence(headers) {
            if let Some(change) = wire::decode_presence(&room, headers, &message.payload) {
                if change.node_id != self.node_id && self.rooms.is_listened(&room) {
                    self.presence_sink.changed(&change);
                }
            }
            return;
        }
        let Some(headers) = headers else {
            return;
        };
        match message::decode(room, None, headers, &message.payload) {
            Ok(stored) => {
                self.note_last(&stored);
                self.on_publication(Arc::new(stored.publication), workers);
            }
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "unreadable room message")
            }
        }
    }

    /// Keeps the node's idea of the room's last message fresh, so its next
    /// publish there need not lose a race first.
    fn note_last(&self, stored: &Stored) {
        self.published.saw(
            &stored.publication.room,
            Last {
                seq: stored.seq,
                position: stored.publication.position.clone(),
                cb: stored.cb,
            },
        );
    }

    fn on_publication(self: &Arc<Self>, p: Arc<Publication>, workers: &Workers) {
        match self.rooms.classify(&p) {
            Verdict::Drop | Verdict::Queued => {}
            Verdict::Deliver => {
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

    fn resync(self: &Arc<Self>, resubscribe: bool, workers: &Workers) {
        for (room, _gate) in self.rooms.listened() {
            if let Some(owner) = self.rooms.claim_catch_up(&room, resubscribe) {
                self.start_owner(room, owner, None, workers);
            }
        }
    }

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
                            tracing::warn!(room = %p.room, error = %e, "could not fill a gap from the stream");
                        }
                        self.offer(p, false, id);
                    }
                    Work::CatchUp { gate, resubscribe } => {
                        let result = self.resync_room(room, &gate, resubscribe, id).await;
                        drop(permit);
                        if let Err(e) = result {
                            tracing::warn!(room = %room, error = %e, "catch-up failed; retrying");
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

    fn offer(&self, p: Arc<Publication>, from_stream: bool, owner: u64) {
        let Offer::Deliver { missed } = self.rooms.offer(&p, owner) else {
            return;
        };
        if missed > 0 {
            metrics::missed(missed);
            tracing::warn!(
                room = %p.room,
                missed,
                before = p.position.offset,
                "publications gone from the stream before delivery"
            );
        }
        if from_stream {
            metrics::catchup_delivered(1);
        }
        self.sink.deliver(p).run();
    }

    /// Catches one room up, under its gate so a concurrent unsubscribe
    /// cannot interleave; after a reconnect, first makes sure the
    /// client's re-subscription is live (a round trip).
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
        if live.is_none() || !self.rooms.is_wanted(room, gate) {
            return Ok(());
        }
        if resubscribe {
            self.round_trip().await?;
        }
        self.catch_up(room, owner).await
    }

    /// Delivers what `room` published since the last delivered position;
    /// after an epoch change, everything of the new epoch the stream holds.
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
}
