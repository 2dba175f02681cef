//! Peers measured with the same scenarios as Herald (`--target`): Socket.IO
//! (Node's server, and Herald's own Socket.IO endpoint through the same
//! client) and Sockudo (the Pusher protocol). Each protocol lives in its
//! own module; the rest of the bench sees only [`Peer`]: how to enter a
//! room, what an incoming frame means, and how to publish over HTTP.
//!
//! Peers have no room offsets, so the publishers put each room's own
//! sequence number (1, 2, 3, … per room) in the event's `s`, and a peer
//! client counts loss, duplicates and order by it, as Herald's clients do
//! by offset (Herald's Socket.IO events carry the offset in their `meta`).
//! Latency comes from the same `t` stamp on the same clock.

pub mod pusher;
pub mod socketio;

use crate::client::{Ctx, Ws, CONNECT_TIMEOUT};
use crate::conn::{ConnReport, RoomSeen};
use crate::metrics::{now_us, OffsetTracker};
use crate::run::Shared;
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Herald itself (every scenario).
    Herald,
    /// A Socket.IO 4 server (idle, fanout): Node's with
    /// bench/peers/socketio/server.js, or Herald's own endpoint with
    /// `--socketio-server herald`. The same client drives both.
    Socketio,
    /// Sockudo, a Pusher-protocol server (idle, fanout).
    Sockudo,
}

/// A peer's protocol: one variant per peer module.
#[derive(Debug, Clone)]
pub enum Peer {
    /// Socket.IO v4 over a raw WebSocket (Node's server or Herald's endpoint).
    SocketIo(socketio::SocketIo),
    /// Pusher protocol 7 (Sockudo) with one app.
    Pusher(pusher::PusherApp),
}

/// What an incoming text frame means to a listening client.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A published event with its stamp.
    Event(SeqStamp),
    /// A frame to answer at once (a heartbeat).
    Reply(String),
    /// Protocol chatter the bench ignores.
    Ignore,
    /// A frame the bench could not read, by kind.
    Bad(&'static str),
}

/// The stamp publishers put in each event's data: send time (µs since
/// the Unix epoch) and the room's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct SeqStamp {
    /// Send time, µs since the Unix epoch.
    pub t: u64,
    /// The room's sequence number, from 1.
    pub s: u64,
}

impl Peer {
    /// Room (channel) `n` of namespace `ns`. Pusher channel names allow no
    /// `:`, so Sockudo and Node's Socket.IO use `{ns}-{n}`; Herald's
    /// Socket.IO endpoint wants Herald's `{ns}:{n}`.
    pub fn room(&self, ns: &str, n: u64) -> String {
        match self {
            Peer::SocketIo(sio) => sio.room(ns, n),
            Peer::Pusher(_) => format!("{ns}-{n}"),
        }
    }

    /// Whether events are published through Herald's own API (Herald's
    /// Socket.IO endpoint), rather than the peer's.
    pub fn publishes_to_herald(&self) -> bool {
        matches!(self, Peer::SocketIo(sio) if sio.server == socketio::SocketIoServer::Herald)
    }

    /// The WebSocket URL the clients connect to.
    pub fn ws_url(&self, ctx: &Ctx) -> String {
        let addr = ctx.target.addr;
        match self {
            Peer::SocketIo(sio) => sio.ws_url(addr),
            Peer::Pusher(app) => app.ws_url(addr),
        }
    }

    /// After the upgrade: the protocol's handshake, up to "connected".
    /// Socket.IO sends connection `index`'s token as its auth payload.
    async fn handshake(&self, ws: &mut Ws, ctx: &Ctx, index: u64) -> Result<(), String> {
        match self {
            Peer::SocketIo(_) => {
                let token = ctx
                    .token(&ctx.user_id(index))
                    .map_err(|e| format!("token: {e}"))?;
                socketio::handshake(ws, &token).await
            }
            Peer::Pusher(_) => pusher::handshake(ws).await,
        }
    }

    /// After the handshake: into `room`. Returns the room's position at
    /// the join (events after it are expected), 0 where the peer has none.
    async fn join(&self, ws: &mut Ws, room: &str) -> Result<u64, String> {
        match self {
            Peer::SocketIo(_) => socketio::join(ws, room).await,
            Peer::Pusher(_) => pusher::subscribe(ws, room).await.map(|()| 0),
        }
    }

    /// What an incoming text frame means.
    pub fn incoming(&self, text: &str) -> Incoming {
        match self {
            Peer::SocketIo(_) => socketio::incoming(text),
            Peer::Pusher(_) => pusher::incoming(text),
        }
    }

