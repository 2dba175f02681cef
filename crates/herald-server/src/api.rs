//! The HTTP API of PROTOCOL.md 2 and 5.

use crate::audit;
use crate::error::ApiError;
use crate::extract::{Admin, ApiKey, JsonBody, Publish};
use crate::publish_trace;
use crate::request_id::RequestId;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::MintRequest;
use herald_core::{RoomKey, RoomName, Tenant};
use herald_node::PublishInput;
use herald_protocol::ErrorCode;
use herald_telemetry::PublishSource;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use std::time::Duration;

pub(crate) use crate::extract::bearer;

pub(crate) mod direct;

/// Most rooms one broadcast may name.
const MAX_BROADCAST_ROOMS: usize = 1000;
/// Most events one history request returns.
const MAX_HISTORY_LIMIT: usize = 1000;
/// Deepest nesting of arrays and objects `data` may have. Every frame and
/// stored entry wraps `data` in one more object, and common JSON parsers
/// stop at 128 levels (serde_json among them): deeper data could be
/// published but not read back by such a client.
const MAX_DATA_DEPTH: usize = 100;

fn tenant(name: Option<&str>) -> Result<Tenant, ApiError> {
    Tenant::parse(name).map_err(|e| ApiError::bad_request(format!("`tenant`: {e}")))
}

fn room_key(tenant: Option<&str>, room: &str) -> Result<RoomKey, ApiError> {
    let name = RoomName::parse(room)
        .map_err(|e| ApiError::bad_request(format!("room `{}`: {e}", shorten(room))))?;
    Ok(RoomKey::new(self::tenant(tenant)?, name))
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

fn check_data(data: &RawValue) -> Result<(), ApiError> {
    let depth = nesting_depth(data.get());
    if depth > MAX_DATA_DEPTH {
        return Err(ApiError::bad_request(format!(
            "`data` nests arrays and objects {depth} levels deep; at most {MAX_DATA_DEPTH} are allowed"
        )));
    }
    Ok(())
}

/// Deepest nesting of arrays and objects in `json`, which is valid JSON
/// text (serde_json checked it): brackets inside strings do not count.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
    #[serde(default)]
    critical: bool,
    #[serde(default)]
    conflation_key: Option<String>,
}

/// Checks a publisher's `conflation_key`, naming the field.
fn check_conflation_key(key: Option<&str>) -> Result<(), ApiError> {
    match key.map(herald_core::priority::check_conflation_key) {
        Some(Err(_)) => Err(ApiError::bad_request(format!(
            "`conflation_key` must be 1 to {} bytes",
            herald_core::priority::MAX_CONFLATION_KEY_BYTES
        ))),
        _ => Ok(()),
    }
}

/// Checks a publish body (shared by the HTTP API and the ingest stream).
pub(crate) fn publish_input(b: PublishBody) -> Result<PublishInput, ApiError> {
    check_event(&b.event)?;
    check_data(&b.data)?;
    let key = room_key(b.tenant.as_deref(), &b.room)?;
    if b.idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 255)
    {
        return Err(ApiError::bad_request(
            "`idempotency_key` must be 1 to 255 bytes",
        ));
    }
    check_conflation_key(b.conflation_key.as_deref())?;
    Ok(PublishInput {
        tenant: key.tenant,
        room: b.room,
        event: b.event,
        data: b.data,
        idempotency_key: b.idempotency_key,
        exclude_connection: b.exclude_connection,
        critical: b.critical,
        conflation_key: b.conflation_key,
    })
}

/// Parses and checks a publish body given as JSON text.
pub(crate) fn parse_publish(json: &[u8]) -> Result<PublishInput, ApiError> {
    publish_input(crate::extract::parse_json(json)?)
}

