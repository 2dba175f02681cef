//! One WebSocket connection, start to end: the socket taken back from
//! hyper, the `authenticate` handshake, the loop that reads frames into
//! the session while writes happen elsewhere, and the close.

use super::frames::{self, Incoming, ReadError};
use super::socket::{Read, ReadFailure, WsSocket};
use crate::AppState;
use bytes::Bytes;
use herald_core::Identity;
use herald_node::{
    metrics, Drain, Duty, OpenOptions, Outbound, Session, SocketSlot, TransportKind,
};
use herald_protocol::{
    encode, parse_client_frame, ClientRequest, CloseCode, Disconnect, ErrorCode, RequestId,
    ServerFrame,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::Control;

/// Frames a socket may send before it authenticates.
const MAX_FRAMES_BEFORE_AUTH: usize = 16;
/// How long the last frames of a closing connection may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closed connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

/// What a connection starts with. Boxed: an async fn keeps its arguments
/// for its whole life, so a connection's task would carry them while idle.
pub(super) struct Start {
    pub(super) app: AppState,
    pub(super) on_upgrade: OnUpgrade,
    pub(super) identity: Option<Identity>,
}

/// One WebSocket connection, start to end. Only the socket, the session
/// and the idle loop live in this future for the connection's whole life:
/// opening and ending run boxed, since an async fn's state is as large as
/// its largest phase and every idle connection would carry it.
pub(super) async fn run(start: Box<Start>, _slot: SocketSlot) {
    let Some((mut socket, mut session)) = Box::pin(open(start)).await else {
        return;
    };
    let started = Instant::now();
    let reason = pump(&mut socket, &mut session).await;
    Box::pin(finish(socket, session, reason, started)).await;
}

/// Takes the socket back from hyper, authenticates (unless the upgrade
/// carried the token) and opens the session; `None` when the connection
/// ended instead.
async fn open(start: Box<Start>) -> Option<(WsSocket, Session)> {
    let Start {
        app,
        on_upgrade,
        identity,
    } = *start;
    let upgraded = on_upgrade.await.ok()?;
    let Ok(parts) = upgraded.downcast::<TokioIo<crate::http::ServerIo>>() else {
        // Only if the HTTP server stopped serving plain TCP streams.
        tracing::error!("upgraded connection is not a TCP stream; closing it");
        return None;
    };
    let max = app.node.limits().max_message_bytes;
    let mut socket = WsSocket::new(parts.io.into_inner().into_stream(), &parts.read_buf, max);
    let (identity, reply_to) = match identity {
        Some(i) => (i, None),
        None => await_authenticate(&app, &mut socket).await?,
    };
    let options = OpenOptions {
        reply_to: reply_to.clone(),
        writer: Some(socket.writer()),
        ..OpenOptions::default()
    };
    match app
        .node
        .open_session(identity, TransportKind::Websocket, options)
        .await
    {
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
                send(&socket, error(Some(id), code_of_error, message)).await;
            }
            close_unopened(&socket, code).await;
            None
        }
    }
}

