//! The Engine.IO 4 transport under Socket.IO: HTTP long polling, WebSocket,
//! and the upgrade from one to the other. The Socket.IO layer sees one
//! [`EioSocket`] per Engine.IO session and never which transport carries it.
//!
//! The handshake (a GET without `sid`) reserves the connection's slots as
//! `/ws` does, answers the open packet and spawns the Socket.IO layer's
//! task. Polling sessions live in a per-node table by `sid` ([`table`]),
//! reached by the GETs and POSTs of [`polling`]; a WebSocket session is its
//! socket ([`websocket`]); [`upgrade`] moves a polling session to a
//! WebSocket. Timings come from the limits: `pingInterval` is
//! `limits.heartbeat_interval`, `pingTimeout` is `limits.stale_timeout`
//! minus it (at least 1 s), `maxPayload` is `limits.max_message_bytes`.

mod polling;
mod socket;
mod table;
mod upgrade;
mod websocket;

pub(crate) use socket::EioSocket;
pub(crate) use websocket::{frame_len, write_packets};

use crate::credential::CredentialSource;
use crate::extract::bearer;
use crate::ops::PeerIp;
use crate::ws::WsUpgrade;
use crate::AppState;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use herald_socketio::engineio::{Handshake, RequestError as EioRequestError};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use table::{PollShared, Table};
use tokio::time::Instant;

/// The timings and bounds of the Engine.IO sessions of a node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// `pingInterval`.
    ping_interval: Duration,
    /// `pingTimeout`.
    ping_timeout: Duration,
    /// `maxPayload`: largest POST body or WebSocket message taken.
    max_payload: usize,
    /// Bytes of packets a polling session holds for its next GET before
    /// `send` waits.
    send_bound: usize,
    /// How long a WebSocket write may make no progress.
    stall: Duration,
}

impl Config {
    fn of(limits: &herald_node::Limits) -> Self {
        let ping_interval = limits.heartbeat_interval;
        let ping_timeout = limits
            .stale_timeout
            .saturating_sub(ping_interval)
            .max(Duration::from_secs(1));
        Self {
            ping_interval,
            ping_timeout,
            max_payload: limits.max_message_bytes,
            send_bound: limits.send_queue_bytes,
            stall: limits.stale_timeout,
        }
    }

    fn handshake(&self, sid: &str, upgrades: Vec<&'static str>) -> Bytes {
        Handshake {
            sid: sid.to_owned(),
            upgrades,
            ping_interval: self.ping_interval.as_millis() as u64,
            ping_timeout: self.ping_timeout.as_millis() as u64,
            max_payload: self.max_payload as u64,
        }
        .encode()
    }
}

/// The routes at `path` (both `/socket.io/` and `/socket.io`): GET/POST
/// polling, GET WebSocket upgrade.
pub(crate) fn routes(path: &str) -> axum::Router<AppState> {
    // One table per router, that is per node (tests run several nodes in
    // one process).
    let table = Arc::new(Table::default());
    let handler = move |State(app): State<AppState>, request: Request| {
        let table = table.clone();
        async move {
            // Under `server.allowed_origins`, a page not allowed gets 403
            // (no CORS headers) for its handshake, polls, preflight and
            // WebSocket upgrade alike.
            if let Some(refusal) = app.origins.refusal(request.headers()) {
                return refusal;
            }
            cors(handle(table, app, request).await)
        }
    };
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let with_slash = format!("{trimmed}/");
    let mut router = axum::Router::new().route(trimmed, any(handler.clone()));
    if with_slash != trimmed && with_slash != "//" {
        router = router.route(&with_slash, any(handler));
    }
    router
}

/// The query of every Engine.IO request.
#[derive(Deserialize)]
struct EioQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    token: Option<String>,
}

/// A response, and the request's `Origin` for the CORS headers.
struct Answer(Response, Option<HeaderValue>);

