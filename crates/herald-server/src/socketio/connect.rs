//! The Socket.IO CONNECT: waiting for it (by `limits.auth_timeout`, with
//! the pre-auth packet budget of [`PreAuth`]), verifying its token exactly
//! as `/ws` does, opening the session, and connection state recovery.
//!
//! Recovery is stateless: the CONNECT `offset` is the recovery token of the
//! client's last event, the position of every room it was in. Each of those
//! rooms is joined again by the normal rules with that position as `since`
//! (an auto-joined room through the open's `resume`, as SSE does). When
//! every one of them recovered, the client keeps its `pid` and gets the
//! missed events; otherwise that session is ended unseen and a fresh one
//! opens (auto-joined rooms, a new `pid`), as for a first connection.

use super::engine::{EioEvent, EioSocket, OutPacket};
use super::outgoing::plain;
use super::CLOSE_TIMEOUT;
use crate::resume::{last_event_id, Positions, Tracker};
use crate::AppState;
use bytes::Bytes;
use futures_util::FutureExt;
use herald_core::{CredentialContext, Identity, RoomName, Verified};
use herald_node::{
    metrics, OpenOptions, Outbound, PendingSlot, PositionChange, PreAuth, Session, Step, Transport,
};
use herald_protocol::CloseCode;
use herald_socketio::codec::SOCKET_IO;
use herald_socketio::connect::{self as answers, ConnectAuth};
use herald_socketio::packet::{self, PacketType};
use std::collections::HashSet;
use tokio::time::timeout_at;

/// A connection whose CONNECT was accepted.
pub(super) struct Opened {
    pub(super) socket: EioSocket,
    pub(super) session: Session,
    /// The CONNECT answer (`40{"sid","pid"}`), sent before anything queued.
    pub(super) accepted: Bytes,
    /// What the open queued, taken out to check a recovery.
    pub(super) first: Vec<Outbound>,
    /// Where the client stands (its own positions when it recovered).
    pub(super) tracker: Tracker,
    /// Whether the client recovered its previous connection.
    pub(super) recovered: bool,
}

/// Waits for the CONNECT on `/` and opens the session; `None` when the
/// connection ended instead (refused, timed out, gone).
pub(super) async fn connect(
    app: &AppState,
    mut socket: EioSocket,
    header_token: Option<String>,
    credential: &CredentialContext,
    pending: PendingSlot,
) -> Option<Opened> {
    let mut pre = PreAuth::new(&app.node);
    pre.set_codec(&SOCKET_IO);
    let deadline = pre.deadline();
    let cancel = app.node.cancellation();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return None,
            event = timeout_at(deadline, socket.recv()) => event,
        };
        let Ok(event) = event else {
            pre.timed_out();
            let why = "no CONNECT with a valid token within limits.auth_timeout";
            refuse(socket, "unauthorized", why).await;
            return None;
        };
        let message = match event {
            EioEvent::Closed(_) => return None,
            EioEvent::Message(m) => Some(m),
            EioEvent::Pong | EioEvent::Binary(_) => None,
        };
        if let Step::Close(_) = pre.control() {
            refuse(socket, "unauthorized", "too many packets before CONNECT").await;
            return None;
        }
        let Some(message) = message else { continue };
        let Ok(text) = std::str::from_utf8(&message) else {
            refuse(socket, "bad_request", "packet is not valid UTF-8").await;
            return None;
        };
        let packet = match packet::parse(text) {
            Ok(p) => p,
            Err(e) => {
                refuse(socket, "bad_request", &e.to_string()).await;
                return None;
            }
        };
        // Socket.IO servers ignore packets for a namespace not connected.
        if packet.kind != PacketType::Connect {
            continue;
        }
        if packet.namespace != "/" {
            let answer = [plain(answers::invalid_namespace(packet.namespace))];
            match timeout_at(deadline, socket.send(&answer)).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
        let auth = match ConnectAuth::parse(packet.data) {
            Ok(auth) => auth,
            Err(e) => {
                refuse(socket, "bad_request", &e.to_string()).await;
                return None;
            }
        };
        let Some(token) = auth.token.clone().or_else(|| header_token.clone()) else {
            metrics::auth_failure("missing");
            let why = "send the token as auth.token, Authorization: Bearer <jwt> or ?token=<jwt>";
            refuse(socket, "unauthorized", why).await;
            return None;
        };
        let verify = app.node.verify_credential(&token, credential);
        let verified = match timeout_at(deadline, verify).await {
            Err(_) => {
                pre.timed_out();
                refuse(socket, "unauthorized", "token verification timed out").await;
                return None;
            }
            // The backend could not answer: worth retrying, unlike a refusal.
            Ok(Err(e)) if e.is_unavailable() => {
                refuse(socket, "unavailable", &e.message).await;
                return None;
            }
            Ok(Err(e)) => {
                refuse(socket, "unauthorized", &e.message).await;
                return None;
            }
            Ok(Ok(verified)) => verified,
        };
        // Authenticated: the place among unauthenticated sockets goes back.
        drop(pending);
        return match open(app, verified, &auth).await {
            Ok(opened) => Some(opened.into_opened(socket)),
            Err(code) => {
                let (code, why) = open_refusal(code);
                refuse(socket, code, why).await;
                None
            }
        };
    }
}

