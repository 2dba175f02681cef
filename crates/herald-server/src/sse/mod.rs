//! The Server-Sent Events transport (PROTOCOL.md 6): the same session and
//! frames as WebSocket, one-way. Each SSE message has `event:` set to the
//! frame type, `data:` the frame JSON, and an `id:` holding the position of
//! every room of the stream (see [`crate::resume`]).

use crate::api::bearer;
use crate::credential::{self, CredentialSource};
use crate::error::ApiError;
use crate::http::ConnectionHandle;
use crate::ops::PeerIp;
use crate::resume::{last_event_id, Positions, Tracker};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream::{self, Stream};
use herald_core::{RoomName, Rule};
use herald_node::{metrics, Connection, OpenOptions, Outbound, Session, SocketSlot, Transport};
use herald_protocol::{CloseCode, ErrorCode};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Comment heartbeat period, so proxies keep the stream open.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Reconnect delay advised to `EventSource`.
const RETRY: Duration = Duration::from_secs(2);
/// Most patterns in `events`.
const MAX_PATTERNS: usize = 64;

#[derive(Deserialize)]
pub(crate) struct SseQuery {
    token: Option<String>,
    rooms: Option<String>,
    events: Option<String>,
    /// For clients that cannot set headers on reconnect (an extension).
    last_event_id: Option<String>,
}

fn bad_request(message: String) -> Response {
    ApiError::bad_request(message).into_response()
}

/// The answer to a session the node refused to open, as `/ws` answers it:
/// a cluster registry outage (`TryAgainLater`) is 503 `unavailable`, worth
/// retrying shortly; anything else is the per-user connection limit.
fn open_refusal(code: CloseCode) -> Response {
    let mut refusal = if code == CloseCode::TryAgainLater {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the cluster registry is unreachable; retry shortly",
        )
        .into_response()
    } else {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded,
            "this user is at limits.max_connections_per_user",
        )
        .into_response()
    };
    refusal
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    refusal
}

fn split_list(text: Option<&str>) -> Vec<&str> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

