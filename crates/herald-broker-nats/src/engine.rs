//! The NATS engine's factory (`broker.kind = "nats"`): connects the node's
//! client and starts the broker and the cluster registry, every task on
//! the node's tracker.

use crate::{NatsBroker, NatsClients, NatsCluster, NatsOutbox, NatsSettings};
use async_trait::async_trait;
use herald_core::{
    BrokerError, Engine, EngineCapabilities, EngineContext, EngineError, EngineFactory,
    EngineSettings, MemberRecord, Presence, PresenceChange, RoomKey, SettingError,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Builds the NATS engine. It reads, from the `[broker]` table,
/// `nats_url`, `prefix`, `node_heartbeat`, `command_timeout`,
/// `nats_credentials_file`, `nats_user`, `nats_password`, `nats_token`,
/// `nats_tls_ca_file`, `nats_tls_cert_file`, `nats_tls_key_file`,
/// `nats_replicas` (1) and `nats_max_age` (`24h`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsEngine;

const KIND: &str = "nats";

/// `broker.nats_max_age` when unset.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The least `broker.nats_max_age`: an engine epoch lives half of it, and
/// the duplicate window (idempotency keys) is 5 minutes.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(600);

fn text<'a>(settings: &'a EngineSettings, key: &str) -> Option<&'a str> {
    settings
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

fn duration(settings: &EngineSettings, key: &str, default: Duration) -> Duration {
    text(settings, key)
        .and_then(|t| herald_core::duration::parse(t).ok())
        .unwrap_or(default)
}

fn path(settings: &EngineSettings, key: &str) -> Option<PathBuf> {
    text(settings, key).map(PathBuf::from)
}

fn replicas(settings: &EngineSettings) -> Result<usize, String> {
    match settings.get("nats_replicas") {
        None | Some(serde_json::Value::Null) => Ok(1),
        Some(v) => match v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        {
            Some(n @ 1..=5) => Ok(n as usize),
            _ => Err(format!("must be a number of replicas from 1 to 5, not {v}")),
        },
    }
}

impl NatsEngine {
    /// The engine's settings from the `[broker]` table, for node `node_id`
    /// (missing keys take their defaults; [`EngineFactory::validate`] has
    /// refused bad ones).
    pub fn settings(settings: &EngineSettings, node_id: &str) -> NatsSettings {
        let user_password = match (text(settings, "nats_user"), text(settings, "nats_password")) {
            (Some(u), Some(p)) => Some((u.to_owned(), p.to_owned())),
            _ => None,
        };
        let tls_client_cert = match (
            path(settings, "nats_tls_cert_file"),
            path(settings, "nats_tls_key_file"),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        };
        NatsSettings {
            url: text(settings, "nats_url").unwrap_or_default().to_owned(),
            prefix: text(settings, "prefix").unwrap_or("herald").to_owned(),
            node_id: node_id.to_owned(),
            node_heartbeat: duration(settings, "node_heartbeat", Duration::from_secs(5)),
            command_timeout: duration(settings, "command_timeout", Duration::from_secs(2)),
            credentials_file: path(settings, "nats_credentials_file"),
            user_password,
            token: text(settings, "nats_token").map(str::to_owned),
            tls_ca_file: path(settings, "nats_tls_ca_file"),
            tls_client_cert,
            replicas: replicas(settings).unwrap_or(1),
        }
    }

    /// `broker.nats_max_age`: how long the rooms' stream keeps a message.
    pub fn max_age(settings: &EngineSettings) -> Duration {
        duration(settings, "nats_max_age", DEFAULT_MAX_AGE)
    }
}

/// The problems of the engine's keys, each naming its key.
fn problems(settings: &EngineSettings) -> Vec<SettingError> {
    let mut out = Vec::new();
    let mut problem = |key: &str, message: String| {
        out.push(SettingError {
            key: format!("broker.{key}"),
            message,
        })
    };
    match text(settings, "nats_url") {
        None => problem(
            "nats_url",
            "is required with broker.kind = \"nats\" (nats://host:port, tls://host:port, \
             several separated by commas)"
                .into(),
        ),
        Some(urls) => {
            for url in urls.split(',').map(str::trim) {
                let scheme_ok = url.starts_with("nats://") || url.starts_with("tls://");
                if !scheme_ok || url.parse::<async_nats::ServerAddr>().is_err() {
                    problem(
                        "nats_url",
                        format!("`{url}` is not a nats://host:port or tls://host:port URL"),
                    );
                }
            }
        }
    }
    let prefix = text(settings, "prefix").unwrap_or("herald");
    if prefix.split('.').any(|t| {
        t.is_empty()
            || t.chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>' || c.is_control())
    }) {
        problem(
            "prefix",
            format!(
                "`{prefix}` is not valid as NATS subject tokens (no spaces, `*`, `>` or \
                 empty tokens)"
            ),
        );
    }
    match (text(settings, "nats_user"), text(settings, "nats_password")) {
        (Some(_), None) => problem("nats_password", "is required with broker.nats_user".into()),
        (None, Some(_)) => problem("nats_user", "is required with broker.nats_password".into()),
        _ => {}
    }
    match (
        text(settings, "nats_tls_cert_file"),
        text(settings, "nats_tls_key_file"),
    ) {
        (Some(_), None) => problem(
            "nats_tls_key_file",
            "is required with broker.nats_tls_cert_file".into(),
        ),
        (None, Some(_)) => problem(
            "nats_tls_cert_file",
            "is required with broker.nats_tls_key_file".into(),
        ),
        _ => {}
    }
    for key in [
        "nats_credentials_file",
        "nats_tls_ca_file",
        "nats_tls_cert_file",
        "nats_tls_key_file",
    ] {
        if let Some(p) = text(settings, key) {
            if !std::path::Path::new(p).is_file() {
                problem(key, format!("`{p}` does not exist or is not a file"));
            }
        }
    }
    if let Err(message) = replicas(settings) {
        problem("nats_replicas", message);
    }
    if let Some(t) = text(settings, "nats_max_age") {
        match herald_core::duration::parse(t) {
            Ok(d) if d < MIN_MAX_AGE => problem(
                "nats_max_age",
                format!("must be at least 10m (an engine epoch lives half of it), not {t}"),
            ),
            Ok(_) => {}
            Err(e) => problem("nats_max_age", format!("`{t}`: {e}")),
        }
    }
    out
}

