//! The transitions the registry reports: a connection entering (admitted,
//! joining, written back after Redis lost it) or going (removed, leaving,
//! purged, reaped). Each is one script over the `{hooks}` sets (see
//! `scripts.rs`); the caller (the cluster registry) runs it next to the
//! registry write it belongs to.

use super::{int, RedisHooks};
use crate::cluster::redis_error;
use fred::types::Value;
use herald_core::hooks::{now_ms, NODE_LOST_CODE, NODE_LOST_REASON};
use herald_core::{BrokerError, ConnectionRecord, HookEvent, HookKind, RoomKey};

/// What a connection's removal reports beyond the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// Its node reported (or will report) `connection.closed` and
    /// `member.left` itself: only `user.offline` / `room.vacated`.
    Quiet,
    /// Its node is gone: `connection.closed` (code 1006, reason
    /// `node_lost`) and `member.left` for every room too.
    Lost,
}

/// A script argument for an event of `kind`: its JSON when the kind is
/// enabled, empty (nothing appended) otherwise.
fn body(hooks: &RedisHooks, kind: HookKind, make: impl FnOnce() -> HookEvent) -> Value {
    if hooks.set.contains(kind) {
        Value::Bytes(make().to_bytes())
    } else {
        Value::from("")
    }
}

impl RedisHooks {
    /// An admitted connection: `user.online` if it is its user's first.
    pub(crate) async fn opened(&self, rec: &ConnectionRecord) -> Result<(), BrokerError> {
        self.enter(rec, &[], "open").await.map(|_| ())
    }

    /// A connection Redis had lost, written back with its rooms (the
    /// transitions it makes are reported, so `online`/`offline` keep
    /// alternating per user in the outbox).
    pub(crate) async fn restore(
        &self,
        rec: &ConnectionRecord,
        rooms: &[RoomKey],
    ) -> Result<(), BrokerError> {
        self.enter(rec, rooms, "open").await.map(|_| ())
    }

    /// A join: `room.occupied` if it is the room's first member. Returns
    /// whether the connection was still live (a join racing with its
    /// removal adds nothing).
    pub(crate) async fn joined(
        &self,
        room: &RoomKey,
        rec: &ConnectionRecord,
    ) -> Result<bool, BrokerError> {
        self.enter(rec, std::slice::from_ref(room), "join").await
    }

    /// A leave: `room.vacated` if it was the room's last member.
    pub(crate) async fn left(
        &self,
        room: &RoomKey,
        rec: &ConnectionRecord,
    ) -> Result<(), BrokerError> {
        self.exit(rec, std::slice::from_ref(room), "leave", Farewell::Quiet)
            .await
            .map(|_| ())
    }

    /// A connection gone, with the rooms it was in: `room.vacated` and
    /// `user.offline` for the transitions, plus what `farewell` asks.
    /// Returns whether this call removed it (a second removal reports
    /// nothing).
    pub(crate) async fn closed(
        &self,
        rec: &ConnectionRecord,
        rooms: &[RoomKey],
        farewell: Farewell,
    ) -> Result<bool, BrokerError> {
        self.exit(rec, rooms, "close", farewell).await
    }

    async fn enter(
        &self,
        rec: &ConnectionRecord,
        rooms: &[RoomKey],
        mode: &str,
    ) -> Result<bool, BrokerError> {
        if !self.tracking() || (mode == "join" && !self.tracks_rooms()) {
            return Ok(true);
        }
        let rooms = if self.tracks_rooms() { rooms } else { &[] };
        self.check()?;
        let mut keys = Vec::with_capacity(3 + rooms.len());
        keys.push(self.keys.hooks_stream());
        keys.push(self.keys.hooks_trimmed());
        keys.push(self.keys.hooks_user(&rec.tenant, &rec.user_id));
        let mut args: Vec<Value> = vec![
            int(self.max_len),
            rec.connection_id.as_str().into(),
            int(now_ms()),
            mode.into(),
            body(self, HookKind::UserOnline, || {
                HookEvent::user_online(&rec.tenant, &rec.user_id)
            }),
        ];
        for room in rooms {
            keys.push(self.keys.hooks_room(room));
            args.push(body(self, HookKind::RoomOccupied, || {
                HookEvent::room_occupied(room)
            }));
        }
        let live: i64 = self
            .scripts
            .enter
            .run(&self.clients.commands, keys, args)
            .await
            .and_then(|v| v.convert())
            .map_err(redis_error)?;
        self.wake.notify_one();
        Ok(live == 1)
    }

    async fn exit(
        &self,
        rec: &ConnectionRecord,
        rooms: &[RoomKey],
        mode: &str,
        farewell: Farewell,
    ) -> Result<bool, BrokerError> {
        if !self.tracking() || (mode == "leave" && !self.tracks_rooms()) {
            return Ok(false);
        }
        let rooms = if self.tracks_rooms() { rooms } else { &[] };
        self.check()?;
        let lost = farewell == Farewell::Lost;
        let mut keys = Vec::with_capacity(3 + rooms.len());
        keys.push(self.keys.hooks_stream());
        keys.push(self.keys.hooks_trimmed());
        keys.push(self.keys.hooks_user(&rec.tenant, &rec.user_id));
        let closed = if lost {
            body(self, HookKind::ConnectionClosed, || {
                HookEvent::connection_closed(rec, NODE_LOST_CODE, NODE_LOST_REASON)
            })
        } else {
            Value::from("")
        };
        let mut args: Vec<Value> = vec![
            int(self.max_len),
            rec.connection_id.as_str().into(),
            int(now_ms()),
            mode.into(),
            closed,
            body(self, HookKind::UserOffline, || {
                HookEvent::user_offline(&rec.tenant, &rec.user_id)
            }),
        ];
        for room in rooms {
            keys.push(self.keys.hooks_room(room));
            args.push(if lost {
                body(self, HookKind::MemberLeft, || {
                    HookEvent::member_left(room, rec)
                })
            } else {
                Value::from("")
            });
            args.push(body(self, HookKind::RoomVacated, || {
                HookEvent::room_vacated(room)
            }));
        }
        let removed: i64 = self
            .scripts
            .exit
            .run(&self.clients.commands, keys, args)
            .await
            .and_then(|v| v.convert())
            .map_err(redis_error)?;
        self.wake.notify_one();
        Ok(removed == 1)
    }
}
