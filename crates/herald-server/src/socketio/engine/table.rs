//! The node's table of long-polling sessions by `sid`, and the state one
//! such session shares between its Socket.IO task ([`super::EioSocket`])
//! and the HTTP requests that poll it, post to it or probe an upgrade.
//!
//! Only polling sessions are in the table: a WebSocket-only session is
//! reached through its own TCP connection and nothing else. A session
//! leaves the table when it ends, upgrades, or its socket is dropped.

use super::{Config, OutPacket};
use crate::ws::socket::WsSocket;
use herald_socketio::engineio::Packet;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Polling sessions of this node by `sid`.
#[derive(Default)]
pub(super) struct Table {
    sessions: Mutex<HashMap<Box<str>, Arc<PollShared>>>,
}

impl Table {
    /// The live session `sid`, if this node has it.
    pub(super) fn get(&self, sid: &str) -> Option<Arc<PollShared>> {
        self.sessions.lock().get(sid).cloned()
    }

    fn insert(&self, shared: Arc<PollShared>) {
        self.sessions.lock().insert(shared.sid.clone(), shared);
    }

    fn remove(&self, sid: &str) {
        self.sessions.lock().remove(sid);
    }
}

/// Where an upgrade probe of a polling session stands.
pub(super) enum Probe {
    /// No WebSocket is probing.
    None,
    /// A WebSocket is exchanging `2probe` / `3probe`.
    Probing,
    /// The client sent `5` on this WebSocket: the session moves to it at
    /// its next `recv`/`send`.
    Ready(Box<WsSocket>),
}

/// What the parties of one polling session share, under one lock.
pub(super) struct PollState {
    /// Packets waiting for a GET, in order.
    pub(super) out: VecDeque<OutPacket>,
    /// Their bytes.
    pub(super) out_bytes: usize,
    /// Packets a POST delivered, not yet taken by `recv` (at most one
    /// POST's worth: a POST waits for the previous one's to be taken).
    pub(super) inbox: VecDeque<Packet>,
    /// A GET is waiting for packets.
    pub(super) polling: bool,
    /// A POST is being read or delivered.
    pub(super) posting: bool,
    /// When the last GET ended (or the handshake, before the first one).
    pub(super) last_poll: Instant,
    /// GETs answer `6` at once: a probe got its `3probe`, and the client
    /// pauses polling (waits for its GET to return) before it sends `5`.
    /// Set until the probe ends, so a GET that was already on its way
    /// when `2probe` came is released too.
    pub(super) release: bool,
    /// The upgrade in progress, if any.
    pub(super) probe: Probe,
    /// Why the session ended, once it has; requests then get
    /// "Session ID unknown" and `recv` reports it.
    pub(super) ended: Option<&'static str>,
    /// The server is closing: `1` is queued and nothing follows it.
    pub(super) closing: bool,
    /// The session moved to a WebSocket.
    pub(super) upgraded: bool,
}

/// One polling session: its id, its state, and the wake-up for whoever
/// waits on that state.
pub(super) struct PollShared {
    /// The session id.
    pub(super) sid: Box<str>,
    /// The timings and bounds of the node, as of the handshake.
    pub(super) config: Config,
    table: Arc<Table>,
    state: Mutex<PollState>,
    /// Woken (all waiters) on every change a waiter may care about.
    changed: Notify,
}

impl PollShared {
    /// A new session `sid`, put in `table`.
    pub(super) fn register(table: &Arc<Table>, sid: Box<str>, config: Config) -> Arc<Self> {
        let shared = Arc::new(Self {
            sid,
            config,
            table: table.clone(),
            state: Mutex::new(PollState {
                out: VecDeque::new(),
                out_bytes: 0,
                inbox: VecDeque::new(),
                polling: false,
                posting: false,
                last_poll: Instant::now(),
                release: false,
                probe: Probe::None,
                ended: None,
                closing: false,
                upgraded: false,
            }),
            changed: Notify::new(),
        });
        table.insert(shared.clone());
        shared
    }

    /// Runs `f` on the state under the lock; wakes every waiter afterwards
    /// when `f` says something changed.
    pub(super) fn update<T>(&self, f: impl FnOnce(&mut PollState) -> (T, bool)) -> T {
        let (value, changed) = f(&mut self.state.lock());
        if changed {
            self.changed.notify_waiters();
        }
        value
    }

    /// Ends the session for `reason` (unless it already ended): it leaves
    /// the table, and every waiter wakes to see it.
    pub(super) fn end(&self, reason: &'static str) {
        self.update(|s| {
            if s.ended.is_none() {
                s.ended = Some(reason);
            }
            ((), true)
        });
        self.table.remove(&self.sid);
    }

    /// Takes the session out of the table without ending it (it moved to a
    /// WebSocket): later requests with its sid are refused.
    pub(super) fn forget(&self) {
        self.table.remove(&self.sid);
    }

    /// Wakes every waiter (after a change made through [`Self::wait_for`]'s
    /// check, such as packets taken from the queue).
    pub(super) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until `check` (run under the lock, first at once, then after
    /// every change) returns `Ok`; an `Err` names the time at which to
    /// check again even if nothing changed (a deadline), if any.
    /// Cancel-safe.
    pub(super) async fn wait_for<T>(
        &self,
        mut check: impl FnMut(&mut PollState) -> Result<T, Option<Instant>>,
    ) -> T {
        loop {
            // Registered before the check, so a change between the check
            // and the wait is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = match check(&mut self.state.lock()) {
                Ok(found) => return found,
                Err(deadline) => deadline,
            };
            match deadline {
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Takes a completed upgrade: the WebSocket, and the packets no GET
    /// took, to be written there first. From then on requests with the
    /// session's sid are refused; a pending GET answers `6`.
    pub(super) fn take_upgrade(state: &mut PollState) -> Option<(Box<WsSocket>, Vec<OutPacket>)> {
        if !matches!(state.probe, Probe::Ready(_)) {
            return None;
        }
        let Probe::Ready(socket) = std::mem::replace(&mut state.probe, Probe::None) else {
            return None;
        };
        state.upgraded = true;
        state.out_bytes = 0;
        Some((socket, std::mem::take(&mut state.out).into()))
    }

    /// When the session times out for want of a GET: none is pending and
    /// the last ended pingInterval + pingTimeout ago.
    pub(super) fn poll_deadline(&self, state: &PollState) -> Option<Instant> {
        (!state.polling && !state.upgraded)
            .then(|| state.last_poll + self.config.ping_interval + self.config.ping_timeout)
    }
}