/// Ends the session (leaving rooms, forgetting the connection) and logs why.
async fn finish(
    socket: WsSocket,
    session: Session,
    reason: Option<&'static str>,
    started: Instant,
) {
    let conn = session.connection().clone();
    conn.queue.detach();
    drop(socket);
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
/// Frames the client sent after it stay in `socket` for the session.
async fn await_authenticate(
    app: &AppState,
    socket: &mut WsSocket,
) -> Option<(Identity, Option<RequestId>)> {
    let deadline = tokio::time::Instant::now() + app.node.limits().auth_timeout;
    let mut frames = 0usize;
    loop {
        let Some(incoming) = socket.take() else {
            match tokio::time::timeout_at(deadline, socket.fill()).await {
                Err(_) => {
                    metrics::auth_failure("timeout");
                    close_unopened(socket, CloseCode::Unauthorized).await;
                    return None;
                }
                Ok(Ok(Read::Open)) => continue,
                Ok(Ok(Read::Eof) | Err(ReadFailure::Io(_))) => return None,
                Ok(Err(ReadFailure::Frame(e))) => {
                    // The same answers as after authentication.
                    if e == ReadError::InvalidUtf8 {
                        let message = "text frame is not valid UTF-8";
                        send(socket, error(None, ErrorCode::BadRequest, message)).await;
                    }
                    close_unopened(socket, close_code_of(e)).await;
                    return None;
                }
            }
        };
        let text = match incoming {
            Incoming::Close(code) => {
                answer_close(socket, code).await;
                return None;
            }
            Incoming::Ping(payload) => {
                let pong = frames::control(Control::Pong, &payload);
                let _ = socket.write_all(&pong).await;
                continue;
            }
            Incoming::Pong => continue,
            Incoming::Binary => None,
            Incoming::Text(text) => Some(text),
        };
        // No rate limit applies yet, so an unauthenticated socket gets a
        // fixed budget of frames instead.
        frames += 1;
        if frames > MAX_FRAMES_BEFORE_AUTH {
            metrics::auth_failure("too_many_frames");
            let message = "too many frames before `authenticate`";
            send(socket, error(None, ErrorCode::Unauthorized, message)).await;
            close_unopened(socket, CloseCode::Unauthorized).await;
            return None;
        }
        let Some(text) = text else {
            let message = "binary frames are not supported";
            send(socket, error(None, ErrorCode::BadRequest, message)).await;
            continue;
        };
        match parse_client_frame(&text) {
            Ok((id, ClientRequest::Authenticate { token })) => {
                match app.node.verify_token(&token).await {
                    Ok(identity) => return Some((identity, id)),
                    Err(e) => {
                        send(socket, error(id, ErrorCode::Unauthorized, &e.message)).await;
                        close_unopened(socket, CloseCode::Unauthorized).await;
                        return None;
                    }
                }
            }
            Ok((id, ClientRequest::Ping)) => send(socket, encode(&ServerFrame::Pong { id })).await,
            Ok((id, _)) => {
                let message = "send `authenticate` first";
                send(socket, error(id, ErrorCode::Unauthorized, message)).await
            }
            Err(e) => send(socket, error(e.id, e.code, &e.message)).await,
        }
    }
}

/// The close code that answers a read error.
fn close_code_of(e: ReadError) -> CloseCode {
    match e {
        ReadError::TooBig => CloseCode::TooBig,
        ReadError::InvalidUtf8 => CloseCode::InvalidPayload,
        ReadError::Protocol(_) => CloseCode::ProtocolError,
    }
}

fn error(id: Option<RequestId>, code: ErrorCode, message: &str) -> Bytes {
    encode(&ServerFrame::Error {
        id,
        code,
        message: message.to_owned(),
    })
}

/// Sends one JSON frame before the session exists, within [`CLOSE_TIMEOUT`].
async fn send(socket: &WsSocket, json: Bytes) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.write_all(&frames::text(&json))).await;
}

/// The `disconnect` frame for `code`.
fn disconnect(code: CloseCode) -> Bytes {
    encode(&ServerFrame::Disconnect(Disconnect {
        code: code.code(),
        reason: code.reason().to_owned(),
        reconnect: code.reconnect(),
    }))
}

/// Closes a connection that has no session: `disconnect`, the close frame,
/// then the TCP close.
async fn close_unopened(socket: &WsSocket, code: CloseCode) {
    let mut bytes = frames::text(&disconnect(code)).to_vec();
    bytes.extend_from_slice(&frames::close(code.code(), code.reason()));
    write_last(socket, &bytes).await;
}

/// Answers a client's close frame with the same code (RFC 6455 5.5.1).
async fn answer_close(socket: &WsSocket, code: Option<u16>) {
    write_last(socket, &frames::close(code.unwrap_or(1000), "")).await;
}

/// Writes a connection's last bytes (within [`CLOSE_TIMEOUT`]), then closes
/// the TCP connection; for the time before a session (and its queue) exists.
async fn write_last(socket: &WsSocket, bytes: &[u8]) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.write_all(bytes)).await;
    socket.shut_down(LINGER).await;
}

