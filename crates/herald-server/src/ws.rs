//! The WebSocket transport (PROTOCOL.md 3): upgrade checks, the
//! `authenticate` handshake, and one task per connection that reads frames
//! into the session and writes the send queue in batches.

use crate::api::bearer;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use herald_core::Identity;
use herald_node::{metrics, OpenOptions, Outbound, SendQueue, Session, SocketSlot, TransportKind};
use herald_protocol::{
    encode, parse_client_frame, ClientRequest, CloseCode, Disconnect, ErrorCode, RequestId,
    ServerFrame,
};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// Read buffer per connection. tungstenite's 128 KiB default is zero-filled
/// and stays resident (~134 KB per idle connection). Client frames are small
/// requests: 512 B holds a join or a send in one read; a larger frame (an
/// `authenticate` with its token) is still read whole, over more reads.
/// 1 KiB cost 0.5 KiB more per idle connection (docs/benchmarks.md).
const READ_BUFFER: usize = 512;
/// Bytes buffered before a write reaches the socket; a batch is flushed at
/// its end anyway.
const WRITE_BUFFER: usize = 16 * 1024;
/// Frames a socket may send before it authenticates.
const MAX_FRAMES_BEFORE_AUTH: usize = 16;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let slot = match crate::ops::reserve_socket(&app) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let token = bearer(&headers).map(str::to_owned).or(q.token);
    let identity = match token {
        None => None,
        Some(t) => match app.node.verify_token(&t).await {
            Ok(identity) => Some(identity),
            Err(e) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, e.message)
                    .into_response()
            }
        },
    };
    let refused = match &identity {
        Some(i) => app.node.would_refuse_user(i).await,
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
    let max = app.node.limits().max_message_bytes;
    let tasks = app.node.tasks().clone();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let start = Box::new(Start {
                app,
                socket,
                identity,
            });
            tasks.track_future(run(start, slot))
        })
}

/// What a connection starts with. Boxed: an async fn keeps its arguments
/// for its whole life, so a connection's task would carry a second socket
/// and the token's identity while idle.
struct Start {
    app: AppState,
    socket: WebSocket,
    identity: Option<Identity>,
}

/// One WebSocket connection, start to end. Only the socket, the session
/// and the idle loop live in this future for the connection's whole life:
/// opening and ending run boxed, since an async fn's state is as large as
/// its largest phase and every idle connection would carry it (2.6 KB per
/// connection before, 0.7 KB after; docs/benchmarks.md).
async fn run(start: Box<Start>, _slot: SocketSlot) {
    let Start {
        app,
        socket,
        identity,
    } = *start;
    let Some((mut socket, mut session)) = Box::pin(open(app, socket, identity)).await else {
        return;
    };
    let started = Instant::now();
    let reason = pump(&mut socket, &mut session).await;
    Box::pin(finish(session, reason, started)).await;
}

/// Authenticates (unless the upgrade carried the token) and opens the
/// session; `None` when the connection ended instead.
async fn open(
    app: AppState,
    mut socket: WebSocket,
    identity: Option<Identity>,
) -> Option<(WebSocket, Session)> {
    let (identity, reply_to) = match identity {
        Some(i) => (i, None),
        None => await_authenticate(&app, &mut socket).await?,
    };
    let options = OpenOptions {
        reply_to: reply_to.clone(),
        ..OpenOptions::default()
    };
    let opened = app
        .node
        .open_session(identity, TransportKind::Websocket, options)
        .await;
    match opened {
        Ok(session) => {
            let conn = session.connection();
            tracing::info!(
                connection_id = %conn.id, user_id = %conn.user_id, tenant = conn.tenant.as_str(),
                transport = "websocket", "connection opened"
            );
            Some((socket, session))
        }
        Err(code) => {
            // The `authenticate` request still gets its one reply.
            if let Some(id) = reply_to {
                let (code_of_error, message) = if code == CloseCode::TryAgainLater {
                    (
                        ErrorCode::Unavailable,
                        "the cluster registry is unreachable; retry shortly",
                    )
                } else {
                    (
                        ErrorCode::LimitExceeded,
                        "this user is at limits.max_connections_per_user",
                    )
                };
                send(&mut socket, error(Some(id), code_of_error, message)).await;
            }
            close(&mut socket, code).await;
            None
        }
    }
}

