//! The rooms' stream and the engine's epoch bucket: ensured by one task
//! that retries while NATS is away, and again after every reconnect (the
//! server may have lost its store) or when a call found the stream gone.
//!
//! The stream: `<prefix>-rooms`, file storage, `broker.nats_replicas`
//! replicas, subjects `<prefix>.room.*`, `max_age` = `broker.nats_max_age`,
//! a duplicate window of [`DEDUP_WINDOW`] (idempotency keys), direct gets
//! on (reads of a subject's last message without a consumer), and
//! RePublish `<prefix>.room.*` -> `<prefix>.deliver.{{wildcard(1)}}`: the
//! server republishes every message it stored, in stream order, to the
//! room's delivery subject, so only accepted events reach nodes and a
//! publisher that dies after the store cannot lose the announcement.

use super::error::{internal, unavailable};
use super::NatsBroker;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{kv, stream};
use async_nats::Event;
use herald_core::BrokerError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// How long JetStream remembers a `Nats-Msg-Id` (an idempotency key), at
/// most the stream's `max_age`.
pub(super) const DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// How often a ready stream is checked again (it may have been deleted).
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How soon a failed ensure is retried.
const RETRY_EVERY: Duration = Duration::from_millis(500);

impl NatsBroker {
    fn stream_config(&self) -> stream::Config {
        let subjects = self.names.room_subjects();
        let delivery = format!("{}.deliver.{{{{wildcard(1)}}}}", self.names.prefix());
        stream::Config {
            name: self.names.rooms_stream(),
            description: Some("Herald rooms' events (one subject per room)".into()),
            subjects: vec![subjects.clone()],
            storage: stream::StorageType::File,
            num_replicas: self.limits.replicas,
            max_age: self.limits.max_age,
            duplicate_window: DEDUP_WINDOW.min(self.limits.max_age),
            allow_direct: true,
            republish: Some(stream::Republish {
                source: subjects,
                destination: delivery,
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// The epoch bucket (made by [`crate::kv::open_or_create`]).
    fn epoch_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: self.names.bucket("epoch"),
            description: "Herald's engine epoch (new rooms start in it)".into(),
            history: 1,
            // The value carries its own deadline; `max_age` only clears it.
            max_age: super::epoch::epoch_life(self.limits.max_age) * 2,
            storage: stream::StorageType::File,
            num_replicas: self.limits.replicas,
            ..Default::default()
        }
    }

    /// Makes sure the stream and the epoch bucket exist; a stream created
    /// here (first start, or it was lost) starts a new engine epoch, so no
    /// room can reuse a position it had before.
    pub(super) async fn ensure(&self) -> Result<(), BrokerError> {
        let js = &self.clients.jetstream;
        let name = self.names.rooms_stream();
        let created = match js.get_stream(&name).await {
            Ok(stream) => {
                self.update_if_changed(stream.cached_info()).await?;
                false
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(err)
                    if err.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    js.create_stream(self.stream_config())
                        .await
                        .map_err(|e| internal("creating the rooms' stream", e))?;
                    tracing::info!(stream = %name, "created the rooms' stream");
                    true
                }
                _ => return Err(unavailable("reading the rooms' stream", e)),
            },
        };
        let store = crate::kv::open_or_create(js, &self.epoch_bucket())
            .await
            .map_err(|e| match e {
                crate::kv::BucketError::Create { .. } => internal("the epoch bucket", e),
                crate::kv::BucketError::Open { .. } => unavailable("the epoch bucket", e),
            })?;
        *self.epoch_kv.lock() = Some(store);
        if created {
            self.forget_caches();
            self.new_engine_epoch().await?;
        }
        Ok(())
    }

    /// Brings a stream made with other settings (`broker.nats_max_age`,
    /// `broker.nats_replicas`, an older build) to this node's; a refusal
    /// (e.g. more replicas than servers) is logged and the stream used as
    /// it is. A stream without this engine's RePublish cannot be used (it
    /// would deliver nothing) nor changed (the server refuses to change
    /// RePublish): an error saying so.
    async fn update_if_changed(&self, info: &stream::Info) -> Result<(), BrokerError> {
        let want = self.stream_config();
        let have = &info.config;
        if have.republish != want.republish {
            return Err(internal(
                "the rooms' stream",
                format!(
                    "{} exists without the RePublish to {}.deliver.* this engine needs, which \
                     the server cannot add to an existing stream; delete the stream or use \
                     another broker.prefix",
                    have.name,
                    self.names.prefix()
                ),
            ));
        }
        if have.max_age == want.max_age
            && have.num_replicas == want.num_replicas
            && have.republish == want.republish
            && have.allow_direct
            && have.duplicate_window == want.duplicate_window
        {
            return Ok(());
        }
        match self.clients.jetstream.update_stream(want).await {
            Ok(_) => tracing::info!(
                stream = %have.name,
                "updated the rooms' stream to this node's settings"
            ),
            Err(e) => tracing::warn!(
                stream = %have.name,
                error = %e,
                "the rooms' stream has other settings and could not be updated; using it as it is"
            ),
        }
        Ok(())
    }

    /// Whether the stream is known to be there.
    pub(super) fn stream_ready(&self) -> bool {
        self.stream_ready.load(Ordering::Acquire)
    }

    /// A call found the stream missing: not ready until ensured again.
    pub(super) fn stream_lost(&self) {
        self.stream_ready.store(false, Ordering::Release);
        self.forget_caches();
        self.setup_wake.notify_one();
    }
}

/// The setup task: ensures the stream while connected, again after every
/// reconnect and whenever a call found it gone, and checks it now and then.
pub(super) async fn run(broker: Arc<NatsBroker>, cancel: CancellationToken) {
    let mut events = broker.clients.events();
    loop {
        let wait = if broker.clients.is_connected() {
            match broker.ensure().await {
                Ok(()) => {
                    *broker.setup_error.lock() = None;
                    broker.stream_ready.store(true, Ordering::Release);
                    CHECK_EVERY
                }
                Err(e) => {
                    *broker.setup_error.lock() = Some(e.to_string());
                    broker.stream_ready.store(false, Ordering::Release);
                    tracing::warn!(error = %e, "the rooms' stream is not ready; retrying");
                    RETRY_EVERY
                }
            }
        } else {
            RETRY_EVERY
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = broker.setup_wake.notified() => {}
            event = events.recv() => match event {
                Ok(Event::Connected) | Err(RecvError::Lagged(_)) => broker.forget_caches(),
                Ok(_) => continue,
                Err(RecvError::Closed) => {
                    cancel.cancelled().await;
                    return;
                }
            },
            () = tokio::time::sleep(wait) => {}
        }
    }
}
