//! The ingest stream consumer: services append `POST /api/v1/publish`
//! objects to `<prefix>:ingest` (field `payload`, with an optional field
//! `traceparent`, a W3C trace context the publish continues), and the
//! cluster publishes each entry once.
//!
//! All nodes read the stream as one consumer group, `herald`, each node a
//! consumer named by its node id. An entry is acknowledged (`XACK`) only
//! after the target accepted it, then deleted (`XDEL`), so the stream holds
//! nothing but entries not yet processed. That is also why the group is
//! created at id `0` rather than `$`: after a Redis restart without
//! persistence, entries a service appended before a node re-created the
//! group are still consumed, and nothing already processed is left in the
//! stream to be consumed twice.
//!
//! Exactly-once publishing rests on idempotency, not on the stream: the
//! target gets the entry id and uses `ingest:<entry id>` as the publish's
//! idempotency key when the payload names none, so an entry delivered again
//! (a node died between publish and acknowledgement) is not published
//! twice.
//!
//! Failures:
//! - an entry without a `payload` field, or one the target calls
//!   [`IngestFailure::Invalid`], moves to `<prefix>:ingest:dead` with its
//!   payload (or its raw fields), `reason`, `id` and `node`, and is
//!   acknowledged;
//! - [`IngestFailure::Unavailable`] leaves the entry pending; the node
//!   retries it with backoff and keeps its claim on it fresh, so a broker
//!   outage uses up no delivery attempts;
//! - entries pending on a dead or stalled consumer for
//!   [`IngestOptions::claim_idle`] are claimed (`XAUTOCLAIM`) by another
//!   node; an entry delivered more than [`IngestOptions::max_deliveries`]
//!   times moves to the dead stream instead;
//! - while Redis is away the task backs off (exponential, jitter, at most
//!   5 s), re-creates the group if Redis came back empty, and goes on.
//!
//! A node processes its entries one at a time in stream order and reads no
//! new ones until its batch is done, so it holds at most one batch in
//! memory. Across nodes there is no order between entries. A node that
//! stops with nothing pending deletes its consumer from the group (node ids
//! are often fresh per process); one that stops with entries pending keeps
//! them, and another node claims them after `claim_idle`.

mod reply;
mod worker;

use crate::{RedisClients, RedisSettings};
use async_trait::async_trait;
use herald_core::TraceContext;
use metrics::{counter, describe_counter};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The consumer group every node joins.
const GROUP: &str = "herald";

/// Why an ingest entry was not published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestFailure {
    /// The broker could not take it now; the entry stays pending and is
    /// retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The entry can never be published (bad JSON, bad room, ...): it moves
    /// to the dead-letter stream with this reason.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Publishes one ingest entry's `payload` (the JSON of `POST /api/v1/publish`).
#[async_trait]
pub trait IngestTarget: Send + Sync + 'static {
    /// Publishes it; `Ok` once the broker accepted it.
    ///
    /// `entry_id` is the stream entry's id. When the payload carries no
    /// `idempotency_key`, the target must publish with
    /// `idempotency_key = "ingest:<entry_id>"`: an entry can be delivered
    /// again (its node died after publishing and before acknowledging, or
    /// a reply was lost), and the key makes the repeat answer the first
    /// result instead of publishing twice.
    ///
    /// It must return (the broker's command timeout bounds it): a call that
    /// never returns stalls this node's consumer until its entries are
    /// claimed by another node.
    ///
    /// `trace` is the entry's `traceparent` field, when it has a valid one:
    /// the publish continues that trace.
    async fn publish(
        &self,
        entry_id: &str,
        payload: &str,
        trace: Option<TraceContext>,
    ) -> Result<(), IngestFailure>;
}

/// Tuning of the consumer; [`IngestOptions::default`] is what
/// [`IngestConsumer::spawn`] uses.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Entries pending on any consumer for longer than this are claimed by
    /// another node (default 30 s).
    pub claim_idle: Duration,
    /// How often a node looks for such entries (default 5 s).
    pub claim_interval: Duration,
    /// An entry delivered more times than this moves to the dead stream
    /// (default 5).
    pub max_deliveries: u64,
    /// Longest wait of one read for new entries (default 1 s).
    pub block: Duration,
    /// Entries read or claimed at once (default 100).
    pub batch: usize,
    /// The dead stream is trimmed to about this many entries, so that a
    /// misbehaving producer cannot fill Redis (default 10,000).
    pub dead_letter_max_len: u64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 5,
            block: Duration::from_secs(1),
            batch: 100,
            dead_letter_max_len: 10_000,
        }
    }
}

/// Consumes `<prefix>:ingest` as one consumer group of all nodes.
pub struct IngestConsumer;

impl IngestConsumer {
    /// Starts consuming with the default [`IngestOptions`]; stops when
    /// `cancel` fires.
    pub fn spawn(
        clients: RedisClients,
        settings: &RedisSettings,
        target: Arc<dyn IngestTarget>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        Self::spawn_with(
            clients,
            settings,
            target,
            IngestOptions::default(),
            cancel,
            tasks,
        );
    }

    /// Starts consuming with `options`; stops when `cancel` fires.
    ///
    /// The consumer blocks in `XREADGROUP`, so it opens its own connection
    /// (a new client with the settings of `clients.commands`) rather than
    /// stall the node's shared command connection; it closes it on cancel.
    pub fn spawn_with(
        clients: RedisClients,
        settings: &RedisSettings,
        target: Arc<dyn IngestTarget>,
        options: IngestOptions,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        describe_metrics();
        worker::register_commands();
        let worker = worker::Worker::new(&clients, settings, target, options, cancel);
        tasks.spawn(worker.run());
    }
}

/// Describes the consumer's metrics and registers them at zero.
fn describe_metrics() {
    describe_counter!(
        "herald_ingest_published_total",
        "Ingest stream entries published through the broker by this node"
    );
    describe_counter!(
        "herald_ingest_dead_lettered_total",
        "Ingest stream entries moved to the dead-letter stream by this node, by reason (missing_payload, invalid, exhausted)"
    );
    describe_counter!(
        "herald_ingest_claimed_total",
        "Ingest stream entries this node took over from idle consumers (XAUTOCLAIM)"
    );
    describe_counter!(
        "herald_ingest_retries_total",
        "Ingest publish attempts that failed as unavailable and will be retried"
    );
    for name in [
        "herald_ingest_published_total",
        "herald_ingest_claimed_total",
        "herald_ingest_retries_total",
    ] {
        counter!(name).increment(0);
    }
    for reason in ["missing_payload", "invalid", "exhausted"] {
        counter!("herald_ingest_dead_lettered_total", "reason" => reason).increment(0);
    }
}
