//! The `[bridge]` table and its check: every problem names its key
//! (`bridge.mappings[1].room: ...`), all of them at once.

use crate::pattern::Pattern;
use crate::template::Template;
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
    /// Redis server the channel mappings read; default `broker.redis_url`.
    pub redis_url: Option<String>,
    /// Lifetime of the Redis pub/sub leader lock; another node takes the
    /// channels over at most this long after the leader died.
    #[serde(with = "duration")]
    pub redis_leader_ttl: Duration,
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
            redis_url: None,
            redis_leader_ttl: Duration::from_secs(5),
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
    /// Core NATS queue group; default `<prefix>-bridge`.
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
    /// Core NATS only: default `<prefix>-bridge-<name>`.
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

/// NATS connection settings, resolved.
#[derive(Debug, Clone)]
pub struct NatsConnection {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// `.creds` file.
    pub credentials_file: Option<String>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// Token.
    pub token: Option<String>,
}

/// Where a route's messages come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A core NATS subscription in a queue group.
    NatsCore {
        /// Subject pattern.
        subject: String,
        /// Queue group.
        queue_group: String,
    },
    /// A durable pull consumer.
    JetStream {
        /// Stream name.
        stream: String,
        /// Subjects to create the stream with when it is missing (`None`:
        /// it must exist).
        create_subjects: Option<Vec<String>>,
        /// Durable name.
        durable: String,
        /// Filter subject.
        filter: String,
        /// Where a new durable starts.
        deliver: Deliver,
        /// Dead-letter subject.
        dead_letter: String,
    },
    /// A Redis `PSUBSCRIBE` glob, read by the leader node only.
    Redis {
        /// The glob.
        channel: String,
    },
}

/// How a message becomes a publish body.
#[derive(Debug, Clone)]
pub struct Transform {
    /// What the message is.
    pub mode: BodyMode,
    /// The source pattern (wildcards for templates).
    pub pattern: Pattern,
    /// Room template.
    pub room: Option<Template>,
    /// Event template.
    pub event: Option<Template>,
    /// Tenant template.
    pub tenant: Option<Template>,
}

/// One bridge, resolved.
#[derive(Debug, Clone)]
pub struct Route {
    /// Metrics / log label: `nats_publish` or the mapping's name.
    pub label: String,
    /// Where messages come from.
    pub source: Source,
    /// How they become publish bodies.
    pub transform: Transform,
}

/// The bridges to run, resolved and checked.
#[derive(Debug, Clone)]
pub struct BridgePlan {
    /// Needed when a route reads NATS.
    pub nats: Option<NatsConnection>,
    /// Needed when a route reads Redis.
    pub redis_url: Option<String>,
    /// `broker.prefix`.
    pub prefix: String,
    /// `bridge.redis_leader_ttl`.
    pub redis_leader_ttl: Duration,
    /// `bridge.retry_for`.
    pub retry_for: Duration,
    /// `bridge.command_timeout`.
    pub command_timeout: Duration,
    /// `bridge.max_message_bytes`.
    pub max_message_bytes: usize,
    /// The bridges.
    pub routes: Vec<Route>,
}

