//! Starting a node and draining it on SIGTERM / SIGINT.

use crate::app::{router, AppState};
use crate::auth::{
    build_access_proxy, build_authenticator, build_verifier, dev_mode, proxy_http_client,
    token_minter, ApiKeys,
};
use crate::config::{ApiKeyConfig, Config, ConfigError, Scope};
use crate::publish_target::ApiPublish;
use herald_core::{EngineError, Engines};
use herald_node::{Node, NodeSettings};
use herald_telemetry::{PublishSource, Telemetry};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use std::time::Duration;

#[cfg(not(feature = "bridge"))]
mod no_bridges;
#[cfg(not(feature = "bridge"))]
use no_bridges::{bridge_plan, start_bridges};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (server.listen): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The engine `broker.kind` names could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The `[bridge]` bridges could not start.
    #[cfg(feature = "bridge")]
    #[error(transparent)]
    Bridge(#[from] herald_bridge::BridgeError),
}

/// Latency histogram buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".to_owned());
    format!("{host}-{}", random_hex(3))
}

fn install_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("herald_delivery_latency_seconds".into()),
            LATENCY_BUCKETS,
        )
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full("herald_proxy_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full("herald_broker_command_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .ok()?
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
        .ok()
}

/// In development mode (no key configured) a random HS256 secret and admin
/// API key are generated and announced, so `herald serve` works alone.
fn apply_dev_mode(config: &mut Config) {
    if !dev_mode(config) {
        if crate::auth::no_token_key(&config.auth) {
            tracing::info!(
                "no token key configured: the connect proxy (proxy.connect_url) decides who every \
                 connection is, JWT-shaped credentials included"
            );
        }
        if config.auth.api_keys.is_empty() {
            tracing::warn!("no auth.api_keys configured: every HTTP API call will be refused");
        }
        return;
    }
    let secret = random_hex(32);
    config.auth.hs256_secret = Some(secret.clone());
    let mut api_key = None;
    if config.auth.api_keys.is_empty() {
        let key = format!("dev-{}", random_hex(16));
        config.auth.api_keys.push(ApiKeyConfig {
            key: key.clone(),
            scopes: vec![Scope::Admin],
            name: Some("dev".into()),
        });
        api_key = Some(key);
    }
    tracing::warn!(
        hs256_secret = %secret,
        admin_api_key = api_key.as_deref().unwrap_or("(configured)"),
        "DEVELOPMENT MODE: no token key configured, so a random HS256 secret and admin API key \
         were generated for this run only. Set a real one with auth.hs256_secret (or \
         HERALD_AUTH__HS256_SECRET), auth.rs256_public_key_pem, auth.es256_public_key_pem or \
         auth.jwks_url, and auth.api_keys, before serving real users."
    );
}

/// Runs a node on `server.listen` until SIGTERM or SIGINT, then drains it
/// and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let addr = config.server.listen.clone();
    let listener = listen(&addr).map_err(|source| ServeError::Bind {
        addr: addr.clone(),
        source,
    })?;
    serve_on(config, listener, shutdown_signal()).await
}

/// Runs a node on an already bound `listener` (`server.listen` is then
/// ignored) until `shutdown` resolves, then drains it and returns. Tests
/// and embedders bind port 0 themselves, which leaves no window between
/// choosing a port and listening on it. The engine is one of those this
/// build has ([`crate::engines::compiled`]).
pub async fn serve_on(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_on_with(config, listener, shutdown, &crate::engines::compiled()).await
}

