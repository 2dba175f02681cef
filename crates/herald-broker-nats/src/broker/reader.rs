//! The reader: one task delivering what the rooms' subscriptions bring, in
//! offset order per room, once. Each listened room has a subscription on
//! its delivery subject, drained by a small forwarding task into the
//! reader's queue. The ordering itself (cursor, gap fill, catch-up,
//! resyncs) is `herald_engine_kit::ordered`; this file carries NATS to it.
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
use super::NatsBroker;
use crate::wire;
use async_nats::{Event, Message};
use futures_util::StreamExt;
use herald_core::{BrokerError, PublicationSink, RoomKey};
use herald_engine_kit::history::Page;
use herald_engine_kit::ordered::{self, sleep_until, Backend, Resync, Workers, RESYNC_DEBOUNCE};
use herald_engine_kit::rooms::Rooms;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Messages queued from the subscriptions to the reader; when the reader
/// falls behind, the subscriptions' own buffers fill and the client drops
/// (a slow consumer), and the reader catches up from the stream.
const QUEUE: usize = 16_384;

/// A room's gate state: the stop token of its subscription's forwarding
/// task while that is live.
pub(super) type Live = Option<CancellationToken>;

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

pub(super) async fn run(broker: Arc<NatsBroker>, mut rx: Receivers, workers: Workers) {
    let cancel = workers.cancel().clone();
    let mut resync = Resync::default();
    let mut watch_events = true;
    loop {
        if let Some(resubscribe) = resync.take_due() {
            ordered::resync(&broker, resubscribe, &workers);
        }
        let wake = resync.due();
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
        let started = std::time::Instant::now();
        let subscription = self.clients.client.subscribe(subject).await;
        let subscription = subscription.map_err(|e| {
            crate::commands::SUBSCRIBE.record(started.elapsed(), false);
            super::error::unavailable("subscribe", e)
        })?;
        let flushed = self.round_trip().await;
        crate::commands::SUBSCRIBE.record(started.elapsed(), flushed.is_ok());
        let stop = workers.cancel().child_token();
        // Started before the flush's outcome is known, so the subscription
        // is always drained or unsubscribed.
        workers.tasks().spawn(forward(
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
                ordered::on_publication(self, Arc::new(stored.publication), workers);
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
}

impl Backend for NatsBroker {
    type Live = Live;
    const SOURCE: &'static str = "the stream";

    fn rooms(&self) -> &Rooms<Live> {
        &self.rooms
    }

    fn sink(&self) -> &dyn PublicationSink {
        &*self.sink
    }

    fn is_live(live: &Live) -> bool {
        live.is_some()
    }

    fn check_connected(&self) -> Result<(), BrokerError> {
        if self.clients.is_connected() {
            Ok(())
        } else {
            Err(not_connected())
        }
    }

    async fn read(&self, room: &RoomKey, since: u64, limit: usize) -> Result<Page, BrokerError> {
        NatsBroker::read(self, room, since, limit).await
    }

    /// async-nats re-subscribed by itself: make sure the server has it.
    async fn renew(&self, _room: &RoomKey) -> Result<(), BrokerError> {
        self.round_trip().await
    }

    fn count_missed(&self, n: u64) {
        metrics::missed(n);
    }

    fn count_catchup(&self, n: u64) {
        metrics::catchup_delivered(n);
    }
}