/// Adds the CORS headers, so browser clients on another origin can poll:
/// the request's `Origin` echoed (with credentials allowed), else `*`.
/// Under `server.allowed_origins` only allowed origins get this far.
fn cors(answer: Answer) -> Response {
    let Answer(mut response, origin) = answer;
    let headers = response.headers_mut();
    match origin {
        Some(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    response
}

/// An Engine.IO error answer: `{"code":N,"message":"..."}`.
fn error_response(error: EioRequestError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        error.body(),
    )
        .into_response()
}

/// Every Engine.IO request: the handshake, polling, the WebSocket and its
/// upgrade probe, and the CORS preflight.
async fn handle(table: Arc<Table>, app: AppState, request: Request) -> Answer {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let response = route(&table, app, request).await;
    Answer(response, origin)
}

async fn route(table: &Arc<Table>, app: AppState, request: Request) -> Response {
    if request.method() == Method::OPTIONS {
        return preflight(request.headers());
    }
    let Ok(Query(query)) = Query::<EioQuery>::try_from_uri(request.uri()) else {
        return error_response(EioRequestError::BadRequest);
    };
    if query.eio.as_deref() != Some("4") {
        return error_response(EioRequestError::UnsupportedProtocolVersion);
    }
    let websocket = match query.transport.as_deref() {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return error_response(EioRequestError::TransportUnknown),
    };
    let method = request.method().clone();
    match (query.sid.as_deref(), websocket, method) {
        (None, _, m) if m != Method::GET => error_response(EioRequestError::BadHandshakeMethod),
        (None, websocket, _) => {
            let token = bearer(request.headers()).map(str::to_owned).or(query.token);
            handshake(table, app, request, websocket, token).await
        }
        (Some(sid), false, Method::GET) => polling::get(table, sid).await,
        (Some(sid), false, Method::POST) => {
            let body_timeout = app.body_timeout;
            let body = request.into_body();
            polling::post(table, sid, body, body_timeout).await
        }
        (Some(sid), true, Method::GET) => match table.get(sid) {
            Some(shared) => probe(app, shared, request).await,
            None => error_response(EioRequestError::UnknownSid),
        },
        _ => error_response(EioRequestError::BadRequest),
    }
}

/// The answer to a CORS preflight.
fn preflight(headers: &HeaderMap) -> Response {
    let allow_headers = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type, authorization"));
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            ),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            ),
        ],
    )
        .into_response()
}

/// A new session id: 120 random bits, URL-safe.
fn new_sid() -> Box<str> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = rand::random::<u128>();
    (0..20)
        .map(|i| ALPHABET[((bits >> (6 * i)) & 63) as usize] as char)
        .collect::<String>()
        .into_boxed_str()
}

/// A new session: slots reserved as for `/ws`, then the open packet (the
/// GET's body on polling, the first frame on WebSocket), then the
/// Socket.IO layer's task.
async fn handshake(
    table: &Arc<Table>,
    app: AppState,
    request: Request,
    websocket: bool,
    token: Option<String>,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let Ok(PeerIp(remote_ip)) = PeerIp::from_request_parts(&mut parts, &()).await;
    let credential = CredentialSource::of(&parts, &app.forward_headers);
    let upgrade = if websocket {
        match WsUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => Some(upgrade),
            Err(refusal) => return refusal.into_response(),
        }
    } else {
        None
    };
    let slot = match crate::ops::reserve_socket(&app, remote_ip) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let pending = match crate::ops::reserve_pending(&app) {
        Ok(pending) => pending,
        Err(refusal) => return refusal.into_response(),
    };
    let config = Config::of(app.node.limits());
    let sid = new_sid();
    let tasks = app.node.tasks().clone();
    let Some(upgrade) = upgrade else {
        let shared = PollShared::register(table, sid.clone(), config);
        let open = config.handshake(&sid, vec!["websocket"]);
        let start = Box::new(EioStart {
            app,
            socket: EioSocket::polling(shared),
            token,
            credential,
            remote_ip,
            slot,
            pending,
        });
        tasks.spawn(crate::socketio::run(start));
        return polling::packets_response(open);
    };
    let accept = upgrade.accept.clone();
    let deflate = crate::ws::deflate::negotiate(&parts.headers, &app.compression);
    let open = Box::new(WsOpen {
        deflate: deflate.as_ref().map(|(d, _)| *d),
        on_upgrade: upgrade.on_upgrade,
        deadline: Instant::now() + app.node.limits().auth_timeout,
        config,
        sid,
        start: EioStartParts {
            app,
            token,
            credential,
            remote_ip,
            slot,
            pending,
        },
    });
    tasks.spawn(websocket_session(open));
    switching_protocols(accept, deflate.map(|(_, answer)| answer))
}

/// What a WebSocket session starts from, boxed (see [`websocket_session`]).
struct WsOpen {
    /// What permessage-deflate negotiated, if it was.
    deflate: Option<crate::ws::deflate::Deflate>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    deadline: Instant,
    config: Config,
    sid: Box<str>,
    start: EioStartParts,
}

/// An [`EioStart`] but for its socket.
struct EioStartParts {
    app: AppState,
    token: Option<String>,
    credential: CredentialSource,
    remote_ip: Option<std::net::IpAddr>,
    slot: herald_node::SocketSlot,
    pending: herald_node::PendingSlot,
}

/// A session on a WebSocket from its start: the socket taken back from
/// hyper and the open packet written (boxed: that phase's state would
/// otherwise stay in every idle connection's task), then the Socket.IO
/// layer.
async fn websocket_session(open: Box<WsOpen>) {
    let Some(start) = Box::pin(open_websocket(open)).await else {
        return;
    };
    crate::socketio::run(start).await;
}

