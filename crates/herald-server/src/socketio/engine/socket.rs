//! [`EioSocket`]: one Engine.IO session as the Socket.IO layer sees it,
//! whichever transport carries it, and the move from polling to WebSocket
//! when an upgrade completes.

use super::table::{PollShared, PollState};
use super::websocket::{self, WsLink};
use super::{EioClosed, EioEvent, OutPacket};
use bytes::Bytes;
use herald_socketio::engineio::Packet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The transport under a session.
enum Link {
    /// HTTP long polling; the state is shared with the requests.
    Polling(Arc<PollShared>),
    /// A WebSocket (from the start, or after an upgrade).
    WebSocket(WsLink),
    /// Closed (while `close` runs, or after).
    Gone,
}

/// One Engine.IO session, owned by its Socket.IO task.
pub(crate) struct EioSocket {
    sid: Box<str>,
    link: Link,
    /// Why the session ended, once it has: reported by every later `recv`.
    ended: Option<&'static str>,
}

/// What a polling session's state says to do next.
enum Step {
    Packet(Packet),
    Ended(&'static str),
    PollTimeout,
    Upgrade(Box<crate::ws::socket::WsSocket>, Vec<OutPacket>),
}

/// The end of `send`'s wait on a polling session.
enum Queued {
    Done,
    Ended,
    PollTimeout,
    Upgrade(Box<crate::ws::socket::WsSocket>, Vec<OutPacket>),
}

impl EioSocket {
    /// A session on HTTP long polling.
    pub(super) fn polling(shared: Arc<PollShared>) -> Self {
        Self {
            sid: shared.sid.clone(),
            link: Link::Polling(shared),
            ended: None,
        }
    }

    /// A session on a WebSocket from its start.
    pub(super) fn websocket(sid: Box<str>, link: WsLink) -> Self {
        Self {
            sid,
            link: Link::WebSocket(link),
            ended: None,
        }
    }

    /// The session id.
    #[allow(dead_code)] // For the Socket.IO layer's logs.
    pub(crate) fn sid(&self) -> &str {
        &self.sid
    }

    /// `"polling"` or `"websocket"`, as of now.
    #[allow(dead_code)] // For the Socket.IO layer's logs.
    pub(crate) fn transport_name(&self) -> &'static str {
        match self.link {
            Link::Polling(_) => "polling",
            Link::WebSocket(_) | Link::Gone => "websocket",
        }
    }

