//! The `[bridge]` table and its check: every problem names its key
//! (`bridge.mappings[1].room: ...`), all of them at once.

use herald_core::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[bridge]`: ingest bridges (docs/operations.md, "Bridges").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// NATS server(s) the bridges read; default `broker.nats_url`.
    pub nats_url: Option<String>,
    /// A NATS `.creds` file (JWT and nkey seed).
    pub nats_credentials_file: Option<String>,
    /// NATS user (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// NATS token.
    pub nats_token: Option<String>,
    /// Roots to verify the NATS server with (TLS is then required).
    pub nats_tls_ca_file: Option<String>,
    /// Client certificate for mutual TLS (with `nats_tls_key_file`).
    pub nats_tls_cert_file: Option<String>,
    /// Its key.
    pub nats_tls_key_file: Option<String>,
    /// Redis server the channel mappings read; default `broker.redis_url`.
    pub redis_url: Option<String>,
    /// Lifetime of the Redis pub/sub leader lock; another node takes the
    /// channels over at most this long after the leader died.
    #[serde(with = "duration")]
    pub redis_leader_ttl: Duration,
    /// Lifetime of an ordered NATS bridge's leader lock (a key in the
    /// bucket `<prefix>-bridge-leaders`); another node takes the bridge at
    /// most about this long after the leader died.
    #[serde(with = "duration")]
    pub nats_leader_ttl: Duration,
    /// How long a message without redelivery (core NATS, Redis pub/sub) is
    /// retried while the node answers `unavailable` before it is dropped.
    #[serde(with = "duration")]
    pub retry_for: Duration,
    /// Longest wait for one NATS or Redis request.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Largest message taken; a larger one is invalid (`too_large`).
    pub max_message_bytes: usize,
    /// `[bridge.nats_publish]`: the publish body as JSON on a subject.
    pub nats_publish: NatsPublishConfig,
    /// `[[bridge.mappings]]`: subjects and channels mapped to rooms.
    pub mappings: Vec<MappingConfig>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            nats_credentials_file: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_tls_ca_file: None,
            nats_tls_cert_file: None,
            nats_tls_key_file: None,
            redis_url: None,
            redis_leader_ttl: Duration::from_secs(5),
            nats_leader_ttl: Duration::from_secs(5),
            retry_for: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            max_message_bytes: 1_048_576,
            nats_publish: NatsPublishConfig::default(),
            mappings: Vec::new(),
        }
    }
}

/// `[bridge.nats_publish]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsPublishConfig {
    /// On by default when `broker.kind = "nats"`.
    pub enabled: Option<bool>,
    /// Default `<prefix>.publish`.
    pub subject: Option<String>,
    /// Keep the producer's order per room (default `true`): one node at a
    /// time reads the bridge (a leader lock). `false`: every node reads
    /// (queue group / shared durable), no failover gap, no order.
    pub ordered: Option<bool>,
    /// Core NATS queue group (with `ordered = false`); default
    /// `<prefix>-bridge`.
    pub queue_group: Option<String>,
    /// Consume through a durable JetStream consumer instead.
    pub jetstream: bool,
    /// The stream (created when missing); default `<prefix>-publish`.
    pub stream: Option<String>,
    /// The durable consumer; default `<prefix>-bridge`.
    pub durable: Option<String>,
    /// Where invalid messages go; default `<prefix>.publish.dead`.
    pub dead_letter_subject: Option<String>,
}

/// What a mapped message is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// The message is the event's `data`.
    #[default]
    Data,
    /// The message is a publish body; templates fill in or override.
    Publish,
}

/// Where a new durable consumer on an existing stream starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// Only messages stored after the consumer was created.
    #[default]
    New,
    /// Everything the stream holds.
    All,
}

/// `[[bridge.mappings]]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// Label in metrics and logs, and part of the default queue group and
    /// durable names; default `mapping<index>`.
    pub name: Option<String>,
    /// A NATS subject pattern (`*`, `>`).
    pub nats_subject: Option<String>,
    /// A Redis `PSUBSCRIBE` glob (`*`, `?`).
    pub redis_channel: Option<String>,
    /// NATS only: read through a durable consumer of this (existing) stream.
    pub jetstream_stream: Option<String>,
    /// JetStream only: where a new durable starts.
    pub jetstream_deliver: Deliver,
    /// JetStream only: the durable's name; default `<prefix>-bridge-<name>`.
    pub durable: Option<String>,
    /// NATS only: keep the producer's order per room (default `true`); see
    /// [`NatsPublishConfig::ordered`]. Redis channels are always read by
    /// one node in order.
    pub ordered: Option<bool>,
    /// Core NATS with `ordered = false` only: default `<prefix>-bridge-<name>`.
    pub queue_group: Option<String>,
    /// JetStream only: default `<prefix>.bridge.dead`.
    pub dead_letter_subject: Option<String>,
    /// Room template.
    pub room: Option<String>,
    /// Event template.
    pub event: Option<String>,
    /// Tenant template.
    pub tenant: Option<String>,
    /// What the message is.
    pub body: BodyMode,
}

/// What the bridge config is resolved against (the `[broker]` table).
#[derive(Debug, Clone)]
pub struct BridgeDefaults {
    /// `broker.prefix`.
    pub prefix: String,
    /// `broker.kind`.
    pub broker_kind: String,
    /// `broker.nats_url`.
    pub nats_url: Option<String>,
    /// `broker.redis_url`.
    pub redis_url: Option<String>,
    /// The broker's NATS credentials and TLS (`broker.nats_credentials_file`,
    /// `nats_user`, `nats_password`, `nats_token`, `nats_tls_*`), used when
    /// the bridges read `broker.nats_url` and set none of their own.
    pub nats_auth: NatsAuth,
}

/// How to authenticate to NATS and verify it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A `.creds` file.
    pub credentials_file: Option<String>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// Token.
    pub token: Option<String>,
    /// Roots to verify the server with (TLS is then required).
    pub tls_ca_file: Option<String>,
    /// Client certificate and key for mutual TLS.
    pub tls_client_cert: Option<(String, String)>,
}

impl NatsAuth {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One bad setting, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BridgeSettingError {
    /// E.g. `bridge.mappings[1].room`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl BridgeConfig {
    /// Checks the table; every problem names its key.
    pub fn validate(&self, defaults: &BridgeDefaults) -> Vec<BridgeSettingError> {
        self.plan(defaults).err().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
