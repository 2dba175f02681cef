//! The `[bridge]` table resolved against the `[broker]` one: the bridges
//! to run, with every default filled in and every problem found.

use crate::config::{
    BodyMode, BridgeConfig, BridgeDefaults, BridgeSettingError, Deliver, MappingConfig, NatsAuth,
};
use crate::pattern::Pattern;
use crate::template::Template;
use std::time::Duration;

/// NATS connection settings, resolved.
#[derive(Debug, Clone)]
pub struct NatsConnection {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Credentials and TLS.
    pub auth: NatsAuth,
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
    /// One node at a time reads it, keeping each room's order (NATS: a
    /// leader lock; Redis channels are always read this way).
    pub ordered: bool,
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
    /// `bridge.nats_leader_ttl`.
    pub nats_leader_ttl: Duration,
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
    /// Resolves defaults and checks everything.
    pub fn plan(&self, d: &BridgeDefaults) -> Result<BridgePlan, Vec<BridgeSettingError>> {
        let mut p = Problems(Vec::new());
        for (key, v) in [
            ("bridge.redis_leader_ttl", self.redis_leader_ttl),
            ("bridge.nats_leader_ttl", self.nats_leader_ttl),
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
        if self.nats_tls_cert_file.is_some() != self.nats_tls_key_file.is_some() {
            p.add(
                "bridge.nats_tls_key_file",
                "bridge.nats_tls_cert_file and bridge.nats_tls_key_file go together",
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
            nats_leader_ttl: self.nats_leader_ttl,
            retry_for: self.retry_for,
            command_timeout: self.command_timeout,
            max_message_bytes: self.max_message_bytes,
            routes,
        })
    }

    fn nats_connection(&self, d: &BridgeDefaults) -> Option<NatsConnection> {
        let own = NatsAuth {
            credentials_file: self.nats_credentials_file.clone(),
            user_password: self.nats_user.clone().zip(self.nats_password.clone()),
            token: self.nats_token.clone(),
            tls_ca_file: self.nats_tls_ca_file.clone(),
            tls_client_cert: self
                .nats_tls_cert_file
                .clone()
                .zip(self.nats_tls_key_file.clone()),
        };
        match &self.nats_url {
            Some(url) => Some(NatsConnection {
                url: url.clone(),
                auth: own,
            }),
            // The broker's server: its credentials too, unless the bridge
            // names its own.
            None => Some(NatsConnection {
                url: d.nats_url.clone()?,
                auth: if own.is_empty() {
                    d.nats_auth.clone()
                } else {
                    own
                },
            }),
        }
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
            if c.ordered != Some(false) && c.queue_group.is_some() {
                p.add(
                    "bridge.nats_publish.queue_group",
                    "applies with ordered = false only (an ordered bridge is read by one node)",
                );
            }
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
            ordered: c.ordered.unwrap_or(true),
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
                    if m.ordered != Some(false) && m.queue_group.is_some() {
                        p.add(
                            format!("{key}.queue_group"),
                            "applies with ordered = false only (an ordered bridge is read by one node)",
                        );
                    }
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
            if m.ordered == Some(false) {
                p.add(
                    format!("{key}.ordered"),
                    "a Redis channel is always read by one node, in order (only `true`)",
                );
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
                        "{{{}}} but the pattern has {} wildcard{}",
                        t.max_wildcard(),
                        pattern.wildcards(),
                        if pattern.wildcards() == 1 { "" } else { "s" }
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
        ordered: m.ordered.unwrap_or(true),
        transform: Transform {
            mode: m.body,
            pattern,
            room,
            event,
            tenant,
        },
    })
}
