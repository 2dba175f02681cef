//! The per-connection protocol state machine (PROTOCOL.md 3), independent
//! of the transport: a transport feeds it frames and drains the
//! connection's queue.

use crate::access::{AccessCache, Action};
use crate::conn::Connection;
use crate::error::NodeError;
use crate::filter::check_patterns;
use crate::metrics;
use crate::node::Node;
use crate::queue::{Outbound, PositionChange};
use crate::rate::{TokenBucket, RATE_LIMIT_GRACE};
use crate::replay::{Replay, Resolved};
use herald_core::{CredentialContext, Publication, PublishRequest, RoomKey, RoomName};
use herald_protocol::{
    ClientRequest, CloseCode, ErrorCode, RequestId, Sender, ServerFrame, StreamPosition,
};
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reply to a text frame on a binary codec's connection.
pub(crate) const TEXT_REFUSED: &str =
    "text frames are not supported with herald.v1.msgpack; send MessagePack in binary frames";

/// A new rate-limit episode starts after this long without a refusal.
const EPISODE_GAP: Duration = Duration::from_secs(1);

/// An auto-joined room between the two phases of its join.
pub(crate) struct PendingJoin {
    pub(crate) key: RoomKey,
    /// Members (cluster-wide) when presence is on in the room.
    members: Option<Vec<herald_protocol::MemberSummary>>,
    pub(crate) position: StreamPosition,
    replay: Vec<Arc<Publication>>,
    /// Stored events after `replay` remain to be read.
    more: bool,
    recovered: Option<bool>,
    /// What `room_joined` reports as `replayed`.
    replayed: u64,
}

/// One client's session.
pub struct Session {
    pub(crate) node: Node,
    pub(crate) conn: Arc<Connection>,
    bucket: TokenBucket,
    limited_since: Option<Instant>,
    last_limited: Option<Instant>,
    /// Recovering joins whose events are still being queued, in order.
    pub(crate) replays: VecDeque<Replay>,
    /// The backend's cached answers for `proxy` rules.
    pub(crate) access: AccessCache,
    /// `rpc` calls in flight.
    pub(crate) rpc: crate::rpc::RpcCalls,
    /// Where a refreshed credential comes from; the transport's name until
    /// [`Session::set_credential_context`].
    pub(crate) credential_context: CredentialContext,
}

impl Session {
    pub(crate) fn new(node: Node, conn: Arc<Connection>) -> Self {
        let limits = node.limits();
        Self {
            bucket: TokenBucket::new(limits.messages_per_second, limits.burst),
            access: AccessCache::default(),
            rpc: crate::rpc::RpcCalls::new(&node.inner.cancel),
            credential_context: CredentialContext::for_transport(conn.transport.name),
            node,
            conn,
            limited_since: None,
            last_limited: None,
            replays: VecDeque::new(),
        }
    }

    /// The connection this session drives.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Handles one text frame from the client: a binary codec's connection
    /// (MessagePack) refuses it, as a text one refuses binary frames.
    pub async fn handle_text(&mut self, text: &str) {
        if !self.conn.codec.binary() {
            return self.handle_message(text.as_bytes()).await;
        }
        self.conn.touch();
        metrics::message_received();
        if self.admit_rate(None) {
            self.reply_error(None, ErrorCode::BadRequest, TEXT_REFUSED.into());
        }
    }

    /// Handles one message from the client, in the connection's codec.
    pub async fn handle_message(&mut self, message: &[u8]) {
        self.conn.touch();
        metrics::message_received();
        // Parsed before the rate check so a refusal can carry the request's
        // id: every request with an id gets exactly one reply.
        let parsed = self.conn.codec.decode(message);
        let id = match &parsed {
            Ok((id, _)) => id.clone(),
            Err(e) => e.id.clone(),
        };
        if !self.admit_rate(id.clone()) {
            return;
        }
        match parsed {
            Ok((_, request)) => {
                if let Err(e) = self.dispatch(id.clone(), request).await {
                    if e.is_broker_failure() {
                        tracing::warn!(connection_id = %self.conn.id, error = %e, "request failed in the broker");
                    }
                    self.reply_error(id, e.code(), e.client_message());
                }
            }
            Err(e) => self.reply_error(e.id, e.code, e.message),
        }
    }

