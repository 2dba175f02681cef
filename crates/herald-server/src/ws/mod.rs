//! The WebSocket transport (PROTOCOL.md 3): the upgrade and its checks
//! here; the connection's life in [`connection`]; framing in [`frames`];
//! the socket and its writer in [`socket`].
//!
//! Herald owns the upgraded TCP socket instead of handing it to a
//! WebSocket library: fan-out writes each event's shared bytes straight
//! into every member's socket with one vectored write (a 2–10 byte header
//! per recipient is the only per-recipient work), without waking the
//! connection's task, and an idle connection holds no read or write buffer.
//! tungstenite still parses and formats frame headers.

mod connection;
pub(crate) mod deflate;
pub(crate) mod frames;
pub(crate) mod socket;

use crate::api::bearer;
use crate::credential::CredentialSource;
use crate::error::ApiError;
use crate::ops::PeerIp;
use crate::AppState;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::Verified;
use herald_protocol::ErrorCode;
use hyper::upgrade::OnUpgrade;
use serde::Deserialize;

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

/// A valid WebSocket upgrade request (RFC 6455 4.2.1), ready to answer.
pub(crate) struct WsUpgrade {
    pub(crate) accept: HeaderValue,
    pub(crate) on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        if !header_has_token(headers, header::CONNECTION, "upgrade") {
            return Err(ApiError::bad_request(
                "not a WebSocket upgrade: the Connection header must include `upgrade`",
            ));
        }
        if !header_has_token(headers, header::UPGRADE, "websocket") {
            return Err(ApiError::bad_request(
                "not a WebSocket upgrade: the Upgrade header must be `websocket`",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(ApiError::bad_request(
                "unsupported WebSocket version: Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(ApiError::bad_request(
                "not a WebSocket upgrade: Sec-WebSocket-Key is missing",
            ));
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept)
            .map_err(|_| ApiError::bad_request("Sec-WebSocket-Key is not a valid header"))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::BadRequest,
                "this connection cannot be upgraded (HTTP/1.1 is required)",
            )
        })?;
        Ok(Self { accept, on_upgrade })
    }
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// `GET /ws`
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    PeerIp(ip): PeerIp,
    source: CredentialSource,
    ws: WsUpgrade,
) -> Response {
    // A browser page not in `server.allowed_origins` (when set) is refused
    // before anything is reserved or verified.
    if let Some(refusal) = app.origins.refusal(&headers) {
        return refusal;
    }
    let slot = match crate::ops::reserve_socket(&app, ip) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let token = bearer(&headers).map(str::to_owned).or(q.token);
    // A socket that will authenticate with a frame also takes a place
    // among the unauthenticated ones, which have their own smaller cap.
    let pending = match &token {
        Some(_) => None,
        None => match crate::ops::reserve_pending(&app) {
            Ok(pending) => Some(pending),
            Err(refusal) => return refusal.into_response(),
        },
    };
    let credential = source.context("websocket");
    let verified: Option<Verified> = match token {
        None => None,
        Some(t) => match app.node.verify_credential(&t, &credential).await {
            Ok(verified) => Some(verified),
            Err(e) => return crate::credential::refusal(e),
        },
    };
    let refused = match &verified {
        Some(v) => app.node.would_refuse_user(&v.identity).await,
        None => false,
    };
    if refused {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded,
            "this user is at limits.max_connections_per_user",
        )
        .into_response();
    }
    let deflate = deflate::negotiate(&headers, &app.compression);
    let tasks = app.node.tasks().clone();
    let start = Box::new(connection::Start {
        app,
        on_upgrade: ws.on_upgrade,
        verified,
        credential,
        pending,
        deflate: deflate.as_ref().map(|(d, _)| *d),
    });
    tasks.spawn(connection::run(start, slot));
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::SEC_WEBSOCKET_ACCEPT, ws.accept),
        ],
    )
        .into_response();
    if let Some((_, answer)) = deflate {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    response
}