    /// The next event from the client. Cancel-safe (used inside
    /// `select!`). Handles pings/upgrade internally.
    pub(crate) async fn recv(&mut self) -> EioEvent {
        loop {
            if let Some(reason) = self.ended {
                return EioEvent::Closed(reason);
            }
            let event = match &mut self.link {
                Link::Gone => EioEvent::Closed("closed"),
                Link::WebSocket(link) => link.recv().await,
                Link::Polling(shared) => match poll_step(shared).await {
                    Step::Packet(packet) => {
                        shared.wake();
                        match websocket::packet_event(packet) {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                    Step::Ended(reason) => EioEvent::Closed(reason),
                    Step::PollTimeout => {
                        shared.end("poll_timeout");
                        EioEvent::Closed("poll_timeout")
                    }
                    Step::Upgrade(socket, left) => {
                        self.switch(*socket, &left);
                        continue;
                    }
                },
            };
            if let EioEvent::Closed(reason) = event {
                self.ended = Some(reason);
                // A polling client that sent `1` (or broke the protocol)
                // is gone: its sid is forgotten now, not after `close`.
                if let Link::Polling(shared) = &self.link {
                    shared.end(reason);
                }
            }
            return event;
        }
    }

    /// Sends packets, in order: one WebSocket text frame each, or queued
    /// for the next poll (batched). Returns once written to the socket /
    /// handed to a poll, or buffered within a bound of about
    /// `limits.send_queue_bytes`; waits otherwise. Err once the session is
    /// gone. Not cancel-safe, except that a caller may drop the future and
    /// then abandon the socket.
    pub(crate) async fn send(&mut self, packets: &[OutPacket]) -> Result<(), EioClosed> {
        loop {
            if self.ended.is_some() {
                return Err(EioClosed);
            }
            match &mut self.link {
                Link::Gone => return Err(EioClosed),
                Link::WebSocket(link) => {
                    return link.send(packets).await.map_err(|_| {
                        self.ended = Some("write_failed");
                        EioClosed
                    });
                }
                Link::Polling(shared) => match queue(shared, packets).await {
                    Queued::Done => {
                        shared.wake();
                        return Ok(());
                    }
                    Queued::Ended => return Err(EioClosed),
                    Queued::PollTimeout => {
                        shared.end("poll_timeout");
                        self.ended = Some("poll_timeout");
                        return Err(EioClosed);
                    }
                    Queued::Upgrade(socket, left) => self.switch(*socket, &left),
                },
            }
        }
    }

    /// Hands a WebSocket session's writes to another writer (a
    /// [`herald_node::SocketWriter`] writing the connection's queue into
    /// the socket, with no task in between): its socket, once every frame
    /// this side queued is written (call `send(&[])` first). `None` on
    /// polling, or while frames are unwritten. Until
    /// [`Self::take_back_writes`], this side writes nothing: `send`,
    /// `ping` and `close` must not be called, and control frames (pongs, a
    /// close) are kept for [`Self::take_control`].
    pub(crate) fn hand_over_writes(&mut self) -> Option<Arc<crate::http::Conn>> {
        match &mut self.link {
            Link::WebSocket(link) if self.ended.is_none() => link.hand_over(),
            _ => None,
        }
    }

    /// What permessage-deflate negotiated, when the session is on a
    /// WebSocket that negotiated it.
    pub(crate) fn deflate(&self) -> Option<crate::ws::deflate::Deflate> {
        match &self.link {
            Link::WebSocket(link) => link.deflate(),
            _ => None,
        }
    }

    /// Whether the writes are handed over.
    pub(crate) fn writes_handed_over(&self) -> bool {
        matches!(&self.link, Link::WebSocket(link) if link.handed_over())
    }

    /// Writes are this side's again (the other writer stopped).
    pub(crate) fn take_back_writes(&mut self) {
        if let Link::WebSocket(link) = &mut self.link {
            link.take_back();
        }
    }

    /// Whole WebSocket control frames kept while the writes are handed
    /// over, for the other writer.
    pub(crate) fn take_control(&mut self) -> Option<Bytes> {
        match &mut self.link {
            Link::WebSocket(link) => link.take_control(),
            _ => None,
        }
    }

    /// An Engine.IO ping (`2`).
    pub(crate) async fn ping(&mut self) -> Result<(), EioClosed> {
        self.send(&[OutPacket {
            head: Bytes::from_static(b"2"),
            tail: None,
            compressed: false,
        }])
        .await
    }

    /// Sends `last`, then ends the session: on WebSocket a close frame and
    /// the TCP close; on polling the packets and a close packet (`1`) to
    /// the next GET, waiting at most `timeout`, then the sid is forgotten
    /// (later requests with it get HTTP 400
    /// `{"code":1,"message":"Session ID unknown"}` as Engine.IO servers
    /// answer).
    pub(crate) async fn close(mut self, last: &[OutPacket], timeout: Duration) {
        // An upgrade that completed meanwhile: the close goes there.
        if let Link::Polling(shared) = &self.link {
            let upgraded = shared.update(|s| (PollShared::take_upgrade(s), true));
            if let Some((socket, left)) = upgraded {
                self.switch(*socket, &left);
            }
        }
        match std::mem::replace(&mut self.link, Link::Gone) {
            Link::Gone => {}
            Link::WebSocket(link) => link.close(last, timeout).await,
            Link::Polling(shared) => {
                let deadline = Instant::now() + timeout;
                // `last`, then the close packet `1` in a GET of its own, as
                // Engine.IO servers close after a drain: engine.io-client
                // acts on a payload's `1` at once but hands its messages to
                // Socket.IO a tick later, so a `41` and a `1` in one payload
                // end the connection as "transport close" (and it
                // reconnects) instead of as the server's DISCONNECT.
                let close = [OutPacket {
                    head: Bytes::from_static(b"1"),
                    tail: None,
                    compressed: false,
                }];
                for packets in [last, &close[..]] {
                    if packets.is_empty() {
                        continue;
                    }
                    let queued = shared.update(|s| {
                        if s.ended.is_some() {
                            return (false, false);
                        }
                        for packet in packets.iter().cloned() {
                            s.out_bytes += packet.len();
                            s.out.push_back(packet);
                        }
                        s.closing = true;
                        (true, true)
                    });
                    if !queued {
                        break;
                    }
                    // Until a GET took them, or an upgrade in flight
                    // completed: then what no GET took goes on the
                    // WebSocket, which closes after it.
                    let waited = tokio::time::timeout_at(
                        deadline,
                        shared.wait_for(|s| {
                            if s.ended.is_some() || s.out.is_empty() {
                                Ok(None)
                            } else if let Some(upgrade) = PollShared::take_upgrade(s) {
                                Ok(Some(upgrade))
                            } else {
                                Err(None)
                            }
                        }),
                    )
                    .await;
                    match waited {
                        Ok(None) => {}
                        Ok(Some((socket, left))) => {
                            self.link = Link::Polling(shared);
                            self.switch(*socket, &left);
                            if let Link::WebSocket(link) =
                                std::mem::replace(&mut self.link, Link::Gone)
                            {
                                let rest = deadline.saturating_duration_since(Instant::now());
                                link.close(&[], rest).await;
                            }
                            return;
                        }
                        Err(_) => break,
                    }
                }
                shared.end("server_closed");
            }
        }
    }

    /// Moves the session to the WebSocket an upgrade completed on; the
    /// packets no GET took go first.
    fn switch(&mut self, socket: crate::ws::socket::WsSocket, left: &[OutPacket]) {
        let Link::Polling(shared) = &self.link else {
            return;
        };
        let stall = shared.config.stall;
        shared.forget();
        shared.wake();
        let mut link = WsLink::new(socket, stall);
        link.queue_packets(left);
        tracing::debug!(sid = %self.sid, "Engine.IO session upgraded to WebSocket");
        self.link = Link::WebSocket(link);
    }
}

impl Drop for EioSocket {
    fn drop(&mut self) {
        // A session dropped without `close` (its task ended): requests
        // with its sid are refused and a pending GET gets `1`.
        if let Link::Polling(shared) = &self.link {
            shared.end("socket_dropped");
        }
    }
}

/// Waits for what a polling session's `recv` must handle next.
async fn poll_step(shared: &PollShared) -> Step {
    shared
        .wait_for(|s| {
            if let Some(packet) = s.inbox.pop_front() {
                return Ok(Step::Packet(packet));
            }
            if let Some(reason) = s.ended {
                return Ok(Step::Ended(reason));
            }
            if let Some((socket, left)) = PollShared::take_upgrade(s) {
                return Ok(Step::Upgrade(socket, left));
            }
            poll_timeout(shared, s).map_or(Ok(Step::PollTimeout), Err)
        })
        .await
}

/// Queues `packets` for the next GET once the queue is under its bound.
async fn queue(shared: &PollShared, packets: &[OutPacket]) -> Queued {
    let bound = shared.config.send_bound;
    shared
        .wait_for(|s| {
            if s.ended.is_some() || s.closing {
                return Ok(Queued::Ended);
            }
            if let Some((socket, left)) = PollShared::take_upgrade(s) {
                return Ok(Queued::Upgrade(socket, left));
            }
            if s.out_bytes < bound {
                for packet in packets {
                    s.out_bytes += packet.len();
                    s.out.push_back(packet.clone());
                }
                return Ok(Queued::Done);
            }
            poll_timeout(shared, s).map_or(Ok(Queued::PollTimeout), Err)
        })
        .await
}

/// `Some(when to check again)` while the session may still be polled;
/// `None` once it went pingInterval + pingTimeout without a GET.
fn poll_timeout(shared: &PollShared, state: &PollState) -> Option<Option<Instant>> {
    match shared.poll_deadline(state) {
        Some(deadline) if deadline <= Instant::now() => None,
        deadline => Some(deadline),
    }
}
