//! Configuration: TOML plus `HERALD_<SECTION>__<KEY>` environment overrides
//! (PROTOCOL.md 1). Unknown keys and bad values are refused before any port
//! is bound, each error naming its key.

mod audit;
mod auth;
mod bridge;
mod compression;
// A build without bridges reads `[bridge]` into a table that refuses keys.
#[cfg(not(feature = "bridge"))]
use bridge as herald_bridge;
mod env;
mod metrics;
mod namespaces;
mod origins;
mod proxy;
mod telemetry;
mod tls;
mod webhooks;

use herald_core::Namespaces;
use herald_node::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{ApiKeyConfig, AuthConfig, Scope};
pub use compression::CompressionConfig;
use herald_core::duration;
pub use herald_core::duration::parse as parse_duration;
pub use metrics::MetricsConfig;
pub use namespaces::NamespaceToml;
pub use proxy::ProxyConfig;
pub use telemetry::TelemetryConfig;
pub use webhooks::WebhooksConfig;

/// Smallest `limits.max_pending_message_bytes`: room for an `authenticate`
/// frame with a JWT of ordinary size.
const MIN_PENDING_MESSAGE_BYTES: usize = 1024;

/// Everything a node is configured with.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[limits]`
    pub limits: Limits,
    /// `[broker]`
    pub broker: BrokerConfig,
    /// `[namespaces.<name>]`, merged over the shipped ones.
    pub namespaces: BTreeMap<String, NamespaceToml>,
    /// `[socketio]`
    pub socketio: SocketIoConfig,
    /// `[bridge]`: ingest bridges from NATS subjects and Redis channels.
    pub bridge: herald_bridge::BridgeConfig,
    /// `[webhooks]`: signed event batches to the backend.
    pub webhooks: WebhooksConfig,
    /// `[proxy]`: the backend's connect, join, send and RPC endpoints.
    pub proxy: ProxyConfig,
    /// `[metrics]`: label bounds of the node's metrics.
    pub metrics: MetricsConfig,
    /// `[telemetry]`: OpenTelemetry tracing over OTLP/HTTP (off by default).
    pub telemetry: TelemetryConfig,
    /// `[compression]`: permessage-deflate on WebSockets (off by default).
    pub compression: CompressionConfig,
}

