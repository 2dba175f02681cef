//! Health, readiness and metrics endpoints.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_node::SlotRefusal;
use herald_protocol::ErrorCode;
use serde_json::json;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

/// `GET /health`: 200 while the process runs.
pub(crate) async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready` and `/ws/health`: 200 when accepting connections and the
/// broker is reachable, else 503; also 503 (`at_capacity`) while every
/// `limits.max_connections` slot is taken, so a load balancer sends new
/// clients elsewhere (open connections are not affected).
pub(crate) async fn ready(State(app): State<AppState>) -> Response {
    if app.node.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "draining"})),
        )
            .into_response()
    } else if !app.node.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "broker_unavailable"})),
        )
            .into_response()
    } else if app.node.is_at_capacity() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "at_capacity"})),
        )
            .into_response()
    } else {
        axum::Json(json!({"status": "ready", "node_id": app.node.id()})).into_response()
    }
}

/// The client's IP address, when the server knows it (every connection
/// accepted by [`crate::http::serve`] does).
pub(crate) struct PeerIp(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Self(peer.map(|ConnectInfo(addr)| addr.ip())))
    }
}

/// Reserves a socket slot for a new WebSocket or SSE client from `ip`, or
/// the answer that refuses it: 503 when the node is draining, at
/// `limits.max_connections`, or cannot reach its broker (a client is
/// better served by another node); 429 when `ip` is at
/// `limits.max_connections_per_ip`.
pub(crate) fn reserve_socket(
    app: &AppState,
    ip: Option<IpAddr>,
) -> Result<herald_node::SocketSlot, ApiError> {
    let message = if app.node.is_draining() {
        "node is shutting down; connect to another node"
    } else if !app.node.is_ready() {
        "node cannot reach its broker; connect to another node or retry shortly"
    } else {
        match app.node.reserve_socket_from(ip) {
            Ok(slot) => return Ok(slot),
            Err(SlotRefusal::Draining) => "node is shutting down; connect to another node",
            Err(SlotRefusal::AtCapacity) => "node is at limits.max_connections",
            Err(SlotRefusal::IpAtCapacity) => {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::LimitExceeded,
                    "this IP address is at limits.max_connections_per_ip",
                ))
            }
        }
    };
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        message,
    ))
}

/// Reserves a place for a WebSocket that will authenticate with a frame,
/// or the 503 that refuses it at `limits.max_pending_connections`.
pub(crate) fn reserve_pending(app: &AppState) -> Result<herald_node::PendingSlot, ApiError> {
    app.node.reserve_pending().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "node is at limits.max_pending_connections (sockets not yet authenticated); \
             retry shortly or send the token with the upgrade",
        )
    })
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let stats = app.node.broker().stats();
    metrics::gauge!("herald_history_bytes").set(stats.stored_bytes as f64);
    metrics::gauge!("herald_history_events").set(stats.stored_events as f64);
    metrics::gauge!("herald_history_rooms").set(stats.streams as f64);
    let trimmed = stats.trimmed;
    for (reason, n) in [
        ("size", trimmed.size),
        ("ttl", trimmed.ttl),
        ("room_bytes", trimmed.room_bytes),
        ("total_bytes", trimmed.total_bytes),
    ] {
        metrics::counter!("herald_history_trimmed_events_total", "reason" => reason).absolute(n);
    }
    match &app.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "metrics recorder not installed",
        )
        .into_response(),
    }
}

/// Unknown paths: a JSON 404.
pub(crate) async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route").into_response()
}

/// Turns the framework's plain-text rejections (a bad query string, an
/// undecodable path, a wrong method, a missing upgrade header) into the
/// API's JSON error shape, so every error a client sees is JSON.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = status_error_code(status);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    ApiError::new(status, code, message).into_response()
}

/// The error code of an error answer that carries only a status.
pub(crate) fn status_error_code(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}