    /// Handles a binary frame: a message for a binary codec, refused by a
    /// text one (Herald JSON).
    pub async fn handle_binary(&mut self, message: &[u8]) {
        if self.conn.codec.binary() {
            return self.handle_message(message).await;
        }
        self.conn.touch();
        metrics::message_received();
        if self.admit_rate(None) {
            self.reply_error(
                None,
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames".into(),
            );
        }
    }

    /// Counts a WebSocket ping or pong from the client against the rate
    /// limit like any other frame; false when it is over the limit (then it
    /// got `error` `rate_limited`, and the 4008 escalation runs), so a ping
    /// must not be answered.
    pub fn handle_control(&mut self) -> bool {
        self.conn.touch();
        metrics::message_received();
        self.admit_rate(None)
    }

    /// Answers a text frame that was not valid UTF-8, then closes with
    /// 1007: RFC 6455 (8.1) requires failing such a connection, and the
    /// WebSocket reader cannot go on after it anyway.
    pub fn reject_invalid_utf8(&mut self) {
        self.conn.touch();
        metrics::message_received();
        self.reply_error(
            None,
            ErrorCode::BadRequest,
            "text frame is not valid UTF-8".into(),
        );
        self.conn.close(CloseCode::InvalidPayload);
    }

    /// Token bucket with the 4008 escalation: refusals keep coming for
    /// [`RATE_LIMIT_GRACE`] (with no quiet second in between) close the
    /// connection.
    fn admit_rate(&mut self, id: Option<RequestId>) -> bool {
        let now = Instant::now();
        if self.bucket.try_take(now) {
            return true;
        }
        metrics::rate_limited();
        let new_episode = self
            .last_limited
            .is_none_or(|t| now.duration_since(t) > EPISODE_GAP);
        if new_episode {
            self.limited_since = Some(now);
        }
        self.last_limited = Some(now);
        if self
            .limited_since
            .is_some_and(|s| now.duration_since(s) >= RATE_LIMIT_GRACE)
        {
            self.conn.close(CloseCode::RateLimited);
        } else {
            self.reply_error(
                id,
                ErrorCode::RateLimited,
                "too many frames; slow down".into(),
            );
        }
        false
    }

    pub(crate) fn reply(&self, frame: ServerFrame) {
        self.conn.reply(&frame);
    }

    pub(crate) fn reply_error(&self, id: Option<RequestId>, code: ErrorCode, message: String) {
        self.reply(ServerFrame::Error { id, code, message });
    }

    async fn dispatch(
        &mut self,
        id: Option<RequestId>,
        request: ClientRequest,
    ) -> Result<(), NodeError> {
        match request {
            ClientRequest::Ping => self.reply(ServerFrame::Pong { id }),
            ClientRequest::Authenticate { token } => self.refresh(id, &token).await?,
            ClientRequest::JoinRoom { room, since } => self.join(id, &room, since).await?,
            ClientRequest::LeaveRoom { room } => self.leave(id, &room).await?,
            ClientRequest::Subscribe { events } => {
                check_patterns(&events)?;
                let max = self.node.limits().max_event_patterns;
                self.conn
                    .update_filter(|f| f.subscribe(&events, max))
                    .map_err(|e| {
                        NodeError::LimitExceeded(format!("{e} (limits.max_event_patterns)"))
                    })?;
                self.ack(id, None);
            }
            ClientRequest::Unsubscribe { events } => {
                check_patterns(&events)?;
                self.conn.update_filter(|f| f.unsubscribe(&events));
                self.ack(id, None);
            }
            ClientRequest::SendMessage { room, event, data } => {
                self.send_message(id, &room, event, data).await?
            }
            ClientRequest::Presence { room } => self.presence(id, &room).await?,
            ClientRequest::Rpc { method, data } => self.rpc(id, method, data)?,
        }
        Ok(())
    }