impl EngineFactory for NatsEngine {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> EngineCapabilities {
        EngineCapabilities { multi_node: true }
    }

    fn validate(&self, settings: &EngineSettings) -> Vec<SettingError> {
        problems(settings)
    }

    fn start(&self, ctx: EngineContext) -> Result<Engine, EngineError> {
        let settings = Self::settings(&ctx.settings, &ctx.node_id);
        let clients = NatsClients::connect(&settings).map_err(|e| EngineError {
            kind: KIND.into(),
            message: e.to_string(),
        })?;
        let broker = NatsBroker::new(
            clients.clone(),
            &settings,
            Self::max_age(&ctx.settings),
            ctx.sink,
            ctx.presence_sink,
        );
        broker.spawn(ctx.cancel.clone(), &ctx.tasks);
        let outbox = NatsOutbox::new(clients.clone(), &settings, Self::max_age(&ctx.settings));
        if !ctx.hooks.is_empty() {
            // Without webhooks the outbox is never touched: no lease, no
            // stream, no traffic.
            outbox.spawn(ctx.cancel.clone(), &ctx.tasks);
        }
        let cluster =
            NatsCluster::with_hooks(clients.clone(), &settings, ctx.hooks, Some(outbox.clone()));
        cluster.spawn(ctx.node, ctx.cancel.clone(), &ctx.tasks);
        let presence = Arc::new(NatsPresence {
            broker: broker.clone(),
            cluster: cluster.clone(),
        });
        Ok(Engine {
            broker,
            cluster: Some(cluster),
            presence,
            shutdown: Some(Box::pin(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), clients.close()).await;
            })),
            outbox: Some(outbox),
        })
    }
}

/// Presence on NATS: changes go out on the room's delivery subject (in
/// order with its publications), members are the registry's.
pub struct NatsPresence {
    broker: Arc<NatsBroker>,
    cluster: Arc<NatsCluster>,
}

#[async_trait]
impl Presence for NatsPresence {
    async fn announce(&self, change: &PresenceChange) -> Result<(), BrokerError> {
        self.broker.announce(change).await
    }

    async fn members(&self, room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError> {
        self.cluster.presence(room).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> EngineSettings {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect()
    }

    fn keys(s: &EngineSettings) -> Vec<String> {
        problems(s).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn every_problem_names_its_key() {
        assert_eq!(keys(&settings(&[])), ["broker.nats_url"]);
        assert_eq!(
            keys(&settings(&[("nats_url", "redis://x:1")])),
            ["broker.nats_url"]
        );
        assert!(keys(&settings(&[("nats_url", "nats://a:4222, tls://b:4222")])).is_empty());
        let ok = ("nats_url", "nats://127.0.0.1:4222");
        for bad in ["my app", "a.*", "a.>", "a..b", ""] {
            let s = settings(&[ok, ("prefix", bad)]);
            if bad.is_empty() {
                // An empty prefix is the default one.
                assert!(keys(&s).is_empty());
            } else {
                assert_eq!(keys(&s), ["broker.prefix"], "{bad:?}");
            }
        }
        assert_eq!(
            keys(&settings(&[ok, ("nats_user", "u")])),
            ["broker.nats_password"]
        );
        assert_eq!(
            keys(&settings(&[
                ok,
                ("nats_credentials_file", "/no/such.creds")
            ])),
            ["broker.nats_credentials_file"]
        );
        assert_eq!(
            keys(&settings(&[ok, ("nats_max_age", "5m")])),
            ["broker.nats_max_age"]
        );
        assert_eq!(
            keys(&settings(&[ok, ("nats_replicas", "7")])),
            ["broker.nats_replicas"]
        );
    }
}