    /// The `data` of an event frame, as JSON text (Socket.IO only; the
    /// Pusher protocol carries it as a string).
    pub fn event_data<'a>(&self, text: &'a str) -> Option<&'a str> {
        match self {
            Peer::SocketIo(_) => socketio::event_data(text),
            Peer::Pusher(_) => None,
        }
    }

    /// The HTTP request publishing `data` (a JSON object) as `event` to `room`.
    pub fn publish_request(
        &self,
        http: &reqwest::Client,
        base: &str,
        room: &str,
        event: &str,
        data: &str,
    ) -> reqwest::RequestBuilder {
        match self {
            Peer::SocketIo(_) => socketio::publish_request(http, base, room, event, data),
            Peer::Pusher(app) => app.publish_request(http, base, room, event, data),
        }
    }
}

/// Reads text frames until `pick` accepts one, answering heartbeats and
/// skipping the rest; fails on close, error, or a frame `pick` rejects.
pub(crate) async fn expect<T>(
    ws: &mut Ws,
    what: &str,
    mut pick: impl FnMut(&str) -> Option<Result<T, String>>,
) -> Result<T, String> {
    // Bounded: a handshake is a few frames; the caller's timeout bounds time.
    for _ in 0..64 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Some(r) = pick(&t) {
                    return r;
                }
            }
            Some(Ok(Message::Close(c))) => {
                return Err(format!(
                    "closed {} before {what}",
                    c.map(|c| u16::from(c.code)).unwrap_or(0)
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("ws: {e}")),
            None => return Err(format!("closed before {what}")),
        }
    }
    Err(format!("no {what} in 64 frames"))
}

/// One listening client of a peer: connect, handshake, join its one room,
/// then record events until the run stops. No sending and no reconnects
/// (the peer scenarios are `idle` and `fanout`).
pub async fn listen(peer: &Peer, index: u64, room: String, sh: Arc<Shared>) -> ConnReport {
    let mut report = ConnReport::default();
    let mut stop = sh.stop.clone();
    if *stop.borrow() {
        return report;
    }
    let permit = sh.connect_gate.clone().acquire_owned().await.ok();
    let started = Instant::now();
    let url = peer.ws_url(&sh.ctx);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut ws = sh.ctx.open_ws(index, url).await?;
        peer.handshake(&mut ws, &sh.ctx, index).await?;
        Ok::<_, String>(ws)
    })
    .await
    .unwrap_or_else(|_| Err("timeout".into()));
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(reason) => {
            sh.count_failure(&reason);
            return report;
        }
    };
    sh.connect_us
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    sh.connects.fetch_add(1, Ordering::Relaxed);
    sh.open.fetch_add(1, Ordering::Relaxed);
    report.connected = true;
    // As for Herald, the ramp's gate covers the connect, not the join.
    drop(permit);
    let joined = tokio::time::timeout(CONNECT_TIMEOUT, peer.join(&mut ws, &room))
        .await
        .unwrap_or_else(|_| Err("join timeout".into()));
    let mut tracker = OffsetTracker::starting_at(0);
    match joined {
        Ok(position) => {
            tracker = OffsetTracker::starting_at(position);
            sh.joined.fetch_add(1, Ordering::Relaxed);
            receive(peer, &sh, &mut ws, &mut tracker, &mut stop).await;
        }
        Err(reason) => sh.count_failure(&reason),
    }
    sh.open.fetch_sub(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    report.rooms = vec![RoomSeen { room, tracker }];
    report
}

async fn receive(
    peer: &Peer,
    sh: &Shared,
    ws: &mut Ws,
    tracker: &mut OffsetTracker,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => {
                        let code = c.map(|c| u16::from(c.code)).unwrap_or(0);
                        sh.count_failure(&format!("closed by server {code}"));
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        sh.count_failure("connection lost");
                        return;
                    }
                };
                match peer.incoming(&text) {
                    Incoming::Event(st) => {
                        if sh.ctx.check_agent(st.s) && !peer.event_data(&text).is_some_and(crate::agent::check) {
                            sh.count_error("bad agent event");
                        }
                        sh.recorder.record(st.t, now_us());
                        tracker.see(st.s);
                    }
                    Incoming::Reply(r) => {
                        let sent = tokio::time::timeout(
                            Duration::from_secs(5),
                            ws.send(Message::text(r)),
                        )
                        .await;
                        if !matches!(sent, Ok(Ok(()))) {
                            sh.count_failure("heartbeat reply failed");
                            return;
                        }
                    }
                    Incoming::Ignore => {}
                    Incoming::Bad(kind) => sh.count_error(kind),
                }
            }
            _ = stop.changed() => return,
            _ = sleep_until(sh.deadline) => return,
        }
    }
}