/// `GET /sse`
pub(crate) async fn stream(
    State(app): State<AppState>,
    handle: Option<Extension<ConnectionHandle>>,
    headers: HeaderMap,
    Query(q): Query<SseQuery>,
    PeerIp(ip): PeerIp,
    source: CredentialSource,
) -> Response {
    if let Some(refusal) = app.origins.refusal(&headers) {
        return refusal;
    }
    let slot = match crate::ops::reserve_socket(&app, ip) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(token) = bearer(&headers).map(str::to_owned).or(q.token) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "send the token as Authorization: Bearer <jwt> or ?token=<jwt>",
        )
        .into_response();
    };
    let verified = match app
        .node
        .verify_credential(&token, &source.context("sse"))
        .await
    {
        Ok(v) => v,
        Err(e) => return credential::refusal(e),
    };
    let identity = verified.identity;
    if !app.node.admit_open(&identity) {
        let mut refusal = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many streams opened by this user; limits.messages_per_second and limits.burst apply to SSE opens",
        )
        .into_response();
        refusal
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return refusal;
    }
    // Every check that can fail is done before the stream opens, so a bad
    // request gets an HTTP status instead of a stream that closes at once.
    let namespaces = app.node.namespaces();
    let mut rooms = Vec::new();
    for raw in split_list(q.rooms.as_deref()) {
        let room = match RoomName::parse(raw) {
            Ok(r) => r,
            Err(e) => {
                return bad_request(format!(
                    "rooms: `{}`: {e}",
                    raw.chars().take(64).collect::<String>()
                ))
            }
        };
        // A `proxy` rule is the backend's to decide, when the session
        // joins the room below.
        if namespaces.for_room(&room).join != Rule::Proxy && !namespaces.can_join(&identity, &room)
        {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("not allowed to join room `{room}`"),
            )
            .into_response();
        }
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    let auto = namespaces.auto_join_rooms(&identity);
    // The rooms the connect proxy named are joined at open, with the
    // auto-joined ones (and resumed like them).
    let extra: Vec<RoomName> = verified
        .rooms
        .iter()
        .filter_map(|r| RoomName::parse(r).ok())
        .filter(|r| !auto.contains(r))
        .collect();
    let at_open = |room: &RoomName| auto.contains(room) || extra.contains(room);
    // The backend's rooms are not the client's request: the node joins
    // them within the cap, leaving out those beyond it.
    let total = rooms.iter().filter(|r| !at_open(r)).count() + auto.len();
    let max_rooms = app.node.limits().max_rooms_per_connection;
    if total > max_rooms {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::LimitExceeded,
            format!("{total} rooms requested (auto-joined included); at most {max_rooms} per connection"),
        )
        .into_response();
    }
    // Distinct patterns, as `subscribe` counts them over WebSocket.
    let mut seen = std::collections::HashSet::new();
    let events: Vec<String> = split_list(q.events.as_deref())
        .into_iter()
        .filter(|p| seen.insert(*p))
        .map(str::to_owned)
        .collect();
    if events.len() > MAX_PATTERNS || events.iter().any(|p| p.len() > 255) {
        return bad_request(format!(
            "events: at most {MAX_PATTERNS} patterns of 1 to 255 bytes"
        ));
    }
    let max_patterns = app.node.limits().max_event_patterns;
    if events.len() > max_patterns {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::LimitExceeded,
            format!("events: at most {max_patterns} patterns per connection (limits.max_event_patterns)"),
        )
        .into_response();
    }
    let last_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| "Last-Event-ID is not ASCII".to_owned())
        .map(|h| h.or(q.last_event_id));
    let resume = match last_id.and_then(|id| {
        id.as_deref()
            .map_or(Ok(Positions::new()), last_event_id::parse)
    }) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    if app.node.would_refuse_user(&identity).await {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded,
            "this user is at limits.max_connections_per_user",
        )
        .into_response();
    }
    let options = OpenOptions {
        reply_to: None,
        resume: resume
            .iter()
            .filter(|(room, _)| at_open(room))
            .map(|(r, p)| (r.clone(), p.clone()))
            .collect::<HashMap<_, _>>(),
        announce_rooms: true,
        events: (!events.is_empty()).then_some(events),
        writer: None,
        // Herald JSON: an SSE stream carries text only.
        codec: None,
        rooms: verified.rooms,
    };
    let mut session = match app
        .node
        .open_session(identity, &Transport::SSE, options)
        .await
    {
        Ok(s) => s,
        Err(code) => return open_refusal(code),
    };
    for room in rooms.iter().filter(|r| !at_open(r)) {
        if let Err(e) = session
            .join_room(room.as_str(), resume.get(room).cloned())
            .await
        {
            session.end("join_failed").await;
            return ApiError::from(e).into_response();
        }
    }
    let conn = session.connection().clone();
    tracing::info!(
        connection_id = %conn.id, user_id = %conn.user_id, tenant = conn.tenant.as_str(),
        transport = "sse", "connection opened"
    );
    let session: SessionSlot = Arc::new(Mutex::new(Some(session)));
    spawn_slow_reader_watch(&app, &conn, &session, handle.map(|Extension(h)| h));
    let app_origins = app.origins.clone();
    let state = StreamState {
        conn,
        session,
        app,
        _slot: slot,
        ready: VecDeque::new(),
        batch: Vec::new(),
        // Where the client stands in each of this stream's rooms: a room
        // that recovers keeps this until its replayed events move it on.
        positions: Tracker::resuming(
            resume
                .into_iter()
                .filter(|(room, _)| rooms.contains(room) || at_open(room))
                .collect(),
        ),
        first: true,
        done: false,
        started: Instant::now(),
    };
    let mut response = Sse::new(events_of(state))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // Browser apps live on other origins: `*`, or the allowed origin
    // under `server.allowed_origins`.
    app_origins.stream_headers(&headers, h);
    response
}

/// Everything one open stream holds. Dropping it (the client went away or
/// the stream ended) ends the session.
struct StreamState {
    conn: Arc<Connection>,
    session: SessionSlot,
    app: AppState,
    _slot: SocketSlot,
    ready: VecDeque<Event>,
    batch: Vec<Outbound>,
    positions: Tracker,
    first: bool,
    done: bool,
    started: Instant,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        let reason = self
            .conn
            .queue
            .closing()
            .map_or("client_closed", CloseCode::reason);
        // Wakes the slow-reader watch so it ends too.
        self.conn.close(CloseCode::Normal);
        let _ = end_session(&self.app, &self.session, &self.conn, reason, self.started);
    }
}

/// The session of one stream, ended by whichever comes first: the stream's
/// end, or the slow-reader watch.
type SessionSlot = Arc<Mutex<Option<Session>>>;

/// How long a closing stream may take to write its `disconnect` before its
/// session is ended without it and its HTTP connection dropped (the same
/// bound as a closing WebSocket's last frames).
const SLOW_READER_GRACE: Duration = Duration::from_secs(2);

/// Ends the session unless that was done already; returns whether this
/// call ended it.
fn end_session(
    app: &AppState,
    slot: &SessionSlot,
    conn: &Arc<Connection>,
    reason: &'static str,
    started: Instant,
) -> bool {
    let Some(session) = slot.lock().take() else {
        return false;
    };
    let conn = conn.clone();
    let duration_ms = started.elapsed().as_millis() as u64;
    app.node.tasks().spawn(async move {
        session.end(reason).await;
        tracing::info!(
            connection_id = %conn.id, user_id = %conn.user_id, reason, duration_ms,
            "connection closed"
        );
    });
    true
}