/// Runs the connection until it ends: handles the client's frames as they
/// arrive and does what the send queue asks of this task (wait for a full
/// socket, close). Writes themselves happen wherever frames are queued.
/// Returns a close reason when the transport decided it; `None` when the
/// queue's close code says why.
async fn pump(socket: &mut WsSocket, session: &mut Session) -> Option<&'static str> {
    let conn = session.connection().clone();
    loop {
        // Frames already read first, unless the connection is closing.
        while conn.queue.closing().is_none() {
            let Some(frame) = socket.take() else { break };
            if let Some(reason) = Box::pin(handle(socket, session, frame)).await {
                return Some(reason);
            }
        }
        tokio::select! {
            // The queue first: once closing, the close is sent before more
            // input is read.
            biased;
            duty = conn.queue.duty() => match duty {
                Duty::AwaitWritable => {
                    tokio::select! {
                        ready = socket.stream.writable() => {
                            if ready.is_err() {
                                return Some("write_failed");
                            }
                            conn.queue.resume();
                        }
                        // A slow-consumer cut ends the wait.
                        _ = conn.queue.closed() => {}
                    }
                }
                Duty::Failed => return Some("write_failed"),
                Duty::Close(code) => {
                    Box::pin(close(socket, session, code)).await;
                    return None;
                }
            },
            ready = socket.readable() => {
                if ready.is_err() {
                    return Some("transport_error");
                }
                match socket.read_now() {
                    Ok(Read::Open) => {}
                    Ok(Read::Eof) => return Some("client_closed"),
                    Err(ReadFailure::Io(e)) => {
                        tracing::debug!(connection_id = %conn.id, error = %e, "read failed");
                        return Some("transport_error");
                    }
                    Err(ReadFailure::Frame(e)) => match e {
                        ReadError::InvalidUtf8 => session.reject_invalid_utf8(),
                        e => {
                            conn.close(close_code_of(e));
                        }
                    },
                }
            }
        }
    }
}

/// Handles one frame from the client; returns a close reason when the
/// client closed.
async fn handle(socket: &WsSocket, session: &mut Session, frame: Incoming) -> Option<&'static str> {
    let conn = session.connection().clone();
    match frame {
        Incoming::Text(text) => session.handle_text(&text).await,
        Incoming::Binary => session.handle_binary(),
        Incoming::Ping(payload) => {
            conn.touch();
            let pong = frames::control(Control::Pong, &payload);
            if conn.queue.push(Outbound::Raw(pong)) == herald_node::PushResult::Overflow {
                conn.close(CloseCode::SlowConsumer);
            }
        }
        Incoming::Pong => conn.touch(),
        Incoming::Close(code) => {
            // Whatever is queued goes first, then the answer.
            conn.queue.close(CloseCode::Normal);
            let answer = Outbound::Raw(frames::close(code.unwrap_or(1000), ""));
            queue_last(socket, &conn.queue, [answer]).await;
            return Some("client_closed");
        }
    }
    None
}

/// Sends `disconnect` and the close frame after what is queued, waits for
/// them to leave (within [`CLOSE_TIMEOUT`]), then closes the TCP connection.
async fn close(socket: &WsSocket, session: &Session, code: CloseCode) {
    let last = [
        Outbound::Frame {
            bytes: disconnect(code),
            publication: None,
        },
        Outbound::Raw(frames::close(code.code(), code.reason())),
    ];
    queue_last(socket, &session.connection().queue, last).await;
}

/// Queues a closing connection's `last` frames after what is queued, waits
/// until everything was written, the socket failed, or [`CLOSE_TIMEOUT`]
/// passed, then closes the TCP connection.
async fn queue_last(
    socket: &WsSocket,
    queue: &herald_node::SendQueue,
    last: impl IntoIterator<Item = Outbound>,
) {
    queue.finish(last);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            match queue.drain_state() {
                Drain::Done | Drain::Failed => return,
                Drain::Blocked => {
                    if socket.stream.writable().await.is_err() {
                        return;
                    }
                    queue.resume();
                }
                Drain::Busy => queue.wait().await,
            }
        }
    })
    .await;
    socket.shut_down(LINGER).await;
}