/// `[socketio]`: the Socket.IO v4 endpoint (docs/protocol.md 8).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// Its path, starting and ending with `/` (served with and without the
    /// final `/`, as Socket.IO servers do).
    pub path: String,
    /// Connection state recovery: a `pid` in the CONNECT answer and the
    /// recovery token as every event's last argument.
    pub recovery: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/socket.io/".into(),
            recovery: true,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// This node's id; hostname plus a random suffix when unset.
    pub node_id: Option<String>,
    /// Time over which clients are disconnected on shutdown.
    #[serde(with = "duration")]
    pub shutdown_drain: Duration,
    /// Longest time an HTTP API request body may take to arrive whole;
    /// a slower one is answered 408.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Browser origins allowed to connect and call the API (patterns:
    /// `*`, `https://app.example.com`, `https://*.example.com`); unset, no
    /// origin is checked (docs/operations.md, "Browser origins").
    pub allowed_origins: Option<Vec<String>>,
    /// PEM certificate chain (leaf first) to serve HTTPS/WSS with; set
    /// together with `tls_key_file` (see `config/tls.rs`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`'s certificate.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            node_id: None,
            shutdown_drain: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            allowed_origins: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// `[broker]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Engine, by name: one of the kinds this build has (see
    /// [`crate::engines::compiled`]).
    pub kind: String,
    /// Redis URL for `kind = "redis"`.
    pub redis_url: Option<String>,
    /// NATS URL for `kind = "nats"`.
    pub nats_url: Option<String>,
    /// Prefix of every key and subject.
    pub prefix: String,
    /// How often a node renews its cluster registry entry; survivors clean
    /// up a node silent for two periods.
    #[serde(with = "duration")]
    pub node_heartbeat: Duration,
    /// Longest wait for one Redis command (or NATS request) before
    /// answering `unavailable`.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// NATS: a `.creds` file (user JWT and nkey seed).
    pub nats_credentials_file: Option<PathBuf>,
    /// NATS: user name (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS: password (with `nats_user`); masked when the config is shown.
    pub nats_password: Option<String>,
    /// NATS: authentication token; masked when the config is shown.
    pub nats_token: Option<String>,
    /// NATS: CA certificates to verify the server with (TLS is then
    /// required).
    pub nats_tls_ca_file: Option<PathBuf>,
    /// NATS: client certificate for mutual TLS (with `nats_tls_key_file`).
    pub nats_tls_cert_file: Option<PathBuf>,
    /// NATS: the client certificate's key.
    pub nats_tls_key_file: Option<PathBuf>,
    /// NATS: JetStream replicas of the engine's stream and buckets (1 on a
    /// single server, 3 on a three-server NATS cluster).
    pub nats_replicas: usize,
    /// NATS: how long the rooms' stream keeps a message; at least every
    /// namespace's `history_ttl`.
    #[serde(with = "duration")]
    pub nats_max_age: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            redis_url: None,
            nats_url: None,
            prefix: "herald".into(),
            node_heartbeat: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            nats_credentials_file: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_tls_ca_file: None,
            nats_tls_cert_file: None,
            nats_tls_key_file: None,
            nats_replicas: 1,
            nats_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or type errors from the file or the environment.
    #[error(transparent)]
    Load(#[from] Box<figment::Error>),
    /// Several problems, each naming its key.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<ConfigError>),
    /// A value that parses but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The offending key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Loads `path` (if any) and the `HERALD_` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Serialized, Toml};
        let mut fig = figment::Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist", p.display()),
                ));
            }
            fig = fig.merge(Toml::file(p));
        }
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        let vars = env::classify(names.iter().map(String::as_str));
        if let Some(e) = env::unknown_error(&vars.unknown) {
            return Err(e);
        }
        if !vars.service_links.is_empty() {
            tracing::info!(
                variables = %vars.service_links.join(","),
                "ignoring Kubernetes service-link variables (not HERALD_<SECTION>__<KEY>)"
            );
        }
        // Only `HERALD_<SECTION>__<KEY>` names reach the config; the rest
        // were sorted above (HERALD_LOG_FORMAT belongs to the command line).
        fig = fig.merge(
            Env::prefixed("HERALD_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment), then validates. For tests and
    /// `config check` of inline text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        use figment::providers::{Format, Serialized, Toml};
        let config: Config = figment::Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that parses but is not acceptable, reporting all
    /// problems at once so an operator fixes them in one pass.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = self.server.listen.parse::<std::net::SocketAddr>() {
            problems.push(invalid(
                "server.listen",
                format!("`{}`: {e}", self.server.listen),
            ));
        }
        if self.server.body_timeout < Duration::from_millis(100) {
            problems.push(invalid("server.body_timeout", "must be at least 100ms"));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_user",
                l.max_connections_per_user,
            ),
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.send_queue_messages", l.send_queue_messages),
            ("limits.send_queue_bytes", l.send_queue_bytes),
            ("limits.burst", l.burst as usize),
            ("limits.messages_per_second", l.messages_per_second as usize),
            ("limits.max_pending_connections", l.max_pending_connections),
            ("limits.max_event_patterns", l.max_event_patterns),
            ("limits.history_room_bytes", l.history_room_bytes),
            ("limits.history_total_bytes", l.history_total_bytes),
        ] {
            if v == 0 {
                problems.push(invalid(key, "must be greater than 0"));
            }
        }
        for (key, d) in [
            ("limits.auth_timeout", l.auth_timeout),
            ("limits.heartbeat_interval", l.heartbeat_interval),
            ("limits.stale_timeout", l.stale_timeout),
        ] {
            if d.is_zero() {
                problems.push(invalid(key, "must be longer than 0s"));
            }
        }
        // An `authenticate` frame carrying a typical JWT must still fit.
        if l.max_pending_message_bytes < MIN_PENDING_MESSAGE_BYTES {
            problems.push(invalid(
                "limits.max_pending_message_bytes",
                format!("must be at least {MIN_PENDING_MESSAGE_BYTES}"),
            ));
        }
        if l.stale_timeout <= l.heartbeat_interval {
            problems.push(invalid(
                "limits.stale_timeout",
                "must be longer than limits.heartbeat_interval",
            ));
        }
        for (i, k) in self.auth.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                problems.push(invalid(
                    format!("auth.api_keys[{i}].key"),
                    "must be at least 16 characters",
                ));
            }
            if k.scopes.is_empty() {
                problems.push(invalid(
                    format!("auth.api_keys[{i}].scopes"),
                    "must not be empty",
                ));
            }
        }
        audit::validate_names(&self.auth.api_keys, &mut problems);
        origins::validate(&self.server, &mut problems);
        self.validate_broker(&mut problems);
        for (key, message) in self.bridge_problems() {
            problems.push(invalid(key, message));
        }
        self.validate_dev_mode(&mut problems);
        tls::validate(&self.server, &mut problems);
        self.metrics.validate(&mut problems);
        if let Err(errors) = self.webhooks.resolve() {
            problems.extend(errors);
        }
        self.telemetry.validate(&mut problems);
        self.compression.validate(&mut problems);
        let path = &self.socketio.path;
        if path.len() < 2
            || !path.starts_with('/')
            || !path.ends_with('/')
            || path.contains("//")
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        {
            problems.push(invalid(
                "socketio.path",
                format!(
                    "`{path}`: must start and end with `/` (e.g. `/socket.io/`), with letters, \
                     digits, `-`, `_`, `.` or `~` between"
                ),
            ));
        }
        match self.namespace_rules() {
            Ok(rules) => self.proxy.validate(Some(&rules), &mut problems),
            Err(e) => {
                problems.push(e);
                self.proxy.validate(None, &mut problems);
            }
        }
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Many(problems)),
        }
    }

    fn validate_broker(&self, problems: &mut Vec<ConfigError>) {
        let b = &self.broker;
        // The kind and the engine's own keys are the engine's to check.
        match crate::engines::compiled().pick(&b.kind) {
            Ok(factory) => {
                for e in factory.validate(&self.engine_settings()) {
                    problems.push(invalid(e.key, e.message));
                }
            }
            Err(e) => problems.push(invalid(e.key, e.message)),
        }
        if b.prefix.is_empty() || b.prefix.contains(['{', '}', ' ']) {
            problems.push(invalid(
                "broker.prefix",
                "must be non-empty, without spaces or braces",
            ));
        }
        if b.node_heartbeat < Duration::from_millis(100) {
            problems.push(invalid("broker.node_heartbeat", "must be at least 100ms"));
        }
        if b.command_timeout < Duration::from_millis(10) {
            problems.push(invalid("broker.command_timeout", "must be at least 10ms"));
        }
        // The stream keeps a room's events no longer than its max_age:
        // history a namespace promises must fit in it.
        if b.kind == "nats" {
            if let Ok(rules) = self.namespace_rules() {
                for (name, ns) in rules.iter() {
                    if ns.history_ttl > b.nats_max_age {
                        problems.push(invalid(
                            "broker.nats_max_age",
                            format!(
                                "{} is shorter than namespaces.{name}.history_ttl ({}); \
                                 raise broker.nats_max_age or lower the history_ttl",
                                humantime::format_duration(b.nats_max_age),
                                humantime::format_duration(ns.history_ttl)
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Development mode (no token key: a random HS256 secret per run) is for
    /// a developer's machine only: it is refused unless the node listens on
    /// a loopback address with the memory broker, so a forgotten key can
    /// never open a reachable node or a cluster to made-up secrets.
    fn validate_dev_mode(&self, problems: &mut Vec<ConfigError>) {
        if !self.is_dev_mode() {
            return;
        }
        let loopback = self
            .server
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        let memory = self.broker.kind == "memory";
        if !loopback || !memory {
            let why = if loopback {
                format!("broker.kind = \"{}\"", self.broker.kind)
            } else {
                format!(
                    "server.listen = \"{}\" is not a loopback address",
                    self.server.listen
                )
            };
            problems.push(invalid(
                "auth.hs256_secret",
                format!(
                    "no token key is configured, and development mode (a random secret per run) \
                     only serves on a loopback server.listen with broker.kind = \"memory\" \
                     ({why}); set auth.hs256_secret (or HERALD_AUTH__HS256_SECRET, \
                     auth.hs256_secret_file), auth.rs256_public_key_pem[_file], \
                     auth.es256_public_key_pem[_file], auth.jwks_url, or proxy.connect_url"
                ),
            ));
        }
    }

    /// Whether `herald serve` would run in development mode with this
    /// config (no token key; see [`Config::validate`]).
    pub fn is_dev_mode(&self) -> bool {
        crate::auth::dev_mode(self)
    }

    /// The `[broker]` table as its engine reads it (see
    /// [`herald_core::EngineSettings`]).
    pub fn engine_settings(&self) -> herald_core::EngineSettings {
        match serde_json::to_value(&self.broker) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => herald_core::EngineSettings::new(),
        }
    }

    /// The shipped namespaces with the configured ones merged over them.
    pub fn namespace_rules(&self) -> Result<Namespaces, ConfigError> {
        namespaces::merge(&self.namespaces)
    }

    /// The effective config as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        let mask = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("********".into());
            }
        };
        mask(&mut c.auth.hs256_secret);
        for (i, k) in c.auth.api_keys.iter_mut().enumerate() {
            k.key = "********".into();
            k.name = Some(k.name_or_default(i));
        }
        if let Some(url) = &mut c.broker.redis_url {
            *url = mask_url(url);
        }
        if let Some(url) = &mut c.broker.nats_url {
            *url = url.split(',').map(mask_url).collect::<Vec<_>>().join(",");
        }
        mask(&mut c.broker.nats_password);
        mask(&mut c.broker.nats_token);
        for url in [&mut c.bridge.nats_url, &mut c.bridge.redis_url]
            .into_iter()
            .flatten()
        {
            *url = mask_url(url);
        }
        mask(&mut c.bridge.nats_password);
        mask(&mut c.bridge.nats_token);
        mask(&mut c.webhooks.secret);
        c.proxy.mask();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Hides the password of `scheme://user:pass@host` URLs.
fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://********{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