    fn ack(&self, id: Option<RequestId>, position: Option<StreamPosition>) {
        if let Some(id) = id {
            let (epoch, offset) =
                position.map_or((None, None), |p| (Some(p.epoch), Some(p.offset)));
            self.reply(ServerFrame::Ack { id, epoch, offset });
        }
    }

    pub(crate) fn room_key(&self, room: &str) -> Result<(RoomName, RoomKey), NodeError> {
        let name = RoomName::parse(room)?;
        let key = RoomKey::new(self.conn.tenant.clone(), name.clone());
        Ok((name, key))
    }

    async fn join(
        &mut self,
        id: Option<RequestId>,
        room: &str,
        since: Option<StreamPosition>,
    ) -> Result<(), NodeError> {
        let (name, key) = self.room_key(room)?;
        self.check_access(&name, Action::Join).await?;
        let rejoin = self.conn.in_room(&name);
        // A replay still running for this room is superseded by this join,
        // which then makes the announcement that replay still owed the
        // room's local members (else they would see `member_left` only).
        // It is kept aside: a rejoin that fails goes on with it.
        let (superseded, kept): (VecDeque<Replay>, _) = std::mem::take(&mut self.replays)
            .into_iter()
            .partition(|r| r.key == key);
        self.replays = kept;
        let announce = !rejoin || superseded.iter().any(|r| r.announce);
        if !rejoin {
            let mut rooms = self.conn.rooms().lock();
            if rooms.len() >= self.node.limits().max_rooms_per_connection {
                return Err(NodeError::LimitExceeded(format!(
                    "at most {} rooms per connection",
                    self.node.limits().max_rooms_per_connection
                )));
            }
            rooms.insert(name.clone());
        }
        let ns = self.node.namespaces().for_room(&name).clone();
        let inner = &self.node.inner;
        inner
            .rooms
            .begin_join(&key, &self.conn, ns.presence, rejoin);
        let resolved = self
            .resolve(&key, since.as_ref(), ns.history_size, ns.presence, !rejoin)
            .await;
        let resolved = match resolved {
            Ok(r) => r,
            Err((e, _)) if rejoin => {
                // A failed rejoin changes nothing: the membership goes on
                // as it was (docs/protocol.md 7.3), with its replay if one ran.
                inner.rooms.abort_rejoin(&key, &self.conn);
                self.replays.extend(superseded);
                self.feed_replay_all().await;
                return Err(e);
            }
            Err((e, subscribed)) => {
                self.drop_membership(&name, &key, subscribed, false).await;
                return Err(e);
            }
        };
        let members = if ns.presence {
            Some(self.members(&key).await)
        } else {
            None
        };
        let replayed = self.replayed(since.as_ref(), &resolved);
        let Resolved {
            position,
            replay,
            recovered,
            more,
        } = resolved;
        let recovered = since.as_ref().map(|_| recovered);
        let frame = Outbound::changing(
            self.conn.encode(&ServerFrame::RoomJoined {
                id,
                room: name.to_string(),
                epoch: position.epoch.clone(),
                offset: position.offset,
                recovered,
                replayed: since.as_ref().map(|_| replayed),
                members,
            }),
            PositionChange::Joined {
                room: name.clone(),
                position: position.clone(),
                recovered,
            },
        );
        if replay.is_empty() {
            inner
                .rooms
                .complete_join(&key, &self.conn, &position, Some(frame), &[], announce);
        } else {
            // The member stays pending while its replay is fed as the
            // socket drains; `room_joined` goes first.
            self.conn.send_item(frame);
            self.replays
                .push_back(Replay::new(key.clone(), &position, replay, more, announce));
        }
        if ns.presence && !rejoin {
            self.node.announce_presence(&key, &self.conn, true).await;
        }
        self.feed_replay_all().await;
        Ok(())
    }