/// A session opened, before it has its socket.
struct Open {
    session: Session,
    pid: Option<String>,
    first: Vec<Outbound>,
    tracker: Tracker,
    recovered: bool,
}

impl Open {
    fn into_opened(self, socket: EioSocket) -> Opened {
        let sid = self.session.connection().id.clone();
        Opened {
            socket,
            accepted: answers::accepted(&sid, self.pid.as_deref()),
            session: self.session,
            first: self.first,
            tracker: self.tracker,
            recovered: self.recovered,
        }
    }
}

/// Opens the session: recovering the previous one when the client asks
/// and every room of its offset recovers, else fresh.
async fn open(app: &AppState, verified: Verified, auth: &ConnectAuth) -> Result<Open, CloseCode> {
    let Verified { identity, rooms } = verified;
    let recovery = app.socketio.recovery;
    let resume = match (&auth.pid, &auth.offset) {
        (Some(pid), Some(offset)) if recovery => last_event_id::parse(offset)
            .ok()
            .filter(|p| !p.is_empty())
            .map(|p| (pid.clone(), p)),
        _ => None,
    };
    if let Some((pid, positions)) = resume {
        if let Some(open) = recover(app, identity.clone(), &rooms, pid, positions).await? {
            return Ok(open);
        }
    }
    let options = OpenOptions {
        announce_rooms: true,
        codec: Some(&SOCKET_IO),
        rooms,
        ..OpenOptions::default()
    };
    let session = app
        .node
        .open_session(identity, &Transport::SOCKETIO, options)
        .await?;
    let pid = recovery.then(|| format!("{:032x}", rand::random::<u128>()));
    Ok(Open {
        session,
        pid,
        first: Vec::new(),
        tracker: Tracker::default(),
        recovered: false,
    })
}

/// Re-joins every room of `positions` from its position; `None` (the
/// session ended unseen) unless all of them recovered.
async fn recover(
    app: &AppState,
    identity: Identity,
    extra: &[String],
    pid: String,
    positions: Positions,
) -> Result<Option<Open>, CloseCode> {
    let auto = app.node.namespaces().auto_join_rooms(&identity);
    // Rooms joined at open (auto-joined, or named by the connect proxy)
    // resume through the open; the others are joined again below.
    let at_open = |room: &RoomName| auto.contains(room) || extra.iter().any(|r| r == room.as_str());
    let options = OpenOptions {
        resume: positions
            .iter()
            .filter(|(room, _)| at_open(room))
            .map(|(r, p)| (r.clone(), p.clone()))
            .collect(),
        announce_rooms: true,
        codec: Some(&SOCKET_IO),
        rooms: extra.to_vec(),
        ..OpenOptions::default()
    };
    let mut session = app
        .node
        .open_session(identity, &Transport::SOCKETIO, options)
        .await?;
    let mut joined = true;
    for (room, since) in positions.iter().filter(|(r, _)| !at_open(r)) {
        if session
            .join_room(room.as_str(), Some(since.clone()))
            .await
            .is_err()
        {
            joined = false;
            break;
        }
    }
    // Every `room_joined` is queued by now, `authenticated` first: they
    // tell which rooms recovered. Nothing has been sent yet.
    let mut first = Vec::new();
    let conn = session.connection().clone();
    let closing = conn.queue.next_batch(&mut first).now_or_never();
    let recovered: HashSet<_> = first
        .iter()
        .filter_map(|item| match item {
            Outbound::Frame {
                change: Some(change),
                ..
            } => match change.as_ref() {
                PositionChange::Joined {
                    room,
                    recovered: Some(true),
                    ..
                } => Some(room.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let all = joined
        && matches!(closing, Some(None))
        && positions.keys().all(|room| recovered.contains(room));
    if !all {
        session.end("recovery_failed").await;
        return Ok(None);
    }
    Ok(Some(Open {
        session,
        pid: Some(pid),
        first,
        tracker: Tracker::resuming(positions),
        recovered: true,
    }))
}

/// The CONNECT refusal for a session the node would not open, as `/ws`
/// and `/sse` answer it.
fn open_refusal(code: CloseCode) -> (&'static str, &'static str) {
    if code == CloseCode::TryAgainLater {
        (
            "unavailable",
            "the cluster registry is unreachable; retry shortly",
        )
    } else {
        (
            "limit_exceeded",
            "this user is at limits.max_connections_per_user",
        )
    }
}

/// Refuses the CONNECT (`44{"message":<code>,"data":{code,message}}`),
/// then ends the Engine.IO session.
async fn refuse(socket: EioSocket, code: &str, message: &str) {
    let last: [OutPacket; 1] = [plain(answers::refused(code, message))];
    socket.close(&last, CLOSE_TIMEOUT).await;
}
