//! Health, readiness and metrics endpoints.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use serde_json::json;

/// `GET /health`: 200 while the process runs.
pub(crate) async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready` and `/ws/health`: 200 when accepting connections and the
/// broker is reachable, else 503.
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
    } else {
        axum::Json(json!({"status": "ready", "node_id": app.node.id()})).into_response()
    }
}

/// Reserves a socket slot for a new WebSocket or SSE client, or the 503
/// that refuses it: the node is draining, at `limits.max_connections`, or
/// cannot reach its broker (a client is better served by another node).
pub(crate) fn reserve_socket(app: &AppState) -> Result<herald_node::SocketSlot, ApiError> {
    let message = if app.node.is_draining() {
        "node is shutting down; connect to another node"
    } else if !app.node.is_ready() {
        "node cannot reach its broker; connect to another node or retry shortly"
    } else if let Some(slot) = app.node.reserve_socket() {
        return Ok(slot);
    } else {
        "node is at limits.max_connections"
    };
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        message,
    ))
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
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    ApiError::new(status, code, message).into_response()
}