/// Ends the session (leaving rooms, forgetting the connection) and logs why.
async fn finish(session: Session, reason: Option<&'static str>, started: Instant) {
    let conn = session.connection().clone();
    let reason = reason.unwrap_or_else(|| {
        conn.queue
            .closing()
            .map_or("client_closed", CloseCode::reason)
    });
    session.end(reason).await;
    tracing::info!(
        connection_id = %conn.id, user_id = %conn.user_id, reason,
        duration_ms = started.elapsed().as_millis() as u64, "connection closed"
    );
}

/// Waits for a valid `authenticate` frame within `limits.auth_timeout`.
async fn await_authenticate(
    app: &AppState,
    socket: &mut WebSocket,
) -> Option<(Identity, Option<RequestId>)> {
    let deadline = tokio::time::Instant::now() + app.node.limits().auth_timeout;
    let mut frames = 0usize;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                metrics::auth_failure("timeout");
                close(socket, CloseCode::Unauthorized).await;
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                // The same answers as after authentication: 1009 for an
                // oversized frame, `bad_request` then 1007 for bad UTF-8.
                match read_error(e) {
                    ReadError::TooBig => close(socket, CloseCode::TooBig).await,
                    ReadError::InvalidUtf8 => {
                        let frame =
                            error(None, ErrorCode::BadRequest, "text frame is not valid UTF-8");
                        send(socket, frame).await;
                        close(socket, CloseCode::InvalidPayload).await;
                    }
                    ReadError::Fatal => {}
                }
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        // No rate limit applies yet, so an unauthenticated socket gets a
        // fixed budget of frames instead.
        frames += 1;
        if frames > MAX_FRAMES_BEFORE_AUTH {
            metrics::auth_failure("too_many_frames");
            let message = "too many frames before `authenticate`";
            send(socket, error(None, ErrorCode::Unauthorized, message)).await;
            close(socket, CloseCode::Unauthorized).await;
            return None;
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return None,
            Message::Binary(_) => {
                send(
                    socket,
                    error(
                        None,
                        ErrorCode::BadRequest,
                        "binary frames are not supported",
                    ),
                )
                .await;
                continue;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        match parse_client_frame(&text) {
            Ok((id, ClientRequest::Authenticate { token })) => {
                match app.node.verify_token(&token).await {
                    Ok(identity) => return Some((identity, id)),
                    Err(e) => {
                        send(socket, error(id, ErrorCode::Unauthorized, &e.message)).await;
                        close(socket, CloseCode::Unauthorized).await;
                        return None;
                    }
                }
            }
            Ok((id, ClientRequest::Ping)) => send(socket, encode(&ServerFrame::Pong { id })).await,
            Ok((id, _)) => {
                send(
                    socket,
                    error(id, ErrorCode::Unauthorized, "send `authenticate` first"),
                )
                .await
            }
            Err(e) => send(socket, error(e.id, e.code, &e.message)).await,
        }
    }
}

fn error(id: Option<RequestId>, code: ErrorCode, message: &str) -> bytes::Bytes {
    encode(&ServerFrame::Error {
        id,
        code,
        message: message.to_owned(),
    })
}

async fn send(socket: &mut WebSocket, frame: bytes::Bytes) {
    if let Ok(text) = Utf8Bytes::try_from(frame) {
        let _ = socket.send(Message::Text(text)).await;
    }
}

/// Sends `disconnect`, then the close frame, within [`CLOSE_TIMEOUT`].
async fn close(socket: &mut WebSocket, code: CloseCode) {
    let frame = encode(&ServerFrame::Disconnect(Disconnect {
        code: code.code(),
        reason: code.reason().to_owned(),
        reconnect: code.reconnect(),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Ok(text) = Utf8Bytes::try_from(frame) {
            let _ = socket.feed(Message::Text(text)).await;
        }
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: code.code(),
                reason: Utf8Bytes::from_static(code.reason()),
            })))
            .await;
    })
    .await;
}

