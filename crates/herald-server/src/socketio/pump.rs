//! One connected Socket.IO client, until it ends: emits go to the session;
//! on polling the connection's queue is drained into the Engine.IO session
//! by this task (a polling client has no socket between two requests),
//! on WebSocket a [`SioWriter`] writes it into the socket as it is queued;
//! heartbeats are Engine.IO pings, and a server-side close is the
//! `herald:disconnect` event, then `41` only when the client should not
//! come back (a kick), so that socket.io-client reconnects (and recovers)
//! by itself after a drain or a slow-consumer cut.

use super::connect::Opened;
use super::engine::{EioEvent, EioSocket, OutPacket};
use super::outgoing::{plain, Outgoing};
use super::writer::SioWriter;
use super::CLOSE_TIMEOUT;
use crate::AppState;
use futures_util::FutureExt;
use herald_node::{Connection, Drain, Duty, Outbound, Session, SocketSlot};
use herald_protocol::CloseCode;
use herald_socketio::connect as answers;
use herald_socketio::packet::{self, PacketType};
use parking_lot::Mutex;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the loop ended.
pub(super) enum End {
    /// The connection is closing with this code: send `disconnect`.
    Close(CloseCode),
    /// The client or the transport ended it; nothing more to send.
    Gone(&'static str),
    /// A send could not finish (the client stopped reading): the Engine.IO
    /// session is dropped without its last packets.
    Abandoned(&'static str),
}

/// What an opened connection holds for its whole life (boxed: the idle
/// task then holds a pointer to it and the idle loop's state only).
pub(super) struct Live {
    socket: EioSocket,
    session: Session,
    /// Shared with the socket writer while there is one.
    outgoing: Arc<Mutex<Outgoing>>,
    /// The queue's writer, while the session is on WebSocket.
    writer: Option<Arc<SioWriter>>,
    cancel: CancellationToken,
    started: Instant,
    /// Held for the connection's whole life: a place among the node's
    /// sockets.
    _slot: SocketSlot,
}

/// Logs the opened connection and sends its first packets (the CONNECT
/// answer, then what the open queued); `Some(end)` when that already
/// ended it.
pub(super) async fn begin(
    app: &AppState,
    opened: Opened,
    slot: SocketSlot,
    remote_ip: Option<IpAddr>,
) -> (Box<Live>, Option<End>) {
    let Opened {
        socket,
        session,
        accepted,
        first,
        tracker,
        recovered,
    } = opened;
    let conn = session.connection().clone();
    tracing::info!(
        connection_id = %conn.id, user_id = %conn.user_id, tenant = conn.tenant.as_str(),
        transport = "socketio", engine = socket.transport_name(), recovered,
        remote_ip = ?remote_ip, "connection opened"
    );
    let mut live = Box::new(Live {
        socket,
        session,
        outgoing: Arc::new(Mutex::new(Outgoing::new(tracker, app.socketio.recovery))),
        writer: None,
        cancel: app.node.cancellation(),
        started: Instant::now(),
        _slot: slot,
    });
    let mut out = vec![plain(accepted)];
    live.outgoing.lock().convert(first, &mut out);
    let end = send(&mut live.socket, &out, &conn).await.err();
    (live, end)
}

/// Sends the close (the `herald:disconnect` event, then `41` unless the
/// client should come back), ends the Engine.IO session, then the Herald
/// session.
pub(super) async fn finish(live: Box<Live>, end: End) {
    let Live {
        mut socket,
        session,
        outgoing,
        writer,
        started,
        ..
    } = *live;
    let conn = session.connection().clone();
    let mut end = end;
    let mut last = Vec::new();
    if let Some(writer) = writer {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        if let End::Close(_) = end {
            // What is queued (a frame begun, at least) is written first,
            // by the writer, within the close's time.
            loop {
                let waited = match conn.queue.drain_state() {
                    Drain::Done | Drain::Failed => break,
                    Drain::Busy => tokio::time::timeout_at(deadline, conn.queue.wait())
                        .await
                        .is_ok(),
                    Drain::Blocked => {
                        let ready = tokio::time::timeout_at(deadline, writer.stream.writable());
                        let ok = matches!(ready.await, Ok(Ok(())));
                        if ok {
                            conn.queue.resume();
                        }
                        ok
                    }
                };
                if !waited {
                    break;
                }
            }
        }
        // The writes come back to this task once the writer is done.
        conn.queue.detach_writer();
        while conn.queue.drain_state() == Drain::Busy {
            if tokio::time::timeout_at(deadline, conn.queue.wait())
                .await
                .is_err()
            {
                break;
            }
        }
        socket.take_back_writes();
        if writer.mid_frame() || conn.queue.drain_state() == Drain::Busy {
            // The socket is inside a frame (or still being written): no
            // other frame can follow.
            end = End::Abandoned(match end {
                End::Close(code) => code.reason(),
                End::Gone(reason) | End::Abandoned(reason) => reason,
            });
        } else if let End::Close(_) = end {
            // What the writer had not written yet goes first.
            let mut batch = Vec::new();
            if let Some(None) = conn.queue.next_batch(&mut batch).now_or_never() {
                outgoing.lock().convert(batch, &mut last);
            }
        }
    }
    let reason = match end {
        End::Close(code) => {
            outgoing
                .lock()
                .convert([Outbound::control(conn.disconnect_frame(code))], &mut last);
            if !code.reconnect() {
                last.push(plain(answers::disconnect()));
            }
            socket.close(&last, CLOSE_TIMEOUT).await;
            code.reason()
        }
        End::Gone(reason) => {
            socket.close(&[], CLOSE_TIMEOUT).await;
            reason
        }
        End::Abandoned(reason) => {
            drop(socket);
            reason
        }
    };
    conn.queue.detach();
    session.end(reason).await;
    tracing::info!(
        connection_id = %conn.id, user_id = %conn.user_id, reason,
        duration_ms = started.elapsed().as_millis() as u64, "connection closed"
    );
}

/// The connection's life: the queue first (so a close is sent before more
/// input is read), then the client's packets. Nothing is kept between two
/// wake-ups but the connection's state: the batch and the packets are
/// made for each drain and dropped after it, so an idle connection holds
/// no buffer.
pub(super) async fn pump(live: &mut Live) -> End {
    let Live {
        socket,
        session,
        outgoing,
        writer,
        cancel,
        ..
    } = live;
    let conn = session.connection().clone();
    loop {
        // A recovering join queues its events as the queue drains; a page
        // of stored events is read (boxed: rare, and large) when it needs one.
        while let Some(read) = session.feed_replay() {
            let page = Box::pin(read.run()).await;
            session.add_replay_page(page);
        }
        if writer.is_none() && socket.transport_name() == "websocket" {
            if let Some(end) = Box::pin(hand_over(socket, outgoing, writer, &conn)).await {
                return end;
            }
        }
        if let Some(w) = writer {
            let stream = w.stream.clone();
            tokio::select! {
                biased;
                duty = conn.queue.duty() => match duty {
                    Duty::AwaitWritable => {
                        // The client reads slowly: on once the socket takes
                        // more, unless the queue overflowed meanwhile.
                        tokio::select! {
                            ready = stream.writable() => {
                                if ready.is_err() {
                                    return End::Abandoned("write_failed");
                                }
                                conn.queue.resume();
                            }
                            code = conn.queue.closed() => return End::Close(code),
                        }
                    }
                    Duty::Failed => return End::Abandoned("write_failed"),
                    Duty::Close(code) => return End::Close(code),
                    Duty::Refill => {}
                },
                event = socket.recv() => {
                    if let Some(end) = on_event(socket, session, event).await {
                        return end;
                    }
                    if let Some(frames) = socket.take_control() {
                        conn.queue.push(Outbound::Raw(frames));
                    }
                }
                _ = cancel.cancelled() => return End::Close(CloseCode::GoingAway),
            }
            continue;
        }
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            closing = conn.queue.next_batch(&mut batch) => {
                let mut out = Vec::with_capacity(batch.len());
                let ping = outgoing.lock().convert(batch, &mut out);
                if !out.is_empty() {
                    if let Err(end) = send(socket, &out, &conn).await {
                        return end;
                    }
                }
                drop(out);
                if ping && socket.ping().await.is_err() {
                    return End::Gone("transport_closed");
                }
                if let Some(code) = closing {
                    return End::Close(code);
                }
            }
            event = socket.recv() => {
                if let Some(end) = on_event(socket, session, event).await {
                    return end;
                }
            }
            _ = cancel.cancelled() => return End::Close(CloseCode::GoingAway),
        }
    }
}

/// The session is on WebSocket: what this side queued is written, then
/// the queue gets a writer of the socket.
async fn hand_over(
    socket: &mut EioSocket,
    outgoing: &Arc<Mutex<Outgoing>>,
    writer: &mut Option<Arc<SioWriter>>,
    conn: &Arc<Connection>,
) -> Option<End> {
    if let Err(end) = send(socket, &[], conn).await {
        return Some(end);
    }
    let deflate = socket.deflate();
    if let Some(stream) = socket.hand_over_writes() {
        let w = Arc::new(SioWriter::new(stream, outgoing.clone(), deflate));
        conn.queue.attach(w.clone());
        *writer = Some(w);
    }
    None
}

/// What the client sent, or how the session ended.
async fn on_event(socket: &mut EioSocket, session: &mut Session, event: EioEvent) -> Option<End> {
    match event {
        EioEvent::Message(message) => Box::pin(handle(socket, session, &message)).await,
        EioEvent::Binary(_) => {
            // An attachment of a binary packet, already refused when its
            // packet came; it still counts as a frame.
            session.handle_control();
            None
        }
        EioEvent::Pong => {
            session.handle_control();
            None
        }
        EioEvent::Closed(reason) => Some(End::Gone(reason)),
    }
}

/// Handles one Socket.IO packet from the client.
async fn handle(socket: &mut EioSocket, session: &mut Session, message: &[u8]) -> Option<End> {
    let parsed = std::str::from_utf8(message)
        .ok()
        .and_then(|text| packet::parse(text).ok());
    match parsed.map(|p| (p.kind, p.namespace)) {
        Some((PacketType::Disconnect, "/")) => return Some(End::Gone("client_closed")),
        Some((PacketType::Connect, namespace)) if namespace != "/" => {
            let answer = answers::invalid_namespace(namespace);
            if socket.writes_handed_over() {
                // The socket writer's: queued, in order with the rest.
                session.connection().queue.push(Outbound::control(answer));
            } else if socket.send(&[plain(answer)]).await.is_err() {
                return Some(End::Gone("transport_closed"));
            }
        }
        // A second CONNECT on `/`, a client's ack (Herald asks for none),
        // packets of namespaces not connected: ignored, but counted.
        Some((PacketType::Connect | PacketType::Ack, _) | (PacketType::Disconnect, _)) => {
            session.handle_control();
        }
        // Events, binary packets, and anything unreadable: the codec
        // answers them (an ack or an `error` event).
        _ => session.handle_message(message).await,
    }
    None
}

/// Sends `packets` (none: writes what the Engine.IO side queued). A client
/// that stops taking them cannot hold the task:
/// once the connection is closing (a slow-consumer cut, a kick), the send
/// gets [`CLOSE_TIMEOUT`] more, then the Engine.IO session is abandoned.
async fn send(
    socket: &mut EioSocket,
    packets: &[OutPacket],
    conn: &Arc<Connection>,
) -> Result<(), End> {
    let sending = socket.send(packets);
    tokio::pin!(sending);
    let done = tokio::select! {
        biased;
        done = &mut sending => done,
        code = conn.queue.closed() => {
            match tokio::time::timeout(CLOSE_TIMEOUT, &mut sending).await {
                Ok(done) => done,
                // Closed for `code` (a slow consumer, say): that is why.
                Err(_) => return Err(End::Abandoned(code.reason())),
            }
        }
    };
    done.map_err(|_| End::Gone("transport_closed"))
}
