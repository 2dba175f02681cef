//! One WebSocket connection, start to end: the socket taken back from
//! hyper, the `authenticate` handshake, the loop that reads frames into
//! the session while writes happen elsewhere, and the close.

use super::frames::{self, Incoming, ReadError};
use super::socket::{Read, ReadFailure, WsSocket};
use crate::AppState;
use bytes::Bytes;
use herald_core::Identity;
use herald_node::{
    metrics, Drain, Duty, OpenOptions, Outbound, PendingSlot, Session, SocketSlot, Transport,
};
use herald_protocol::{
    encode, parse_client_frame, ClientRequest, CloseCode, Disconnect, ErrorCode, RequestId,
    ServerFrame,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;
use tungstenite::protocol::frame::coding::Control;

/// Frames a socket may send before it authenticates, control frames
/// included: each may ask for a reply, and no rate limit applies yet.
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
    /// The place among unauthenticated sockets (`None` when the upgrade
    /// carried the token), given back once authenticated.
    pub(super) pending: Option<PendingSlot>,
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
        pending,
    } = *start;
    let limits = app.node.limits();
    // One deadline for the whole unauthenticated phase: the upgrade, every
    // read and write, and the token's verification.
    let deadline = tokio::time::Instant::now() + limits.auth_timeout;
    let Ok(Ok(upgraded)) = timeout_at(deadline, on_upgrade).await else {
        return None;
    };
    let Ok(parts) = upgraded.downcast::<TokioIo<crate::http::ServerIo>>() else {
        // Only if the HTTP server stopped serving plain TCP streams.
        tracing::error!("upgraded connection is not a TCP stream; closing it");
        return None;
    };
    let max = limits.max_message_bytes;
    // An unauthenticated socket gets the smaller pre-auth byte budget.
    let first_max = match identity {
        Some(_) => max,
        None => limits.max_pending_message_bytes.min(max),
    };
    let mut socket = WsSocket::new(
        parts.io.into_inner().into_stream(),
        &parts.read_buf,
        first_max,
    );
    let (identity, reply_to) = match identity {
        Some(i) => (i, None),
        None => await_authenticate(&app, &mut socket, deadline).await?,
    };
    drop(pending);
    socket.set_max_message(max);
    let options = OpenOptions {
        reply_to: reply_to.clone(),
        writer: Some(socket.writer()),
        ..OpenOptions::default()
    };
    match app
        .node
        .open_session(identity, &Transport::WEBSOCKET, options)
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
            let reply = reply_to.map(|id| {
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
                error(Some(id), code_of_error, message)
            });
            close_unopened(&socket, reply, code).await;
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