    /// Removes this connection from `room`: locally (telling local presence
    /// members), and, when the join got as far as `subscribed`, at the
    /// broker and in the cluster registry; `was_live` members are announced
    /// as having left to the other nodes.
    async fn drop_membership(
        &self,
        name: &RoomName,
        key: &RoomKey,
        subscribed: bool,
        was_live: bool,
    ) {
        self.conn.rooms().lock().remove(name);
        self.node.inner.rooms.remove(key, &self.conn);
        if !subscribed {
            return;
        }
        if let Err(e) = self.node.broker().unsubscribe(key).await {
            tracing::warn!(room = %key, error = %e, "unsubscribe failed");
        }
        let presence = self.node.namespaces().for_room(name).presence;
        self.node
            .cluster_membership(key, &self.conn, presence, false)
            .await;
        if presence && was_live {
            self.node.announce_presence(key, &self.conn, false).await;
        }
    }

    async fn leave(&mut self, id: Option<RequestId>, room: &str) -> Result<(), NodeError> {
        let (name, key) = self.room_key(room)?;
        if !self.conn.in_room(&name) {
            return Err(NodeError::NotJoined(name.to_string()));
        }
        self.replays.retain(|r| r.key != key);
        self.drop_membership(&name, &key, true, true).await;
        let frame = self.conn.encode(&ServerFrame::RoomLeft {
            id,
            room: name.to_string(),
            reason: None,
        });
        self.conn.send_item(Outbound::changing(
            frame,
            PositionChange::Left { room: name },
        ));
        Ok(())
    }

    async fn send_message(
        &mut self,
        id: Option<RequestId>,
        room: &str,
        event: Option<String>,
        data: Box<RawValue>,
    ) -> Result<(), NodeError> {
        let (name, key) = self.room_key(room)?;
        if !self.conn.in_room(&name) {
            return Err(NodeError::NotJoined(name.to_string()));
        }
        let event = event.unwrap_or_else(|| "message".to_owned());
        if event.is_empty() || event.len() > 255 {
            return Err(NodeError::BadRequest(
                "send_message: `event` must be 1 to 255 bytes".into(),
            ));
        }
        // Checked after the event name, which a `proxy` rule sends on.
        self.check_access(&name, Action::Send(&event)).await?;
        let hook = self.node.hook_message(&key, &event, &data);
        let counted = self
            .node
            .inner
            .events
            .published_counter(name.namespace(), &event);
        let outcome = self
            .node
            .broker()
            .publish(PublishRequest {
                room: key,
                event,
                data,
                from: Some(Sender {
                    user_id: self.conn.user_id.to_string(),
                    connection_id: self.conn.id.to_string(),
                }),
                exclude_connection: None,
                idempotency_key: None,
                history: self.node.history_policy(&name),
                trace: None,
                critical: false,
                conflation_key: None,
            })
            .await?;
        metrics::published();
        counted.increment(1);
        if let Some(hook) = hook {
            self.node
                .hook_message_sent(hook, &self.conn, &outcome.position);
        }
        self.ack(id, Some(outcome.position));
        Ok(())
    }

    /// Joins the auto-join rooms and the backend's `extra` rooms
    /// ([`Session::rooms_at_open`]) as pending members and reads their
    /// positions (or, with a `resume` position, their history); events
    /// arriving meanwhile are buffered until [`Session::finish_auto_join`],
    /// so they follow `authenticated`.
    pub(crate) async fn auto_join(
        &mut self,
        resume: &HashMap<RoomName, StreamPosition>,
        extra: &[String],
    ) -> Vec<PendingJoin> {
        let mut pending = Vec::new();
        for name in self.rooms_at_open(extra).await {
            let key = RoomKey::new(self.conn.tenant.clone(), name.clone());
            let ns = self.node.namespaces().for_room(&name);
            let since = resume.get(&name);
            self.conn.rooms().lock().insert(name.clone());
            self.node
                .inner
                .rooms
                .begin_join(&key, &self.conn, ns.presence, false);
            match self
                .resolve(&key, since, ns.history_size, ns.presence, true)
                .await
            {
                Ok(resolved) => {
                    let members = if ns.presence {
                        Some(self.members(&key).await)
                    } else {
                        None
                    };
                    let replayed = self.replayed(since, &resolved);
                    pending.push(PendingJoin {
                        key,
                        members,
                        position: resolved.position,
                        replay: resolved.replay,
                        more: resolved.more,
                        recovered: since.map(|_| resolved.recovered),
                        replayed,
                    });
                }
                Err((e, subscribed)) => {
                    tracing::warn!(room = %key, error = %e, "auto-join failed");
                    self.drop_membership(&name, &key, subscribed, false).await;
                }
            }
        }
        pending
    }

