//! One WebSocket connection, start to end: the socket taken back from
//! hyper, the unauthenticated phase (its rules live in
//! [`herald_node::PreAuth`]; this module reads and writes for it), the loop
//! that reads frames into the session while writes happen elsewhere, and
//! the close.

use super::frames::{self, Incoming, ReadError};
use super::socket::{Read, ReadFailure, WsSocket};
use crate::AppState;
use herald_core::{CredentialContext, Verified};
use herald_node::{
    Drain, Duty, OpenOptions, Outbound, PendingSlot, PreAuth, Refusal, Session, SocketSlot, Step,
    Transport,
};
use herald_protocol::{CloseCode, RequestId};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;
use tungstenite::protocol::frame::coding::Control;

/// How long the last frames of a closing connection may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closed connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

/// What a connection starts with. Boxed: an async fn keeps its arguments
/// for its whole life, so a connection's task would carry them while idle.
pub(super) struct Start {
    pub(super) app: AppState,
    pub(super) on_upgrade: OnUpgrade,
    /// Who the upgrade's credential says the client is (`None`: it will
    /// authenticate with a frame).
    pub(super) verified: Option<Verified>,
    /// What the verifier is told about an `authenticate` frame's
    /// credential.
    pub(super) credential: CredentialContext,
    /// The place among unauthenticated sockets (`None` when the upgrade
    /// carried the token), given back once authenticated.
    pub(super) pending: Option<PendingSlot>,
    /// The encoding the upgrade negotiated (`Sec-WebSocket-Protocol`).
    pub(super) codec: &'static dyn herald_protocol::ClientCodec,
    /// What permessage-deflate negotiated in the upgrade, if it was.
    pub(super) deflate: Option<super::deflate::Deflate>,
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
        verified,
        credential,
        pending,
        codec,
        deflate,
    } = *start;
    // One deadline for the whole unauthenticated phase: the upgrade, every
    // read and write, and the token's verification.
    let mut pre = PreAuth::new(&app.node);
    pre.set_context(credential);
    pre.set_codec(codec);
    let deadline = pre.deadline();
    let Ok(Ok(upgraded)) = timeout_at(deadline, on_upgrade).await else {
        return None;
    };
    let Ok(parts) = upgraded.downcast::<TokioIo<crate::http::ServerIo>>() else {
        // Only if the HTTP server stopped serving its own stream type.
        tracing::error!("upgraded connection is not a served stream; closing it");
        return None;
    };
    let max = app.node.limits().max_message_bytes;
    // An unauthenticated socket gets the smaller pre-auth byte budget.
    let first_max = match verified {
        Some(_) => max,
        None => pre.max_message_bytes(),
    };
    let mut socket = WsSocket::new(
        parts.io.into_inner().into_conn(),
        &parts.read_buf,
        first_max,
        deflate,
    );
    let (Verified { identity, rooms }, reply_to) = match verified {
        Some(v) => (v, None),
        None => await_authenticate(&mut pre, &mut socket).await?,
    };
    drop(pending);
    socket.set_max_message(max);
    let binary = pre.codec().binary();
    let options = OpenOptions {
        writer: Some(socket.writer(binary, pre.codec().slot())),
        rooms,
        ..OpenOptions::default()
    };
    let codec = pre.codec();
    match pre
        .open(identity, reply_to, &Transport::WEBSOCKET, options)
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
        Err(refusal) => {
            close_unopened(&socket, codec, refusal).await;
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

/// Reads the client's frames into `pre` until it authenticates, by the
/// phase's deadline (`limits.auth_timeout` after the upgrade), which bounds
/// every read, write and the token's verification. Frames the client sent
/// after `authenticate` stay in `socket` for the session.
async fn await_authenticate(
    pre: &mut PreAuth,
    socket: &mut WsSocket,
) -> Option<(Verified, Option<RequestId>)> {
    let deadline = pre.deadline();
    let codec = pre.codec();
    loop {
        let Some(incoming) = socket.take() else {
            let refusal = match timeout_at(deadline, socket.fill()).await {
                Err(_) => pre.timed_out(),
                Ok(Ok(Read::Open)) => continue,
                Ok(Ok(Read::Eof) | Err(ReadFailure::Io(_))) => return None,
                // The same answers as after authentication.
                Ok(Err(ReadFailure::Frame(ReadError::InvalidUtf8))) => pre.invalid_utf8(),
                Ok(Err(ReadFailure::Frame(e))) => Refusal {
                    reply: None,
                    code: close_code_of(e),
                },
            };
            close_unopened(socket, codec, refusal).await;
            return None;
        };
        let step = match incoming {
            Incoming::Close(code) => {
                answer_close(socket, code).await;
                return None;
            }
            Incoming::Ping(payload) => match pre.control() {
                Step::Continue(_) => {
                    let pong = frames::control(Control::Pong, &payload);
                    write_by(socket, deadline, &pong).await?;
                    continue;
                }
                step => step,
            },
            Incoming::Pong => pre.control(),
            Incoming::Binary(message) => pre.handle_binary(&message).await,
            Incoming::Text(text) => pre.handle_text(&text).await,
        };
        match step {
            Step::Continue(None) => {}
            Step::Continue(Some(reply)) => {
                let frame = frames::data(codec.binary(), &reply);
                write_by(socket, deadline, &frame).await?;
            }
            Step::Authenticated {
                identity, reply_to, ..
                // PreAuth::open joins the frame credential's rooms itself.
            } => return Some((Verified::from(identity), reply_to)),
            Step::Close(refusal) => {
                close_unopened(socket, codec, refusal).await;
                return None;
            }
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

/// Writes `bytes` (whole frames) before the session exists, by
/// `deadline`. `None` when they did not all leave in time: the socket may
/// then hold part of a frame, so nothing more may be written to it.
async fn write_by(socket: &WsSocket, deadline: tokio::time::Instant, bytes: &[u8]) -> Option<()> {
    match timeout_at(deadline, socket.write_all(bytes)).await {
        Ok(Ok(())) => Some(()),
        _ => None,
    }
}

/// Closes a connection that has no session: the refusal's reply (when
/// given), then `disconnect`, the close frame, then the TCP close.
async fn close_unopened(
    socket: &WsSocket,
    codec: &'static dyn herald_protocol::ClientCodec,
    refusal: Refusal,
) {
    let Refusal { reply, code } = refusal;
    let binary = codec.binary();
    let mut bytes = reply.map_or_else(Vec::new, |m| frames::data(binary, &m).to_vec());
    let disconnect = herald_node::disconnect_frame(codec, code);
    bytes.extend_from_slice(&frames::data(binary, &disconnect));
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
        Incoming::Binary(message) => session.handle_binary(&message).await,
        // Control frames count against the rate limit like any frame; a
        // ping over it is not answered.
        Incoming::Ping(payload) => {
            if session.handle_control() {
                conn.send_raw(frames::control(Control::Pong, &payload));
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
            bytes: session.connection().disconnect_frame(code),
            publication: None,
            change: None,
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
