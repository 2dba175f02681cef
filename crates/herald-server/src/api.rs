//! The HTTP API of PROTOCOL.md 2 and 5.

use crate::auth::KeyCheck;
use crate::config::Scope;
use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::MintRequest;
use herald_core::{RoomKey, RoomName, Tenant};
use herald_node::PublishInput;
use herald_protocol::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::time::Duration;

/// Most rooms one broadcast may name.
const MAX_BROADCAST_ROOMS: usize = 1000;
/// Most events one history request returns.
const MAX_HISTORY_LIMIT: usize = 1000;

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn require(app: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    match app.api_keys.check(bearer(headers), scope) {
        KeyCheck::Allowed => Ok(()),
        KeyCheck::Unauthorized => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or unknown API key; send Authorization: Bearer <api key>",
        )),
        KeyCheck::Forbidden => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this API key lacks the scope for this call",
        )),
    }
}

pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

fn room_key(tenant: Option<&str>, room: &str) -> Result<RoomKey, ApiError> {
    let name = RoomName::parse(room)
        .map_err(|e| ApiError::bad_request(format!("room `{}`: {e}", shorten(room))))?;
    Ok(RoomKey::new(Tenant::from_option(tenant), name))
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn check_event(event: &str) -> Result<(), ApiError> {
    if event.is_empty() || event.len() > 255 {
        return Err(ApiError::bad_request("`event` must be 1 to 255 bytes"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody {
    room: String,
    event: String,
    data: Box<RawValue>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    exclude_connection: Option<String>,
}

/// Checks a publish body (shared by the HTTP API and the ingest stream).
pub(crate) fn publish_input(b: PublishBody) -> Result<PublishInput, ApiError> {
    check_event(&b.event)?;
    let key = room_key(b.tenant.as_deref(), &b.room)?;
    if b.idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 255)
    {
        return Err(ApiError::bad_request(
            "`idempotency_key` must be 1 to 255 bytes",
        ));
    }
    Ok(PublishInput {
        tenant: key.tenant,
        room: b.room,
        event: b.event,
        data: b.data,
        idempotency_key: b.idempotency_key,
        exclude_connection: b.exclude_connection,
    })
}

/// Parses and checks a publish body given as JSON text.
pub(crate) fn parse_publish(json: &[u8]) -> Result<PublishInput, ApiError> {
    publish_input(
        serde_json::from_slice(json)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?,
    )
}

/// `POST /api/v1/publish`
pub(crate) async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Publish)?;
    let input = publish_input(parse_body(&body)?)?;
    let room = input.room.clone();
    let outcome = app.node.publish(input).await?;
    Ok(Json(json!({
        "room": room,
        "epoch": outcome.position.epoch,
        "offset": outcome.position.offset,
        "duplicate": outcome.duplicate,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BroadcastBody {
    rooms: Vec<String>,
    event: String,
    data: Box<RawValue>,
    #[serde(default)]
    tenant: Option<String>,
}

/// `POST /api/v1/broadcast`
pub(crate) async fn broadcast(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Publish)?;
    let b: BroadcastBody = parse_body(&body)?;
    check_event(&b.event)?;
    if b.rooms.is_empty() || b.rooms.len() > MAX_BROADCAST_ROOMS {
        return Err(ApiError::bad_request(format!(
            "`rooms` must list 1 to {MAX_BROADCAST_ROOMS} rooms"
        )));
    }
    // Validate every room before publishing to any, so a bad name cannot
    // leave a broadcast half done.
    let keys = b
        .rooms
        .iter()
        .map(|r| room_key(b.tenant.as_deref(), r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(keys.len());
    for key in keys {
        let outcome = app
            .node
            .publish(PublishInput {
                tenant: key.tenant.clone(),
                room: key.name.to_string(),
                event: b.event.clone(),
                data: b.data.clone(),
                idempotency_key: None,
                exclude_connection: None,
            })
            .await?;
        results.push(json!({
            "room": key.name.as_str(),
            "epoch": outcome.position.epoch,
            "offset": outcome.position.offset,
        }));
    }
    Ok(Json(json!({ "results": results })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct TenantQuery {
    tenant: Option<String>,
}

/// `POST /api/v1/users/{user_id}/disconnect`
pub(crate) async fn disconnect_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Admin)?;
    let n = app
        .node
        .disconnect_user(&Tenant::from_option(q.tenant.as_deref()), &user_id)
        .await?;
    Ok(Json(json!({"user_id": user_id, "disconnected": n})).into_response())
}

/// `GET /api/v1/users/{user_id}/connections`
pub(crate) async fn user_connections(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Admin)?;
    let conns = app
        .node
        .user_connections(&Tenant::from_option(q.tenant.as_deref()), &user_id)
        .await?;
    Ok(Json(json!({"user_id": user_id, "connections": conns})).into_response())
}

/// `GET /api/v1/rooms/{room}/presence`
pub(crate) async fn presence(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Admin)?;
    let key = room_key(q.tenant.as_deref(), &room)?;
    let members = app.node.presence(&key).await?;
    Ok(Json(json!({"room": key.name.as_str(), "members": members})).into_response())
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    tenant: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/rooms/{room}/history`
pub(crate) async fn history(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Admin)?;
    let key = room_key(q.tenant.as_deref(), &room)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_HISTORY_LIMIT);
    let page = app.node.history(&key, q.since.unwrap_or(0), limit).await?;
    let epoch_matches = q.epoch.as_deref().is_none_or(|e| e == page.position.epoch);
    let events: Vec<Box<RawValue>> = if epoch_matches {
        page.publications
            .iter()
            .filter_map(|p| {
                let bytes = p.encode();
                String::from_utf8(bytes.to_vec())
                    .ok()
                    .and_then(|s| RawValue::from_string(s).ok())
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Json(json!({
        "room": key.name.as_str(),
        "epoch": page.position.epoch,
        "offset": page.position.offset,
        "complete": epoch_matches && page.complete,
        "events": events,
    }))
    .into_response())
}

/// `GET /api/v1/stats`
pub(crate) async fn stats(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Admin)?;
    Ok(Json(app.node.stats().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
}

/// Longest token lifetime the API mints.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// `POST /api/v1/tokens`
pub(crate) async fn mint_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&app, &headers, Scope::Admin)?;
    let b: TokenBody = parse_body(&body)?;
    let Some(minter) = &app.minter else {
        return Err(ApiError::bad_request(
            "minting tokens needs auth.hs256_secret; this node only verifies public keys",
        ));
    };
    let ttl = match &b.ttl {
        None => Duration::from_secs(3600),
        Some(t) => crate::config::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?,
    };
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::bad_request("ttl must be between 1s and 30 days"));
    }
    let minted = minter
        .mint(&MintRequest {
            sub: b.sub,
            roles: b.roles,
            tenant: b.tenant,
            ttl,
            claims: b.claims,
        })
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({"token": minted.token, "expires_at": minted.expires_at})).into_response())
}