/// Takes the socket and writes the open packet, by the handshake's
/// deadline.
async fn open_websocket(open: Box<WsOpen>) -> Option<Box<EioStart>> {
    let WsOpen {
        deflate,
        on_upgrade,
        deadline,
        config,
        sid,
        start,
    } = *open;
    let socket = websocket::take_socket(on_upgrade, deadline, config.max_payload, deflate).await?;
    let packet = websocket::text_frame(&config.handshake(&sid, Vec::new()));
    let written = tokio::time::timeout_at(deadline, socket.write_all(&packet)).await;
    if !matches!(written, Ok(Ok(()))) {
        return None;
    }
    let link = websocket::WsLink::new(socket, config.stall);
    let EioStartParts {
        app,
        token,
        credential,
        remote_ip,
        slot,
        pending,
    } = start;
    Some(Box::new(EioStart {
        app,
        socket: EioSocket::websocket(sid, link),
        token,
        credential,
        remote_ip,
        slot,
        pending,
    }))
}

/// A WebSocket request for a polling session: the upgrade probe.
async fn probe(app: AppState, shared: Arc<PollShared>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WsUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal.into_response(),
    };
    let cancel = app.node.cancellation();
    let deflate = crate::ws::deflate::negotiate(&parts.headers, &app.compression);
    app.node.tasks().spawn(upgrade::probe(
        shared,
        upgrade.on_upgrade,
        cancel,
        deflate.as_ref().map(|(d, _)| *d),
    ));
    switching_protocols(upgrade.accept, deflate.map(|(_, answer)| answer))
}

/// The 101 answer to a WebSocket upgrade, with the permessage-deflate
/// answer when it was negotiated.
fn switching_protocols(accept: HeaderValue, extension: Option<HeaderValue>) -> Response {
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response();
    if let Some(extension) = extension {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
    }
    response
}

/// Handed to the Socket.IO layer for each new Engine.IO session, once the
/// Engine.IO handshake (open packet) has been sent. The engine spawns
/// `crate::socketio::run(start)` on `app.node.tasks()`.
#[allow(dead_code)] // Read by the Socket.IO layer.
pub(crate) struct EioStart {
    /// The node's state.
    pub(crate) app: AppState,
    /// The Engine.IO session.
    pub(crate) socket: EioSocket,
    /// `Authorization: Bearer` or `?token=` of the handshake request, if any.
    pub(crate) token: Option<String>,
    /// The handshake request's address and forwarded headers, for the
    /// connect proxy.
    pub(crate) credential: CredentialSource,
    /// The client's IP address, when known.
    pub(crate) remote_ip: Option<std::net::IpAddr>,
    /// Reserved at the handshake (crate::ops::reserve_socket /
    /// reserve_pending): the handshake is refused with the same HTTP errors
    /// as /ws when they cannot be taken.
    pub(crate) slot: herald_node::SocketSlot,
    /// The place among unauthenticated sockets, reserved at the handshake.
    pub(crate) pending: herald_node::PendingSlot,
}

/// What the client sent, or how the session ended.
#[derive(Debug)]
#[allow(dead_code)] // Read by the Socket.IO layer.
pub(crate) enum EioEvent {
    /// A message packet (type 4) from the client: its UTF-8 text without
    /// the leading `4`.
    Message(Bytes),
    /// A binary message (binary WebSocket frame, or `b`-prefixed base64 on
    /// polling).
    Binary(Bytes),
    /// The client's pong (`3`) to our ping.
    Pong,
    /// The Engine.IO session ended: close packet, transport error or close,
    /// a polling client that stopped polling (no GET for pingInterval +
    /// pingTimeout), payload over maxPayload. For logs.
    Closed(&'static str),
}

/// One Engine.IO packet to send: `head` then `tail` (e.g. `42[...` +
/// `,"<token>"]`), written without copying `head` on WebSocket (one frame,
/// vectored write).
#[derive(Debug, Clone)]
pub(crate) struct OutPacket {
    /// The packet's first bytes, starting with its type digit.
    pub(crate) head: Bytes,
    /// The rest of the packet, if any.
    pub(crate) tail: Option<Bytes>,
    /// `head` and `tail` are a permessage-deflate message (RSV1): only
    /// ever made for a WebSocket that negotiated it.
    pub(crate) compressed: bool,
}

/// The Engine.IO session is gone.
#[derive(Debug)]
pub(crate) struct EioClosed;

impl OutPacket {
    /// Its bytes on the wire (head and tail).
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, Bytes::len)
    }
}