/// Runs the connection until it ends. Returns a close reason when the
/// transport decided it; `None` when the queue's close code says why.
async fn pump(socket: &mut WebSocket, session: &mut Session) -> Option<&'static str> {
    let conn = session.connection().clone();
    // Grows to the largest batch seen; starts empty so idle connections
    // carry nothing.
    let mut batch: Vec<Outbound> = Vec::new();
    loop {
        tokio::select! {
            // The queue first: once closing, the close is sent before more
            // input is read.
            biased;
            // The write, request handling and close phases are boxed: the
            // idle loop's state is what every connection carries, and
            // inline they would make it as large as the largest of them
            // (measured: 2.6 KB per connection's task before, see
            // docs/benchmarks.md). One allocation per batch or request is
            // noise next to the write itself.
            closing = conn.queue.next_batch(&mut batch) => {
                if !batch.is_empty() {
                    match Box::pin(write_or_cut(socket, &mut batch, &conn.queue)).await {
                        Written::Yes => {}
                        Written::Failed => return Some("write_failed"),
                        Written::Cut => return None,
                    }
                }
                if let Some(code) = closing {
                    Box::pin(close(socket, code)).await;
                    return None;
                }
            }
            msg = socket.recv() => match msg {
                None => return Some("client_closed"),
                Some(Ok(Message::Text(text))) => Box::pin(session.handle_text(&text)).await,
                Some(Ok(Message::Binary(_))) => session.handle_binary(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => conn.touch(),
                Some(Ok(Message::Close(_))) => return Some("client_closed"),
                Some(Err(e)) => match read_error(e) {
                    ReadError::TooBig => {
                        conn.close(CloseCode::TooBig);
                    }
                    ReadError::InvalidUtf8 => session.reject_invalid_utf8(),
                    ReadError::Fatal => return Some("transport_error"),
                },
            },
        }
    }
}

enum ReadError {
    /// A frame over `limits.max_message_bytes`: close with 1009.
    TooBig,
    /// A text frame that is not UTF-8: `bad_request`, then close 1007.
    InvalidUtf8,
    /// Anything else: the socket is unusable.
    Fatal,
}

fn read_error(e: axum::Error) -> ReadError {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(inner) => match *inner {
            tungstenite::Error::Capacity(_) => ReadError::TooBig,
            tungstenite::Error::Utf8(_) => ReadError::InvalidUtf8,
            _ => ReadError::Fatal,
        },
        Err(_) => ReadError::Fatal,
    }
}

/// How a batch write ended.
enum Written {
    Yes,
    Failed,
    /// The connection was cut as a slow consumer while the write waited.
    Cut,
}

/// Writes a batch unless the connection is cut as a slow consumer first.
/// Blocked on a client that does not read, the write is dropped; any other
/// close lets it finish, so frames queued before the close (an error saying
/// why) still reach the client.
async fn write_or_cut(
    socket: &mut WebSocket,
    batch: &mut Vec<Outbound>,
    queue: &SendQueue,
) -> Written {
    tokio::select! {
        result = write_batch(socket, batch) => match result {
            Ok(()) => Written::Yes,
            Err(_) => Written::Failed,
        },
        () = cut_as_slow_consumer(queue) => Written::Cut,
    }
}

/// Resolves only if the connection is cut as a slow consumer; the first
/// close code is final, so any other one never resolves.
async fn cut_as_slow_consumer(queue: &SendQueue) {
    if queue.closed().await != CloseCode::SlowConsumer {
        std::future::pending::<()>().await;
    }
}

/// Writes every queued item, then flushes once.
async fn write_batch(socket: &mut WebSocket, batch: &mut Vec<Outbound>) -> Result<(), axum::Error> {
    let mut sent = 0u64;
    let mut latencies: Vec<Instant> = Vec::new();
    for item in batch.drain(..) {
        match item {
            Outbound::Frame { bytes, publication } => {
                let Ok(text) = Utf8Bytes::try_from(bytes) else {
                    continue;
                };
                socket.feed(Message::Text(text)).await?;
                sent += 1;
                if let Some(t) = publication.and_then(|p| p.accepted_at) {
                    latencies.push(t);
                }
            }
            Outbound::Ping => socket.feed(Message::Ping(bytes::Bytes::new())).await?,
        }
    }
    socket.flush().await?;
    metrics::messages_sent(sent);
    for t in latencies {
        metrics::delivery_latency(t.elapsed());
    }
    Ok(())
}
