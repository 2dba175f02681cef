//! Connecting to NATS: one client per node, reconnecting on its own with
//! exponential backoff and jitter, and its JetStream context.

use async_nats::jetstream;
use async_nats::{Client, ConnectOptions, Event};
use futures_util::FutureExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings of the NATS engine (the `[broker]` table, resolved).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://host:port` (or `tls://`), several separated by commas.
    pub url: String,
    /// Prefix of every subject, stream and bucket (`broker.prefix`).
    pub prefix: String,
    /// This node's id.
    pub node_id: String,
    /// How often a node renews its registry entry; a node silent for two
    /// periods is declared dead and cleaned up by the survivors.
    pub node_heartbeat: Duration,
    /// Longest wait for one request (JetStream API, key-value) before
    /// answering `unavailable`.
    pub command_timeout: Duration,
    /// `broker.nats_credentials_file`: a `.creds` file (JWT and nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// `broker.nats_user` and `broker.nats_password`.
    pub user_password: Option<(String, String)>,
    /// `broker.nats_token`.
    pub token: Option<String>,
    /// `broker.nats_tls_ca_file`: roots to verify the server with (TLS is
    /// then required).
    pub tls_ca_file: Option<PathBuf>,
    /// `broker.nats_tls_cert_file` and `broker.nats_tls_key_file`: a client
    /// certificate for mutual TLS.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// `broker.nats_replicas`: JetStream replicas of the engine's stream and
    /// buckets (1 on a single server, 3 on a three-server NATS cluster).
    pub replicas: usize,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    /// `broker.nats_url` is not a NATS URL.
    #[error("broker.nats_url: {0}")]
    Url(String),
    /// `broker.nats_credentials_file` cannot be read or parsed.
    #[error("broker.nats_credentials_file: {0}")]
    Credentials(String),
}

/// The node's NATS connection.
#[derive(Clone)]
pub struct NatsClients {
    /// Core NATS: publishes, subscriptions and requests.
    pub client: Client,
    /// JetStream on that connection, with `command_timeout` as its timeout.
    pub jetstream: jetstream::Context,
    /// The connection's events (connected, disconnected, slow consumer...),
    /// for whoever must react to them (the broker's reader catches up).
    events: tokio::sync::broadcast::Sender<Event>,
    /// Bounds each step of [`NatsClients::close`].
    command_timeout: Duration,
}

/// Connection events kept for a receiver that lags behind; past that it
/// sees `Lagged` (and catches up as after a reconnect).
const EVENT_CAPACITY: usize = 256;

/// Messages buffered per subscription before the client reports the
/// subscriber as slow and drops (the reader then catches up from the
/// stream).
const SUBSCRIPTION_CAPACITY: usize = 16_384;

fn reconnect_delay(attempt: usize) -> Duration {
    // 100 ms doubling to 5 s, plus up to 100 ms of jitter.
    let base = 100u64.saturating_mul(1u64 << attempt.min(6)).min(5_000);
    Duration::from_millis(base + rand::random_range(0..100))
}

/// Credentials and TLS of a NATS connection (the engine's, from the
/// `broker.nats_*` keys, or the bridges').
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsAuthRef<'a> {
    /// A `.creds` file (JWT and nkey seed).
    pub credentials_file: Option<&'a Path>,
    /// User and password.
    pub user_password: Option<(&'a str, &'a str)>,
    /// Token.
    pub token: Option<&'a str>,
    /// Roots to verify the server with (TLS is then required).
    pub tls_ca_file: Option<&'a Path>,
    /// Client certificate and key for mutual TLS.
    pub tls_client_cert: Option<(&'a Path, &'a Path)>,
}