/// Waits for a valid `authenticate` frame until `deadline`
/// (`limits.auth_timeout` after the upgrade), which bounds every read,
/// write and the token's verification. Frames the client sent after it
/// stay in `socket` for the session.
async fn await_authenticate(
    app: &AppState,
    socket: &mut WsSocket,
    deadline: tokio::time::Instant,
) -> Option<(Identity, Option<RequestId>)> {
    let mut frames = 0usize;
    loop {
        let Some(incoming) = socket.take() else {
            match timeout_at(deadline, socket.fill()).await {
                Err(_) => {
                    metrics::auth_failure("timeout");
                    close_unopened(socket, None, CloseCode::Unauthorized).await;
                    return None;
                }
                Ok(Ok(Read::Open)) => continue,
                Ok(Ok(Read::Eof) | Err(ReadFailure::Io(_))) => return None,
                Ok(Err(ReadFailure::Frame(e))) => {
                    // The same answers as after authentication.
                    let reply = (e == ReadError::InvalidUtf8).then(|| {
                        let message = "text frame is not valid UTF-8";
                        error(None, ErrorCode::BadRequest, message)
                    });
                    close_unopened(socket, reply, close_code_of(e)).await;
                    return None;
                }
            }
        };
        if let Incoming::Close(code) = incoming {
            answer_close(socket, code).await;
            return None;
        }
        // No rate limit applies yet, so an unauthenticated socket gets a
        // fixed budget of frames instead; pings count, since each asks
        // for a pong.
        frames += 1;
        if frames > MAX_FRAMES_BEFORE_AUTH {
            metrics::auth_failure("too_many_frames");
            let message = "too many frames before `authenticate`";
            let reply = error(None, ErrorCode::Unauthorized, message);
            close_unopened(socket, Some(reply), CloseCode::Unauthorized).await;
            return None;
        }
        let text = match incoming {
            Incoming::Ping(payload) => {
                let pong = frames::control(Control::Pong, &payload);
                write_by(socket, deadline, &pong).await?;
                continue;
            }
            Incoming::Pong | Incoming::Close(_) => continue,
            Incoming::Binary => {
                let message = "binary frames are not supported";
                reply_by(
                    socket,
                    deadline,
                    error(None, ErrorCode::BadRequest, message),
                )
                .await?;
                continue;
            }
            Incoming::Text(text) => text,
        };
        let reply = match parse_client_frame(&text) {
            Ok((id, ClientRequest::Authenticate { token })) => {
                let Ok(verified) = timeout_at(deadline, app.node.verify_token(&token)).await else {
                    metrics::auth_failure("timeout");
                    close_unopened(socket, None, CloseCode::Unauthorized).await;
                    return None;
                };
                match verified {
                    Ok(identity) => return Some((identity, id)),
                    Err(e) => {
                        let reply = error(id, ErrorCode::Unauthorized, &e.message);
                        close_unopened(socket, Some(reply), CloseCode::Unauthorized).await;
                        return None;
                    }
                }
            }
            Ok((id, ClientRequest::Ping)) => encode(&ServerFrame::Pong { id }),
            Ok((id, _)) => error(id, ErrorCode::Unauthorized, "send `authenticate` first"),
            Err(e) => error(e.id, e.code, &e.message),
        };
        reply_by(socket, deadline, reply).await?;
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

/// Writes `bytes` (whole frames) before the session exists, by
/// `deadline`. `None` when they did not all leave in time: the socket may
/// then hold part of a frame, so nothing more may be written to it.
async fn write_by(socket: &WsSocket, deadline: tokio::time::Instant, bytes: &[u8]) -> Option<()> {
    match timeout_at(deadline, socket.write_all(bytes)).await {
        Ok(Ok(())) => Some(()),
        _ => None,
    }
}

/// Sends one JSON frame before the session exists, by `deadline`; `None`
/// as in [`write_by`].
async fn reply_by(socket: &WsSocket, deadline: tokio::time::Instant, json: Bytes) -> Option<()> {
    write_by(socket, deadline, &frames::text(&json)).await
}

/// The `disconnect` frame for `code`.
fn disconnect(code: CloseCode) -> Bytes {
    encode(&ServerFrame::Disconnect(Disconnect {
        code: code.code(),
        reason: code.reason().to_owned(),
        reconnect: code.reconnect(),
    }))
}

/// Closes a connection that has no session: `reply` (when given), then
/// `disconnect`, the close frame, then the TCP close.
async fn close_unopened(socket: &WsSocket, reply: Option<Bytes>, code: CloseCode) {
    let mut bytes = reply.map_or_else(Vec::new, |json| frames::text(&json).to_vec());
    bytes.extend_from_slice(&frames::text(&disconnect(code)));
    bytes.extend_from_slice(&frames::close(code.code(), code.reason()));
    write_last(socket, &bytes).await;
}

/// Answers a client's close frame with the same code (RFC 6455 5.5.1).
async fn answer_close(socket: &WsSocket, code: Option<u16>) {
    write_last(socket, &frames::close(code.unwrap_or(1000), "")).await;
}

/// Writes a connection's last bytes (within [`CLOSE_TIMEOUT`]), then closes
/// the TCP connection; for the time before a session (and its queue) exists.
/// A client that did not take them is not reading: it gets no linger.
async fn write_last(socket: &WsSocket, bytes: &[u8]) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    if write_by(socket, deadline, bytes).await.is_some() {
        socket.shut_down(LINGER).await;
    }
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
                        // A slow-consumer cut, or the stale cut of a client
                        // that stopped reading (its input is not read while
                        // the socket is full, so nothing it sends counts),
                        // ends the wait.
                        _ = conn.queue.closed() => {}
                    }
                }
                Duty::Refill => session.feed_replay_all().await,
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
        // Control frames count against the rate limit like any frame; a
        // ping over it is not answered.
        Incoming::Ping(payload) => {
            if session.handle_control() {
                let pong = frames::control(Control::Pong, &payload);
                if conn.queue.push(Outbound::Raw(pong)) == herald_node::PushResult::Overflow {
                    conn.close(CloseCode::SlowConsumer);
                }
            }
        }
        Incoming::Pong => {
            session.handle_control();
        }
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