/// `POST /api/v1/publish`; a `traceparent` header is continued when
/// tracing is on.
pub(crate) async fn publish(
    key: ApiKey<Publish>,
    request_id: RequestId,
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Response, ApiError> {
    let input = publish_input(body)?;
    let room = input.room.clone();
    let parent = publish_trace::traceparent(&headers);
    let outcome = publish_trace::publish(
        &app.node,
        input,
        parent,
        PublishSource::Http,
        Some(&request_id),
    )
    .await?;
    tracing::debug!(
        request_id = request_id.as_str(),
        api_key = key.name(),
        room = room.as_str(),
        offset = outcome.position.offset,
        duplicate = outcome.duplicate,
        "published"
    );
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
    #[serde(default)]
    critical: bool,
    #[serde(default)]
    conflation_key: Option<String>,
}

/// `POST /api/v1/broadcast`: one `publish` span (when traced) with a
/// `broker.publish` span per room.
pub(crate) async fn broadcast(
    key: ApiKey<Publish>,
    request_id: RequestId,
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<BroadcastBody>,
) -> Result<Response, ApiError> {
    check_event(&b.event)?;
    check_data(&b.data)?;
    check_conflation_key(b.conflation_key.as_deref())?;
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
    let input = |key: &RoomKey| PublishInput {
        tenant: key.tenant.clone(),
        room: key.name.to_string(),
        event: b.event.clone(),
        data: b.data.clone(),
        idempotency_key: None,
        exclude_connection: None,
        critical: b.critical,
        conflation_key: b.conflation_key.clone(),
    };
    let span = publish_trace::start(
        &app.node,
        publish_trace::traceparent(&headers),
        PublishSource::Broadcast,
        &input(&keys[0]),
        None,
        Some(&request_id),
    );
    let mut results = Vec::with_capacity(keys.len());
    for (i, room) in keys.iter().enumerate() {
        let published = match &span {
            Some(span) => publish_trace::broker_hop(&app.node, span, input(room)).await,
            None => app.node.publish(input(room)).await,
        };
        match published {
            Ok(outcome) => results.push(json!({
                "room": room.name.as_str(),
                "epoch": outcome.position.epoch,
                "offset": outcome.position.offset,
            })),
            Err(e) => {
                if let Some(span) = span {
                    publish_trace::end(span, Err(&e));
                }
                tracing::warn!(room = %room.name, published = i, error = %e, "broadcast stopped at a failed room");
                return Ok(partial_broadcast(ApiError::from(e), results, &keys[i..]));
            }
        }
    }
    if let Some(span) = span {
        publish_trace::end(span, Ok(results.len()));
    }
    tracing::debug!(
        request_id = request_id.as_str(),
        api_key = key.name(),
        rooms = results.len(),
        event = b.event.as_str(),
        "broadcast"
    );
    Ok(Json(json!({ "results": results })).into_response())
}

/// A broadcast that stopped at a failed room: the error's status and
/// `error`, with the rooms published before it (`results`, which stay
/// published) and those not published (`unpublished`, the failed one
/// first), so the caller retries only those. It stops rather than going
/// on, as the next rooms would most likely wait out the same broker
/// failure one after another.
fn partial_broadcast(
    error: ApiError,
    results: Vec<serde_json::Value>,
    unpublished: &[RoomKey],
) -> Response {
    let mut fields = serde_json::Map::new();
    fields.insert("results".into(), results.into());
    fields.insert(
        "unpublished".into(),
        unpublished
            .iter()
            .map(|k| serde_json::Value::from(k.name.as_str()))
            .collect(),
    );
    error.into_response_with(fields)
}

#[derive(Deserialize)]
pub(crate) struct TenantQuery {
    tenant: Option<String>,
}

/// `POST /api/v1/users/{user_id}/disconnect`
pub(crate) async fn disconnect_user(
    _: ApiKey<Admin>,
    State(app): State<AppState>,
    Path(user_id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let n = app
        .node
        .disconnect_user(&tenant(q.tenant.as_deref())?, &user_id)
        .await?;
    Ok(Json(json!({"user_id": user_id, "disconnected": n})).into_response())
}

/// `GET /api/v1/users/{user_id}/connections`
pub(crate) async fn user_connections(
    _: ApiKey<Admin>,
    State(app): State<AppState>,
    Path(user_id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let conns = app
        .node
        .user_connections(&tenant(q.tenant.as_deref())?, &user_id)
        .await?;
    Ok(Json(json!({"user_id": user_id, "connections": conns})).into_response())
}

/// `GET /api/v1/rooms/{room}/presence`
pub(crate) async fn presence(
    _: ApiKey<Admin>,
    State(app): State<AppState>,
    Path(room): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
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

/// The fields of a history answer before `events`.
#[derive(Serialize)]
struct HistoryHead<'a> {
    room: &'a str,
    epoch: &'a str,
    offset: u64,
    complete: bool,
}

/// `GET /api/v1/rooms/{room}/history`
pub(crate) async fn history(
    _: ApiKey<Admin>,
    State(app): State<AppState>,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let key = room_key(q.tenant.as_deref(), &room)?;
    let limit = match q.limit {
        None => 100,
        Some(0) => {
            return Err(ApiError::bad_request(format!(
                "`limit` must be 1 to {MAX_HISTORY_LIMIT}"
            )))
        }
        Some(n) => n.min(MAX_HISTORY_LIMIT),
    };
    let page = app.node.history(&key, q.since.unwrap_or(0), limit).await?;
    let epoch_matches = q.epoch.as_deref().is_none_or(|e| e == page.position.epoch);
    let head = HistoryHead {
        room: key.name.as_str(),
        epoch: &page.position.epoch,
        offset: page.position.offset,
        complete: epoch_matches && page.complete,
    };
    let frames = if epoch_matches {
        page.publications.iter().map(|p| p.encode()).collect()
    } else {
        Vec::new()
    };
    let body = history_body(&head, &frames).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("cannot encode the history answer: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The history answer: `head`'s fields, then `events` spliced from the
/// stored frames, which are JSON already. Parsing them again would be
/// wasted work and could fail on data nested deeper than the parser
/// allows (issue #12).
fn history_body(head: &HistoryHead<'_>, frames: &[bytes::Bytes]) -> serde_json::Result<Vec<u8>> {
    let mut body = serde_json::to_vec(head)?;
    // `head` serializes as an object: replace its closing brace.
    body.pop();
    let size: usize = frames.iter().map(|f| f.len() + 1).sum();
    body.reserve(size + 16);
    body.extend_from_slice(b",\"events\":[");
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(frame);
    }
    body.extend_from_slice(b"]}");
    Ok(body)
}

/// `GET /api/v1/stats`
pub(crate) async fn stats(
    _: ApiKey<Admin>,
    State(app): State<AppState>,
) -> Result<Response, ApiError> {
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
    _: ApiKey<Admin>,
    note: audit::Note,
    State(app): State<AppState>,
    JsonBody(b): JsonBody<TokenBody>,
) -> Result<Response, ApiError> {
    // The audit line names whom the token is for.
    note.set_resource("user", &b.sub);
    if let Some(t) = &b.tenant {
        note.set_tenant(t);
    }
    // The same rule verification applies, so a minted token verifies.
    tenant(b.tenant.as_deref())?;
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

#[cfg(test)]
mod tests {
    use super::{history_body, nesting_depth, HistoryHead};

    #[test]
    fn nesting_depth_counts_arrays_and_objects_outside_strings() {
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(r#"["[[[\"]]]{{", [2]]"#), 2);
        assert_eq!(nesting_depth(r#"{"s":"\\"}"#), 1);
    }

    #[test]
    fn history_body_splices_frames_of_any_depth_verbatim() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let frames = [
            bytes::Bytes::from(format!(r#"{{"type":"event","data":{deep}}}"#)),
            bytes::Bytes::from_static(br#"{"type":"event","data":2}"#),
        ];
        let head = HistoryHead {
            room: "chat:\"x\"",
            epoch: "e",
            offset: 2,
            complete: true,
        };
        let body = String::from_utf8(history_body(&head, &frames).expect("body")).expect("utf-8");
        assert_eq!(
            body,
            format!(
                r#"{{"room":"chat:\"x\"","epoch":"e","offset":2,"complete":true,"events":[{{"type":"event","data":{deep}}},{{"type":"event","data":2}}]}}"#
            )
        );
        let empty = String::from_utf8(history_body(&head, &[]).expect("body")).expect("utf-8");
        let parsed: serde_json::Value = serde_json::from_str(&empty).expect("JSON");
        assert_eq!(parsed["events"], serde_json::json!([]));
    }
}