/// A reader that stops reading blocks the HTTP body writer, so the stream
/// is never polled again and cannot end itself. Once the connection is
/// closing (a 4011 overflow, a kick, a drain), this watch gives the stream
/// [`SLOW_READER_GRACE`] to finish, then ends the session anyway (it leaves
/// its rooms and frees its per-user slot) and drops the HTTP connection,
/// which closes the socket and frees the node's connection slot: a peer
/// advertising a zero window would otherwise hold both forever.
fn spawn_slow_reader_watch(
    app: &AppState,
    conn: &Arc<Connection>,
    slot: &SessionSlot,
    http: Option<ConnectionHandle>,
) {
    let (app2, conn, slot) = (app.clone(), conn.clone(), slot.clone());
    let cancel = app.node.cancellation();
    let started = Instant::now();
    app.node.tasks().spawn(async move {
        let code = tokio::select! {
            code = conn.queue.closed() => code,
            _ = cancel.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep(SLOW_READER_GRACE) => {}
            _ = cancel.cancelled() => return,
        }
        // A stream that ended by itself took the session already, and its
        // HTTP connection may serve the client's next request: leave it.
        if end_session(&app2, &slot, &conn, code.reason(), started) {
            if let Some(http) = http {
                http.abort();
            }
        }
    });
}

impl StreamState {
    /// Turns one queued frame into an SSE message, tracking positions.
    fn frame_event(&mut self, item: Outbound) -> Option<Event> {
        let Outbound::Frame {
            bytes,
            publication,
            change,
        } = item
        else {
            return None;
        };
        let kind = match &publication {
            Some(p) => {
                if let Some(t) = p.accepted_at {
                    metrics::delivery_latency(t.elapsed());
                }
                self.positions.on_publication(p);
                if p.from.is_some() { "message" } else { "event" }.to_owned()
            }
            None => {
                if let Some(change) = &change {
                    self.positions.on_change(change);
                }
                frame_type(&bytes)?
            }
        };
        // An `event` that is not a room's publication is a direct message:
        // in no stream, so it carries no id and leaves the browser's
        // Last-Event-ID where the rooms' events put it.
        let direct = publication.is_none() && kind == "event";
        let text = String::from_utf8_lossy(&bytes);
        let mut event = Event::default().event(kind).data(text);
        if !direct {
            event = event.id(self.positions.id());
        }
        if self.first {
            event = event.retry(RETRY);
            self.first = false;
        }
        metrics::messages_sent(1);
        Some(event)
    }

    fn disconnect(code: CloseCode) -> Event {
        let frame = herald_node::disconnect_frame(&herald_protocol::HERALD_JSON, code);
        Event::default()
            .event("disconnect")
            .data(String::from_utf8_lossy(&frame))
    }
}

/// The `type` of a Herald JSON control frame, the SSE event's name; `None`
/// when the bytes are not a frame (which the node never produces).
fn frame_type(frame: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Peek>(frame).ok().map(|p| p.kind)
}

fn events_of(state: StreamState) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.ready.pop_front() {
                return Some((Ok(event), st));
            }
            if st.done {
                return None;
            }
            // A recovering join queues its events as the stream drains; a
            // page of stored events is read without holding the session.
            let read = st.session.lock().as_mut().and_then(Session::feed_replay);
            if let Some(read) = read {
                let page = read.run().await;
                if let Some(session) = st.session.lock().as_mut() {
                    session.add_replay_page(page);
                }
                continue;
            }
            let conn = st.conn.clone();
            let closing = conn.queue.next_batch(&mut st.batch).await;
            let batch = std::mem::take(&mut st.batch);
            for item in batch {
                if let Some(e) = st.frame_event(item) {
                    st.ready.push_back(e);
                }
            }
            if let Some(code) = closing {
                st.ready.push_back(StreamState::disconnect(code));
                st.done = true;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::open_refusal;
    use axum::http::{header, StatusCode};
    use herald_protocol::CloseCode;

    async fn code_of(response: axum::response::Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn registry_outage_is_503_unavailable_with_retry_after() {
        let response = open_refusal(CloseCode::TryAgainLater);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(code_of(response).await, "unavailable");
    }

    #[tokio::test]
    async fn user_limit_is_429_limit_exceeded() {
        let response = open_refusal(CloseCode::TooManyConnections);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code_of(response).await, "limit_exceeded");
    }
}
