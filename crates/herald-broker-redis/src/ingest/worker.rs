//! The consumer's task: read or claim a batch, take each entry through
//! publish (or dead-letter) and acknowledgement, back off on failures.

use super::reply::{self, Entry, Payload, ReplyError};
use super::{IngestFailure, IngestOptions, IngestTarget, GROUP};
use crate::keys::Keys;
use crate::{RedisClients, RedisSettings};
use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface, StreamsInterface};
use fred::types::config::Options;
use fred::types::{ConnectHandle, Key, Value};
use herald_engine_kit::backoff::Backoff;
use herald_engine_kit::telemetry::Command;
use metrics::counter;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// XREADGROUP of new entries. It blocks up to `ingest.block` when the
/// stream is idle, so its duration is the wait, not Redis' speed.
static INGEST_READ: Command = Command::new("redis", "ingest_read");
/// XACK and XDEL of a finished entry.
static INGEST_ACK: Command = Command::new("redis", "ingest_ack");
/// XAUTOCLAIM of entries idle on other consumers.
static INGEST_CLAIM: Command = Command::new("redis", "ingest_claim");
/// XADD of an entry to the dead-letter stream.
static INGEST_DEAD_LETTER: Command = Command::new("redis", "ingest_dead_letter");

/// Registers the ingest commands' metrics at zero.
pub(super) fn register_commands() {
    herald_engine_kit::telemetry::register_commands(&[
        &INGEST_READ,
        &INGEST_ACK,
        &INGEST_CLAIM,
        &INGEST_DEAD_LETTER,
    ]);
}

/// Longest wait for the shutdown steps together (leaving the group, which
/// may queue behind a blocking read, and closing the connection); under
/// the 2 s a draining node gives its tasks.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(1500);

/// Deletes this consumer from the group if nothing is pending on it, in one
/// atomic step: `XGROUP DELCONSUMER` drops the consumer's pending entries,
/// so it must never run while any exist. Node ids are often fresh per
/// process; without this the group would collect one consumer per restart.
const LEAVE_GROUP: &str = r#"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"#;

/// Why one step of the loop failed; every kind is retried after a backoff.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// Redis answered NOGROUP: it restarted empty or was flushed.
    #[error("the consumer group is missing (Redis restarted or was flushed)")]
    NoGroup,
    #[error("redis: {0}")]
    Redis(#[source] fred::error::Error),
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
}

impl From<fred::error::Error> for StepError {
    fn from(e: fred::error::Error) -> Self {
        if e.details().starts_with("NOGROUP") {
            Self::NoGroup
        } else {
            Self::Redis(e)
        }
    }
}

/// Where an entry this node holds stands.
#[derive(Debug)]
enum Stage {
    /// To be handed to the target.
    Publish,
    /// To be copied to the dead stream.
    DeadLetter { reason: String, kind: &'static str },
    /// Done with; to be acknowledged and deleted.
    Ack,
}

#[derive(Debug)]
struct Held {
    entry: Entry,
    stage: Stage,
}

/// The consumer's state; owned by its one task.
pub(super) struct Worker {
    /// A connection of its own: `XREADGROUP ... BLOCK` would stall the
    /// node's shared command connection.
    client: Client,
    stream: String,
    dead: String,
    node: String,
    options: IngestOptions,
    target: Arc<dyn IngestTarget>,
    cancel: CancellationToken,
    read_timeout: Duration,
    /// Entries delivered to this node and not yet acknowledged, oldest
    /// first; at most one batch, and nothing new is read until it is empty.
    held: VecDeque<Held>,
    /// When `held` was delivered or last re-claimed.
    held_since: Instant,
    group_ready: bool,
    next_claim: Instant,
    backoff: Backoff,
}

impl Worker {
    pub(super) fn new(
        clients: &RedisClients,
        settings: &RedisSettings,
        target: Arc<dyn IngestTarget>,
        options: IngestOptions,
        cancel: CancellationToken,
    ) -> Self {
        let keys = Keys::new(&settings.prefix);
        let options = IngestOptions {
            batch: options.batch.max(1),
            max_deliveries: options.max_deliveries.max(1),
            ..options
        };
        Self {
            client: clients.commands.clone_new(),
            stream: keys.ingest(),
            dead: keys.ingest_dead(),
            node: settings.node_id.clone(),
            // The server holds a blocking read for up to `block`; the reply
            // may take a command timeout on top.
            read_timeout: options.block + settings.command_timeout,
            options,
            target,
            cancel,
            held: VecDeque::new(),
            held_since: Instant::now(),
            group_ready: false,
            next_claim: Instant::now(),
            backoff: Backoff::default(),
        }
    }