/// What every Herald NATS connection shares: its name, reconnecting for
/// ever with backoff and jitter (the first connection too), requests
/// bounded by `command_timeout`, `subscription_capacity` messages buffered
/// per subscription, and the credentials and TLS of `auth`.
pub fn connect_options(
    name: String,
    command_timeout: Duration,
    subscription_capacity: usize,
    auth: NatsAuthRef<'_>,
) -> Result<ConnectOptions, NatsSetupError> {
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(command_timeout))
        .subscription_capacity(subscription_capacity);
    if let Some(path) = auth.credentials_file {
        let creds = std::fs::read_to_string(path)
            .map_err(|e| NatsSetupError::Credentials(format!("{}: {e}", path.display())))?;
        options = options
            .credentials(&creds)
            .map_err(|e| NatsSetupError::Credentials(format!("{}: {e}", path.display())))?;
    }
    if let Some((user, password)) = auth.user_password {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    if let Some(token) = auth.token {
        options = options.token(token.to_owned());
    }
    if let Some(ca) = auth.tls_ca_file {
        options = options
            .add_root_certificates(ca.to_owned())
            .require_tls(true);
    }
    if let Some((cert, key)) = auth.tls_client_cert {
        options = options
            .add_client_certificate(cert.to_owned(), key.to_owned())
            .require_tls(true);
    }
    Ok(options)
}

/// Starts a client on `url` (one or more servers, comma-separated): it
/// connects, and reconnects, in the background. Called inside a Tokio
/// runtime.
pub fn start_client(options: ConnectOptions, url: &str) -> Result<Client, NatsSetupError> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| NatsSetupError::Url(e.to_string()))?;
    // With `retry_on_initial_connect` the connect future does no I/O: it
    // spawns the connection task and returns the client at once.
    options
        .connect(servers)
        .now_or_never()
        .ok_or_else(|| NatsSetupError::Url("the client did not start".into()))?
        .map_err(|e| NatsSetupError::Url(e.to_string()))
}

impl NatsClients {
    /// Builds the client and starts connecting it in the background; it
    /// keeps retrying while NATS is away (`is_connected` tells). Called
    /// inside a Tokio runtime.
    pub fn connect(settings: &NatsSettings) -> Result<Self, NatsSetupError> {
        let (events, _) = tokio::sync::broadcast::channel(EVENT_CAPACITY);
        let sender = events.clone();
        let auth = NatsAuthRef {
            credentials_file: settings.credentials_file.as_deref(),
            user_password: settings
                .user_password
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.as_str())),
            token: settings.token.as_deref(),
            tls_ca_file: settings.tls_ca_file.as_deref(),
            tls_client_cert: settings
                .tls_client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        };
        let options = connect_options(
            format!("herald {}", settings.node_id),
            settings.command_timeout,
            SUBSCRIPTION_CAPACITY,
            auth,
        )?
        .event_callback(move |event| {
            match &event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS"),
                Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "NATS subscription too slow: messages dropped")
                }
                other => tracing::warn!(event = %other, "NATS connection event"),
            }
            // Nobody listening yet is fine: a later receiver starts from
            // the connection's state.
            let _ = sender.send(event);
            async {}
        });
        let client = start_client(options, &settings.url)?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(settings.command_timeout);
        Ok(Self {
            client,
            jetstream,
            events,
            command_timeout: settings.command_timeout,
        })
    }

    /// A receiver of the connection's events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Flushes what is buffered and closes the connection; each step waits
    /// at most `command_timeout` (a flush waits for a connection that may
    /// never come back).
    pub async fn close(&self) {
        let limit = self.command_timeout;
        if self.is_connected() {
            let _ = tokio::time::timeout(limit, self.client.flush()).await;
        }
        let _ = tokio::time::timeout(limit, self.client.drain()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::reconnect_delay;
    use std::time::Duration;

    #[test]
    fn reconnects_back_off_to_five_seconds() {
        assert!(reconnect_delay(0) < Duration::from_millis(200));
        assert!(reconnect_delay(3) >= Duration::from_millis(800));
        let late = reconnect_delay(40);
        assert!(late >= Duration::from_secs(5) && late < Duration::from_millis(5_100));
    }
}
