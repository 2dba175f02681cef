//! Shared state of the HTTP handlers and the router.

use crate::audit::admin;
use crate::auth::ApiKeys;
use crate::origin::OriginPolicy;
use crate::{api, ops, sse, ws};
use axum::routing::{get, post};
use axum::Router;
use herald_auth::TokenMinter;
use herald_node::Node;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub(crate) node: Node,
    pub(crate) api_keys: Arc<ApiKeys>,
    pub(crate) minter: Option<Arc<TokenMinter>>,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// `server.body_timeout`: how long an API request body may take.
    pub(crate) body_timeout: Duration,
    /// `[socketio]`.
    pub(crate) socketio: Arc<crate::config::SocketIoConfig>,
    /// `proxy.forward_headers`, lower-case: the request headers passed to
    /// the connect proxy.
    pub(crate) forward_headers: Arc<[String]>,
    /// `server.allowed_origins`.
    pub(crate) origins: Arc<OriginPolicy>,
    /// `[compression]`: permessage-deflate on WebSockets.
    pub(crate) compression: crate::config::CompressionConfig,
}

/// Every route of PROTOCOL.md 2.
pub(crate) fn router(state: AppState) -> Router {
    crate::guard::describe_metrics();
    let socketio = if state.socketio.enabled {
        crate::socketio::engine::routes(&state.socketio.path)
    } else {
        Router::new()
    };
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(sse::stream))
        .route("/api/v1/publish", post(api::publish))
        .route("/api/v1/broadcast", post(api::broadcast))
        .route(
            "/api/v1/users/{user_id}/disconnect",
            admin("connection.disconnect", post(api::disconnect_user)),
        )
        .route(
            "/api/v1/users/{user_id}/connections",
            admin("connections.read", get(api::user_connections)),
        )
        .route("/api/v1/users/{user_id}/send", post(api::direct::to_user))
        .route(
            "/api/v1/connections/{connection_id}/send",
            post(api::direct::to_connection),
        )
        .route(
            "/api/v1/rooms/{room}/presence",
            admin("presence.read", get(api::presence)),
        )
        .route(
            "/api/v1/rooms/{room}/history",
            admin("history.read", get(api::history)),
        )
        .route("/api/v1/stats", admin("stats.read", get(api::stats)))
        .route("/api/v1/tokens", admin("token.mint", post(api::mint_token)))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/ws/health", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .merge(crate::dashboard::routes())
        .merge(socketio)
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn(crate::guard::request_limits))
        .layer(axum::middleware::map_response(ops::json_errors))
        // Outside the rest, so a panic anywhere below still gets the JSON 500.
        .layer(axum::middleware::from_fn(crate::guard::catch_panic))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::origin::api_cors,
        ))
        // Outermost: every answer of an API call, the 500 of a panic and a
        // refused preflight included, carries the request id.
        .layer(axum::middleware::from_fn(crate::request_id::assign))
        .with_state(state)
}