/// [`serve_on`] with the engines to pick `broker.kind` from (an embedder's
/// own engine, say); a kind missing there is refused like a bad key.
pub async fn serve_on_with(
    mut config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    engines: &Engines,
) -> Result<(), ServeError> {
    let factory = engines.pick(&config.broker.kind).map_err(|e| {
        ServeError::Config(ConfigError::Invalid {
            key: e.key,
            message: e.message,
        })
    })?;
    apply_dev_mode(&mut config);
    let (authenticator, hs256) = build_authenticator(&config)?;
    let namespaces = config.namespace_rules()?;
    let origins = crate::origin::OriginPolicy::from_config(&config.server)?;
    let metrics = install_metrics();
    // After the recorder: its reload counter starts at 0 in /metrics.
    let tls = listener_tls(&config)?;
    herald_node::metrics::set_max_event_names(config.metrics.max_event_names);
    let node_id = config
        .server
        .node_id
        .clone()
        .unwrap_or_else(default_node_id);
    let http = proxy_http_client()?;
    let settings = NodeSettings {
        node_id: node_id.clone(),
        limits: config.limits.clone(),
        namespaces,
        access_proxy: build_access_proxy(&config, &http)?,
        hooks: config.webhooks.hook_set(),
    };
    let webhooks = config
        .webhooks
        .resolve()
        .map_err(|errors| ServeError::Config(ConfigError::Many(errors)))?;
    let bridges = bridge_plan(&config)?;
    let verifier = build_verifier(&config, authenticator.clone(), &http)?;
    let publish = Arc::new(ApiPublish::new(PublishSource::Ingest));
    let node = Node::start(
        settings,
        verifier,
        factory.as_ref(),
        config.engine_settings(),
        publish.clone(),
    )?;
    publish.fill(&node);
    if let Err(e) = start_tracing(&config, &node_id, &node) {
        node.drain(Duration::ZERO).await;
        node.leave_cluster().await;
        node.shutdown_engine().await;
        return Err(e);
    }
    if let Err(e) = start_webhooks(webhooks, &node) {
        node.drain(Duration::ZERO).await;
        node.leave_cluster().await;
        node.shutdown_engine().await;
        return Err(e);
    }
    let bridge_publish = Arc::new(ApiPublish::new(PublishSource::Bridge));
    bridge_publish.fill(&node);
    if let Err(e) = start_bridges(bridges, &node_id, &node, bridge_publish) {
        node.drain(Duration::ZERO).await;
        node.leave_cluster().await;
        node.shutdown_engine().await;
        return Err(e);
    }
    if let Some(handle) = &metrics {
        spawn_metrics_upkeep(&node, handle.clone());
    }
    if let Some(tls) = &tls {
        tls.spawn_reloader(node.tasks(), node.cancellation());
    }
    if let Some(handle) = authenticator.spawn_jwks_refresh(node.cancellation()) {
        node.tasks().spawn(async move {
            let _ = handle.await;
        });
    }
    let state = AppState {
        node: node.clone(),
        api_keys: Arc::new(ApiKeys::new(&config.auth)),
        minter: hs256.as_deref().map(|s| Arc::new(token_minter(&config, s))),
        metrics,
        body_timeout: config.server.body_timeout,
        socketio: Arc::new(config.socketio.clone()),
        forward_headers: config.proxy.forward_header_names().into(),
        origins: Arc::new(origins),
        compression: config.compression,
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| config.server.listen.clone(), |a| a.to_string());
    tracing::info!(
        listen = %local, node_id = %node_id, broker = node.broker().kind(), tls = tls.is_some(),
        "herald serving"
    );
    let drain = config.server.shutdown_drain;
    let draining = node.clone();
    let acceptor = tls.map(|t| t.acceptor().clone());
    crate::http::serve(listener, router(state), acceptor, async move {
        shutdown.await;
        tracing::info!(connections = draining.connection_count(), drain = ?drain, "shutting down: draining connections");
        draining.drain(drain).await;
    })
    .await;
    node.leave_cluster().await;
    node.shutdown_engine().await;
    tracing::info!("herald stopped");
    Ok(())
}

/// The listener's TLS when `server.tls_cert_file` and `server.tls_key_file`
/// are set (validation loaded them already; a config built in code may not
/// have been validated, and the files may have changed since).
fn listener_tls(config: &Config) -> Result<Option<crate::http::tls::Tls>, ServeError> {
    let (Some(cert), Some(key)) = (&config.server.tls_cert_file, &config.server.tls_key_file)
    else {
        return Ok(None);
    };
    crate::http::tls::Tls::new(cert, key)
        .map(Some)
        .map_err(|e| ServeError::Config(e.into()))
}