struct Problems(Vec<BridgeSettingError>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(BridgeSettingError {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// A name NATS accepts for a stream, durable or queue group.
fn nats_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl BridgeConfig {
    /// Checks the table; every problem names its key.
    pub fn validate(&self, defaults: &BridgeDefaults) -> Vec<BridgeSettingError> {
        self.plan(defaults).err().unwrap_or_default()
    }

    /// Resolves defaults and checks everything.
    pub fn plan(&self, d: &BridgeDefaults) -> Result<BridgePlan, Vec<BridgeSettingError>> {
        let mut p = Problems(Vec::new());
        for (key, v) in [
            ("bridge.redis_leader_ttl", self.redis_leader_ttl),
            ("bridge.command_timeout", self.command_timeout),
        ] {
            if v < Duration::from_millis(100) {
                p.add(key, "must be at least 100ms");
            }
        }
        if self.max_message_bytes == 0 {
            p.add("bridge.max_message_bytes", "must be greater than 0");
        }
        let mut routes = Vec::new();
        let (mut uses_nats, mut uses_redis) = (false, false);
        if let Some(route) = self.nats_publish_route(d, &mut p) {
            uses_nats = true;
            routes.push(route);
        }
        let mut names = std::collections::HashSet::new();
        for (i, m) in self.mappings.iter().enumerate() {
            let key = format!("bridge.mappings[{i}]");
            let name = m.name.clone().unwrap_or_else(|| format!("mapping{i}"));
            if !nats_name_ok(&name) {
                p.add(
                    format!("{key}.name"),
                    format!("`{name}`: letters, digits, `-` and `_` only"),
                );
            } else if name == "nats_publish" || !names.insert(name.clone()) {
                p.add(format!("{key}.name"), format!("`{name}` is used twice"));
            }
            if let Some(route) = mapping_route(m, &key, name, d, &mut p) {
                match route.source {
                    Source::Redis { .. } => uses_redis = true,
                    _ => uses_nats = true,
                }
                routes.push(route);
            }
        }
        let nats = self.nats_connection(d);
        if uses_nats && nats.is_none() {
            p.add(
                "bridge.nats_url",
                "a NATS bridge is configured but neither bridge.nats_url nor broker.nats_url is set",
            );
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            p.add(
                "bridge.nats_password",
                "bridge.nats_user and bridge.nats_password go together",
            );
        }
        if let (true, Some(c)) = (uses_nats, &nats) {
            for server in c.url.split(',') {
                if let Err(e) = server.trim().parse::<async_nats::ServerAddr>() {
                    p.add("bridge.nats_url", format!("not a NATS URL: {e}"));
                }
            }
        }
        let redis_url = self.redis_url.clone().or_else(|| d.redis_url.clone());
        match (&redis_url, uses_redis) {
            (None, true) => p.add(
                "bridge.redis_url",
                "a Redis channel mapping is configured but neither bridge.redis_url nor broker.redis_url is set",
            ),
            (Some(url), true) => {
                if let Err(e) = fred::types::config::Config::from_url(url) {
                    p.add("bridge.redis_url", e.to_string());
                }
            }
            _ => {}
        }
        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(BridgePlan {
            nats: if uses_nats { nats } else { None },
            redis_url: if uses_redis { redis_url } else { None },
            prefix: d.prefix.clone(),
            redis_leader_ttl: self.redis_leader_ttl,
            retry_for: self.retry_for,
            command_timeout: self.command_timeout,
            max_message_bytes: self.max_message_bytes,
            routes,
        })
    }

    fn nats_connection(&self, d: &BridgeDefaults) -> Option<NatsConnection> {
        let url = self.nats_url.clone().or_else(|| d.nats_url.clone())?;
        Some(NatsConnection {
            url,
            credentials_file: self.nats_credentials_file.clone(),
            user_password: self.nats_user.clone().zip(self.nats_password.clone()),
            token: self.nats_token.clone(),
        })
    }

    fn nats_publish_route(&self, d: &BridgeDefaults, p: &mut Problems) -> Option<Route> {
        let c = &self.nats_publish;
        if !c.enabled.unwrap_or(d.broker_kind == "nats") {
            return None;
        }
        let prefix = &d.prefix;
        let subject = c.subject.clone().unwrap_or(format!("{prefix}.publish"));
        let pattern = match Pattern::nats(&subject) {
            Ok(pattern) => pattern,
            Err(e) => {
                p.add("bridge.nats_publish.subject", e);
                return None;
            }
        };
        let source = if c.jetstream {
            let stream = c.stream.clone().unwrap_or(format!("{prefix}-publish"));
            let durable = c.durable.clone().unwrap_or(format!("{prefix}-bridge"));
            check_names(
                p,
                "bridge.nats_publish",
                &[("stream", &stream), ("durable", &durable)],
            );
            Source::JetStream {
                stream,
                create_subjects: Some(vec![subject.clone()]),
                durable,
                filter: subject,
                deliver: Deliver::All,
                dead_letter: c
                    .dead_letter_subject
                    .clone()
                    .unwrap_or(format!("{prefix}.publish.dead")),
            }
        } else {
            let queue_group = c.queue_group.clone().unwrap_or(format!("{prefix}-bridge"));
            check_names(p, "bridge.nats_publish", &[("queue_group", &queue_group)]);
            Source::NatsCore {
                subject,
                queue_group,
            }
        };
        Some(Route {
            label: "nats_publish".into(),
            source,
            transform: Transform {
                mode: BodyMode::Publish,
                pattern,
                room: None,
                event: None,
                tenant: None,
            },
        })
    }
}

fn check_names(p: &mut Problems, key: &str, names: &[(&str, &str)]) {
    for (what, name) in names {
        if !nats_name_ok(name) {
            p.add(
                format!("{key}.{what}"),
                format!("`{name}`: letters, digits, `-` and `_` only"),
            );
        }
    }
}

fn mapping_route(
    m: &MappingConfig,
    key: &str,
    name: String,
    d: &BridgeDefaults,
    p: &mut Problems,
) -> Option<Route> {
    let prefix = &d.prefix;
    let (pattern, source) = match (&m.nats_subject, &m.redis_channel) {
        (Some(subject), None) => {
            let pattern = Pattern::nats(subject)
                .map_err(|e| p.add(format!("{key}.nats_subject"), e))
                .ok()?;
            let source = match &m.jetstream_stream {
                Some(stream) => {
                    let durable = m
                        .durable
                        .clone()
                        .unwrap_or(format!("{prefix}-bridge-{name}"));
                    check_names(
                        p,
                        key,
                        &[("jetstream_stream", stream), ("durable", &durable)],
                    );
                    Source::JetStream {
                        stream: stream.clone(),
                        create_subjects: None,
                        durable,
                        filter: subject.clone(),
                        deliver: m.jetstream_deliver,
                        dead_letter: m
                            .dead_letter_subject
                            .clone()
                            .unwrap_or(format!("{prefix}.bridge.dead")),
                    }
                }
                None => {
                    let queue_group = m
                        .queue_group
                        .clone()
                        .unwrap_or(format!("{prefix}-bridge-{name}"));
                    check_names(p, key, &[("queue_group", &queue_group)]);
                    Source::NatsCore {
                        subject: subject.clone(),
                        queue_group,
                    }
                }
            };
            (pattern, source)
        }
        (None, Some(channel)) => {
            let pattern = Pattern::redis(channel)
                .map_err(|e| p.add(format!("{key}.redis_channel"), e))
                .ok()?;
            for (field, set) in [
                ("jetstream_stream", m.jetstream_stream.is_some()),
                ("durable", m.durable.is_some()),
                ("queue_group", m.queue_group.is_some()),
                ("dead_letter_subject", m.dead_letter_subject.is_some()),
            ] {
                if set {
                    p.add(
                        format!("{key}.{field}"),
                        "applies to nats_subject mappings only",
                    );
                }
            }
            let source = Source::Redis {
                channel: channel.clone(),
            };
            (pattern, source)
        }
        _ => {
            p.add(key, "set exactly one of nats_subject and redis_channel");
            return None;
        }
    };
    if m.jetstream_stream.is_none() && (m.durable.is_some() || m.dead_letter_subject.is_some()) {
        p.add(
            format!("{key}.jetstream_stream"),
            "durable and dead_letter_subject need jetstream_stream",
        );
    }
    let mut template = |field: &str, text: &Option<String>| -> Option<Template> {
        let text = text.as_ref()?;
        match Template::parse(text) {
            Ok(t) if t.max_wildcard() > pattern.wildcards() => {
                p.add(
                    format!("{key}.{field}"),
                    format!(
                        "{{{}}} but the pattern has {} wildcards",
                        t.max_wildcard(),
                        pattern.wildcards()
                    ),
                );
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                p.add(format!("{key}.{field}"), e);
                None
            }
        }
    };
    let room = template("room", &m.room);
    let event = template("event", &m.event);
    let tenant = template("tenant", &m.tenant);
    if m.body == BodyMode::Data {
        for (field, set) in [("room", m.room.is_some()), ("event", m.event.is_some())] {
            if !set {
                p.add(
                    format!("{key}.{field}"),
                    "required when body = \"data\" (the message is the event's data)",
                );
            }
        }
    }
    Some(Route {
        label: name,
        source,
        transform: Transform {
            mode: m.body,
            pattern,
            room,
            event,
            tenant,
        },
    })
}

#[cfg(test)]
mod tests;
