//! One connected Socket.IO client, until it ends: emits go to the session,
//! the connection's queue is drained into the Engine.IO session (there is
//! no socket writer: a polling client has no socket between two requests),
//! heartbeats are Engine.IO pings, and a server-side close is the
//! `disconnect` event, then `41` only when the client should not come back
//! (a kick), so that socket.io-client reconnects (and recovers) by itself
//! after a drain or a slow-consumer cut.

use super::connect::Opened;
use super::engine::{EioEvent, EioSocket, OutPacket};
use super::outgoing::{plain, Outgoing};
use super::CLOSE_TIMEOUT;
use crate::AppState;
use herald_node::{Connection, Session};
use herald_protocol::CloseCode;
use herald_socketio::connect as answers;
use herald_socketio::packet::{self, PacketType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// How the loop ended.
enum End {
    /// The connection is closing with this code: send `disconnect`.
    Close(CloseCode),
    /// The client or the transport ended it; nothing more to send.
    Gone(&'static str),
    /// A send could not finish (the client stopped reading): the Engine.IO
    /// session is dropped without its last packets.
    Abandoned(&'static str),
}

/// Runs an opened connection to its end, then ends its session.
pub(super) async fn run(app: AppState, opened: Opened, remote_ip: Option<IpAddr>) {
    let Opened {
        mut socket,
        mut session,
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
    let started = Instant::now();
    let mut outgoing = Outgoing::new(tracker, app.socketio.recovery);
    let mut out = vec![plain(accepted)];
    outgoing.convert(first, &mut out);
    let end = match send(&mut socket, &out, &conn).await {
        Err(end) => end,
        Ok(()) => pump(&app, &mut socket, &mut session, &mut outgoing).await,
    };
    // Boxed, as every phase but the idle loop: an async fn is as large as
    // its largest phase, and every idle connection would carry it.
    Box::pin(finish(socket, session, outgoing, end, started)).await;
}

/// Sends the close (the `herald:disconnect` event, then `41` unless the
/// client should come back), ends the Engine.IO session, then the Herald
/// session.
async fn finish(
    socket: EioSocket,
    session: Session,
    mut outgoing: Outgoing,
    end: End,
    started: Instant,
) {
    let conn = session.connection().clone();
    let reason = match end {
        End::Close(code) => {
            let mut last = Vec::new();
            outgoing.convert(
                [herald_node::Outbound::control(conn.disconnect_frame(code))],
                &mut last,
            );
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
/// input is read), then the client's packets.
async fn pump(
    app: &AppState,
    socket: &mut EioSocket,
    session: &mut Session,
    outgoing: &mut Outgoing,
) -> End {
    let conn = session.connection().clone();
    let cancel = app.node.cancellation();
    let mut batch = Vec::new();
    let mut out = Vec::new();
    loop {
        // A recovering join queues its events as the queue drains; a page
        // of stored events is read (boxed: rare, and large) when it needs one.
        while let Some(read) = session.feed_replay() {
            let page = Box::pin(read.run()).await;
            session.add_replay_page(page);
        }
        tokio::select! {
            biased;
            closing = conn.queue.next_batch(&mut batch) => {
                out.clear();
                let ping = outgoing.convert(batch.drain(..), &mut out);
                if let Err(end) = send(socket, &out, &conn).await {
                    return end;
                }
                if ping && socket.ping().await.is_err() {
                    return End::Gone("transport_closed");
                }
                if let Some(code) = closing {
                    return End::Close(code);
                }
            }
            event = socket.recv() => match event {
                EioEvent::Message(message) => {
                    if let Some(end) = Box::pin(handle(socket, session, &message)).await {
                        return end;
                    }
                }
                EioEvent::Binary(_) => {
                    // An attachment of a binary packet, already refused
                    // when its packet came; it still counts as a frame.
                    session.handle_control();
                }
                EioEvent::Pong => {
                    session.handle_control();
                }
                EioEvent::Closed(reason) => return End::Gone(reason),
            },
            _ = cancel.cancelled() => return End::Close(CloseCode::GoingAway),
        }
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
            let answer = [plain(answers::invalid_namespace(namespace))];
            if socket.send(&answer).await.is_err() {
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

/// Sends `packets`. A client that stops taking them cannot hold the task:
/// once the connection is closing (a slow-consumer cut, a kick), the send
/// gets [`CLOSE_TIMEOUT`] more, then the Engine.IO session is abandoned.
async fn send(
    socket: &mut EioSocket,
    packets: &[OutPacket],
    conn: &Arc<Connection>,
) -> Result<(), End> {
    if packets.is_empty() {
        return Ok(());
    }
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