    /// Turns the auto-joined rooms live; with `announce`, each gets a
    /// `room_joined` first (SSE streams list every room that way).
    /// Returns the rooms with presence on, to announce the member in.
    pub(crate) fn finish_auto_join(
        &mut self,
        pending: Vec<PendingJoin>,
        announce: bool,
    ) -> Vec<RoomKey> {
        let rooms = &self.node.inner.rooms;
        let mut presence_rooms = Vec::new();
        for p in pending {
            let first = announce.then(|| {
                let frame = self.conn.encode(&ServerFrame::RoomJoined {
                    id: None,
                    room: p.key.name.to_string(),
                    epoch: p.position.epoch.clone(),
                    offset: p.position.offset,
                    recovered: p.recovered,
                    replayed: p.recovered.map(|_| p.replayed),
                    members: p.members.clone(),
                });
                Outbound::changing(
                    frame,
                    PositionChange::Joined {
                        room: p.key.name.clone(),
                        position: p.position.clone(),
                        recovered: p.recovered,
                    },
                )
            });
            if p.members.is_some() {
                presence_rooms.push(p.key.clone());
            }
            if p.replay.is_empty() {
                rooms.complete_join(&p.key, &self.conn, &p.position, first, &[], true);
            } else {
                if let Some(frame) = first {
                    self.conn.send_item(frame);
                }
                self.replays
                    .push_back(Replay::new(p.key, &p.position, p.replay, p.more, true));
            }
        }
        presence_rooms
    }

    /// Tells the other nodes about this member in `rooms` (presence).
    pub(crate) async fn announce_joined(&self, rooms: &[RoomKey]) {
        for key in rooms {
            self.node.announce_presence(key, &self.conn, true).await;
        }
    }

    /// Joins `room` as if the client sent `join_room` without an id (SSE
    /// streams join the rooms of their query this way).
    pub async fn join_room(
        &mut self,
        room: &str,
        since: Option<StreamPosition>,
    ) -> Result<(), NodeError> {
        self.join(None, room, since).await
    }

    /// Ends the session: leaves every room (telling presence members),
    /// forgets the connection and records why it closed.
    pub async fn end(self, reason: &'static str) {
        // The record still lists the rooms: the registry drops the
        // connection's presence entries with it.
        let record = self.node.record_of(&self.conn);
        let rooms: Vec<RoomName> = std::mem::take(&mut *self.conn.rooms().lock())
            .into_iter()
            .collect();
        for name in rooms {
            let key = RoomKey::new(self.conn.tenant.clone(), name.clone());
            self.node.inner.rooms.remove(&key, &self.conn);
            if let Err(e) = self.node.broker().unsubscribe(&key).await {
                tracing::warn!(room = %key, error = %e, "unsubscribe failed");
            }
            if self.node.namespaces().for_room(&name).presence {
                self.node.announce_presence(&key, &self.conn, false).await;
            }
        }
        self.node.hook_closed(&self.conn, reason).await;
        self.node.inner.registry.remove(&self.conn);
        self.node.cluster_remove(&record).await;
        metrics::connection_closed(reason, self.conn.transport.name);
        metrics::connections(self.node.inner.registry.len());
    }
}