    /// Runs until cancelled, then closes the connection.
    pub(super) async fn run(mut self) {
        let connection = self.client.connect();
        let cancel = self.cancel.clone();
        loop {
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                outcome = self.step() => outcome,
            };
            let error = match outcome {
                Ok(()) => {
                    if self.backoff.failing() {
                        info!(node = %self.node, "ingest: consuming again");
                    }
                    self.backoff.reset();
                    continue;
                }
                Err(e) => e,
            };
            if matches!(error, StepError::NoGroup) {
                self.group_ready = false;
            }
            if self.backoff.failing() {
                debug!(node = %self.node, %error, "ingest: still failing");
            } else {
                warn!(node = %self.node, %error, "ingest: failed, retrying with backoff");
            }
            let mut delay = self.backoff.next_delay();
            if !self.held.is_empty() {
                // Retry held entries often enough to keep them claimed.
                delay = delay.min(self.options.claim_idle / 3);
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.close(connection).await;
    }

    /// Leaves the group (when connected: otherwise it would only wait for
    /// the deadline), then closes the connection.
    async fn close(self, mut connection: ConnectHandle) {
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        if self.client.is_connected() {
            self.leave_group(deadline).await;
        }
        let _ = tokio::time::timeout_at(deadline, self.client.quit()).await;
        if tokio::time::timeout_at(deadline, &mut connection)
            .await
            .is_err()
        {
            connection.abort();
        }
    }

    /// Deletes this consumer when nothing is pending on it; entries still
    /// pending stay with it for another node to claim.
    async fn leave_group(&self, deadline: Instant) {
        let leave = self.client.eval::<Value, _, _, _>(
            LEAVE_GROUP,
            self.stream.as_str(),
            vec![GROUP, self.node.as_str()],
        );
        match tokio::time::timeout_at(deadline, leave).await {
            Ok(Ok(Value::Integer(-1))) => info!(
                node = %self.node,
                "ingest: entries still pending on this node; another node claims them"
            ),
            Ok(Ok(_)) => debug!(node = %self.node, "ingest: left the consumer group"),
            Ok(Err(error)) => warn!(
                node = %self.node, %error,
                "ingest: could not leave the consumer group"
            ),
            Err(_) => warn!(node = %self.node, "ingest: leaving the consumer group timed out"),
        }
    }

    /// One round: finish held entries, else claim idle ones when due, else
    /// read new ones.
    async fn step(&mut self) -> Result<(), StepError> {
        if !self.group_ready {
            self.create_group().await?;
            self.group_ready = true;
        }
        if !self.held.is_empty() {
            return self.process_held().await;
        }
        let now = Instant::now();
        if now >= self.next_claim {
            self.claim_pass().await?;
            self.next_claim = Instant::now() + self.options.claim_interval;
            return Ok(());
        }
        let fresh = self.read_new(self.next_claim - now).await?;
        self.held_since = Instant::now();
        self.held.extend(fresh.into_iter().map(|entry| Held {
            entry,
            stage: Stage::Publish,
        }));
        self.process_held().await
    }

    /// `XGROUP CREATE <stream> herald 0 MKSTREAM`; an existing group is fine.
    async fn create_group(&self) -> Result<(), StepError> {
        let created: Result<Value, _> = self
            .client
            .xgroup_create(&self.stream, GROUP, "0", true)
            .await;
        match created {
            Ok(_) => {
                info!(stream = %self.stream, group = GROUP, "ingest: consumer group created");
                Ok(())
            }
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// New entries for this consumer, waiting at most `options.block` (and
    /// not past the next claim pass).
    async fn read_new(&self, until_claim: Duration) -> Result<Vec<Entry>, StepError> {
        // BLOCK 0 would wait forever.
        let block = self.options.block.min(until_claim).as_millis().max(1) as u64;
        let options = Options {
            timeout: Some(self.read_timeout),
            ..Default::default()
        };
        let reply: Value = INGEST_READ
            .time(self.client.with_options(&options).xreadgroup(
                GROUP,
                &self.node,
                Some(self.options.batch as u64),
                Some(block),
                false,
                &self.stream,
                ">",
            ))
            .await?;
        Ok(reply::read_group(reply)?)
    }

    /// Claims entries idle on any consumer for `claim_idle`, in batches,
    /// and processes them.
    async fn claim_pass(&mut self) -> Result<(), StepError> {
        let idle_ms = self.options.claim_idle.as_millis() as u64;
        let mut cursor = String::from("0-0");
        loop {
            let reply: Value = INGEST_CLAIM
                .time(self.client.xautoclaim(
                    &self.stream,
                    GROUP,
                    &self.node,
                    idle_ms,
                    cursor.as_str(),
                    Some(self.options.batch as u64),
                    false,
                ))
                .await?;
            let (next, claimed) = reply::autoclaim(reply)?;
            if !claimed.is_empty() {
                counter!("herald_ingest_claimed_total").increment(claimed.len() as u64);
                info!(node = %self.node, count = claimed.len(), "ingest: claimed entries idle on other consumers");
                let counts = self.delivery_counts(&claimed).await?;
                self.held_since = Instant::now();
                for entry in claimed {
                    let stage = match counts.get(&entry.id) {
                        Some(&n) if n > self.options.max_deliveries => Stage::DeadLetter {
                            reason: format!(
                                "delivery attempts exhausted: delivered {n} times, the last \
                                 delivery not acknowledged within {:?}",
                                self.options.claim_idle
                            ),
                            kind: "exhausted",
                        },
                        _ => Stage::Publish,
                    };
                    self.held.push_back(Held { entry, stage });
                }
                self.process_held().await?;
            }
            if next == "0-0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// How often each of `entries` (just claimed by this consumer) has been
    /// delivered, from `XPENDING`.
    async fn delivery_counts(&self, entries: &[Entry]) -> Result<HashMap<String, u64>, StepError> {
        let (Some(first), Some(last)) = (
            entries.iter().min_by_key(|e| id_order(&e.id)),
            entries.iter().max_by_key(|e| id_order(&e.id)),
        ) else {
            return Ok(HashMap::new());
        };
        // The range may also hold other entries pending on this consumer
        // (a previous life of the same node id); leave room for them.
        let count = entries.len() as u64 * 2 + 100;
        let reply: Value = self
            .client
            .xpending(
                &self.stream,
                GROUP,
                (
                    first.id.as_str(),
                    last.id.as_str(),
                    count,
                    self.node.as_str(),
                ),
            )
            .await?;
        Ok(reply::delivery_counts(reply)?)
    }

    /// Takes every held entry one stage further until all are acknowledged.
    async fn process_held(&mut self) -> Result<(), StepError> {
        while !self.held.is_empty() {
            if self.held_since.elapsed() >= self.options.claim_idle / 3 {
                self.touch().await?;
                continue;
            }
            let Some(mut held) = self.held.pop_front() else {
                break;
            };
            match self.advance(&mut held).await {
                Ok(true) => {}
                Ok(false) => self.held.push_front(held),
                Err(e) => {
                    self.held.push_front(held);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Runs one stage of `held`; `true` once it is acknowledged.
    async fn advance(&self, held: &mut Held) -> Result<bool, StepError> {
        match &held.stage {
            Stage::Publish => {
                held.stage = match held.entry.payload() {
                    Payload::Deleted => {
                        debug!(id = %held.entry.id, "ingest: entry deleted while pending");
                        Stage::Ack
                    }
                    Payload::Missing => Stage::DeadLetter {
                        reason: "missing field payload".into(),
                        kind: "missing_payload",
                    },
                    Payload::NotText => Stage::DeadLetter {
                        reason: "payload is not UTF-8 text".into(),
                        kind: "invalid",
                    },
                    Payload::Text(payload) => {
                        let trace = held.entry.traceparent();
                        match self.target.publish(&held.entry.id, &payload, trace).await {
                            Ok(()) => {
                                counter!("herald_ingest_published_total").increment(1);
                                Stage::Ack
                            }
                            Err(IngestFailure::Invalid(reason)) => Stage::DeadLetter {
                                reason,
                                kind: "invalid",
                            },
                            Err(IngestFailure::Unavailable(reason)) => {
                                counter!("herald_ingest_retries_total").increment(1);
                                return Err(StepError::Unavailable(reason));
                            }
                        }
                    }
                };
                Ok(false)
            }
            Stage::DeadLetter { reason, kind } => {
                self.dead_letter(&held.entry, reason).await?;
                counter!("herald_ingest_dead_lettered_total", "reason" => *kind).increment(1);
                warn!(id = %held.entry.id, %reason, "ingest: entry moved to the dead-letter stream");
                held.stage = Stage::Ack;
                Ok(false)
            }
            Stage::Ack => {
                let _: Value = INGEST_ACK
                    .time(
                        self.client
                            .xack(&self.stream, GROUP, held.entry.id.as_str()),
                    )
                    .await?;
                // Acknowledged entries are deleted: the stream then holds only
                // work not yet done, which the group's id `0` relies on.
                let _: Value = self
                    .client
                    .xdel(&self.stream, held.entry.id.as_str())
                    .await?;
                Ok(true)
            }
        }
    }

    /// Appends the entry to the dead stream: its payload (or all its fields
    /// when it has none), then `reason`, `id` and `node`.
    async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), StepError> {
        let mut fields: Vec<(Key, Value)> = match entry.payload_value() {
            Some(payload) => vec![(Key::from_static_str("payload"), payload.clone())],
            None => entry.fields.clone().unwrap_or_default(),
        };
        fields.push((Key::from_static_str("reason"), reason.into()));
        fields.push((Key::from_static_str("id"), entry.id.as_str().into()));
        fields.push((Key::from_static_str("node"), self.node.as_str().into()));
        let cap = ("MAXLEN", "~", self.options.dead_letter_max_len as i64);
        let _: Value = INGEST_DEAD_LETTER
            .time(self.client.xadd(&self.dead, false, cap, "*", fields))
            .await?;
        Ok(())
    }

    /// Re-claims the held entries (`XCLAIM ... JUSTID`, which resets their
    /// idle time without counting a delivery), so that no other node takes
    /// them while this one is retrying. Entries no longer pending (another
    /// node finished them) are dropped.
    async fn touch(&mut self) -> Result<(), StepError> {
        let ids: Vec<String> = self.held.iter().map(|h| h.entry.id.clone()).collect();
        let reply: Value = self
            .client
            .xclaim(
                &self.stream,
                GROUP,
                &self.node,
                0,
                ids,
                None,
                None,
                None,
                false,
                true,
            )
            .await?;
        let kept: HashSet<String> = reply::ids(reply)?.into_iter().collect();
        let before = self.held.len();
        self.held.retain(|h| kept.contains(&h.entry.id));
        if self.held.len() < before {
            debug!(
                dropped = before - self.held.len(),
                "ingest: held entries finished elsewhere"
            );
        }
        self.held_since = Instant::now();
        Ok(())
    }
}

/// A stream id as a sortable pair (`<ms>-<seq>`); malformed ids sort first.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