/// The `[bridge]` bridges, resolved (config validation already checked
/// them; a config built in code may not have been).
#[cfg(feature = "bridge")]
fn bridge_plan(config: &Config) -> Result<herald_bridge::BridgePlan, ServeError> {
    config
        .bridge
        .plan(&config.bridge_defaults())
        .map_err(|errors| {
            ServeError::Config(ConfigError::Many(
                errors
                    .into_iter()
                    .map(|e| ConfigError::Invalid {
                        key: e.key,
                        message: e.message,
                    })
                    .collect(),
            ))
        })
}

/// Starts the bridges on the node's tracker and token, publishing through
/// the same path as `POST /api/v1/publish`.
#[cfg(feature = "bridge")]
fn start_bridges(
    plan: herald_bridge::BridgePlan,
    node_id: &str,
    node: &Node,
    publish: Arc<ApiPublish>,
) -> Result<(), ServeError> {
    if plan.routes.is_empty() {
        return Ok(());
    }
    tracing::info!(bridges = plan.routes.len(), "starting ingest bridges");
    herald_bridge::spawn(plan, node_id, publish, node.cancellation(), node.tasks())?;
    Ok(())
}

/// Turns tracing on when `telemetry.otlp_endpoint` is set: the export
/// task runs on the node's tracker and flushes when its token is cancelled
/// (at the end of the drain).
fn start_tracing(config: &Config, node_id: &str, node: &Node) -> Result<(), ServeError> {
    let Some(settings) = config.telemetry.settings(node_id) else {
        return Ok(());
    };
    let telemetry =
        Telemetry::start(&settings, node.cancellation(), node.tasks()).map_err(|e| match e {
            herald_telemetry::TelemetryError::Invalid { key, message } => {
                ServeError::Config(ConfigError::Invalid {
                    key: key.into(),
                    message,
                })
            }
            other => ServeError::Config(ConfigError::Invalid {
                key: "telemetry.otlp_endpoint".into(),
                message: other.to_string(),
            }),
        })?;
    tracing::info!(
        endpoint = %settings.endpoint,
        sample_ratio = settings.sample_ratio,
        "tracing on: spans exported over OTLP/HTTP"
    );
    node.enable_tracing(telemetry);
    Ok(())
}

/// Starts the webhook dispatcher on the node's tracker and token, reading
/// the engine's outbox (`Node::start` refused an engine without one).
fn start_webhooks(
    settings: Option<herald_webhooks::WebhookSettings>,
    node: &Node,
) -> Result<(), ServeError> {
    let (Some(settings), Some(outbox)) = (settings, node.outbox()) else {
        return Ok(());
    };
    let dispatcher =
        herald_webhooks::Dispatcher::new(settings, outbox.clone()).map_err(|e| match e {
            herald_webhooks::WebhookError::Invalid { key, message } => {
                ServeError::Config(ConfigError::Invalid { key, message })
            }
            other => ServeError::Config(ConfigError::Invalid {
                key: "webhooks".into(),
                message: other.to_string(),
            }),
        })?;
    dispatcher.spawn(node.cancellation(), node.tasks());
    Ok(())
}

/// Pending connections the kernel queues before `accept`. tokio's default
/// of 128 overflows in a reconnect storm, and every overflowed client waits
/// a full second for its SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How often the metrics upkeep runs: histogram folding and the sampled
/// send-queue gauges.
const METRICS_UPKEEP: Duration = Duration::from_secs(2);

/// Histogram samples are buffered in the recorder until upkeep folds them
/// into buckets; without this they pile up between scrapes (or forever,
/// when nobody scrapes). The same tick samples the send queues, walking
/// the connections once instead of counting on every write.
fn spawn_metrics_upkeep(node: &Node, handle: PrometheusHandle) {
    let cancel = node.cancellation();
    let weak = node.downgrade();
    node.tasks().spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            handle.run_upkeep();
            let Some(node) = weak.upgrade() else { return };
            herald_node::metrics::sample_send_queues(&node);
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C is the only way to stop.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
