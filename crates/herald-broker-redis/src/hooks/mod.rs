//! Webhooks on Redis: the durable outbox ([`RedisHooks`] implements
//! [`herald_core::Outbox`]) and the cluster-wide transitions the registry
//! reports (`user.online` / `user.offline`, `room.occupied` /
//! `room.vacated`, and what the reaper reports for a dead node).
//!
//! What lives where (names from [`Keys`], all with the `{hooks}` hash tag,
//! so one script can touch any of them, on Redis Cluster too):
//! - `hooks_stream()`: the outbox, a stream of `{t: time_ms, b: json}`,
//!   bounded to [`MAX_LEN`] events: when the receiver stays away that
//!   long, the oldest are trimmed unsent and counted in
//!   `hooks_trimmed()`, which the lease holder reports.
//! - `hooks_lease()`: the dispatch lease, `SET NX PX <ttl>` naming one node
//!   process. Its TTL is one `broker.node_heartbeat` (at least 1 s; 5 s by
//!   default), renewed every 30% of it. Only its holder reads.
//! - `hooks_cursor()`: the id of the last acknowledged entry; it only moves
//!   forward, only by the lease holder, and everything behind it is trimmed.
//! - `hooks_user(tenant, user)`: set of the user's live connection ids;
//!   `hooks_room(room)`: set of the room's member connection ids. A
//!   transition is a set going 0 -> 1 or 1 -> 0, and its event is appended
//!   by the same script that changes the set, so it is reported exactly
//!   once however many nodes (or reapers) race.
//!
//! The transition sets are kept only when `webhooks.events` names a kind
//! that needs them ([`TRACKED`]; the rooms' sets only for `room.*` and
//! `member.left`); with webhooks off the engine sends no command it did
//! not send before.

mod outbox;
mod scripts;
mod transitions;

use crate::broker::script::LuaScript;
use crate::keys::Keys;
use crate::{RedisClients, RedisSettings};
use herald_core::{BrokerError, HookKind, HookSet};
use parking_lot::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use transitions::Farewell;

/// Bound of the outbox stream: a million waiting events, a few hundred MB
/// of Redis memory at most. Beyond, the oldest unsent are dropped and
/// counted (`herald_webhook_events_dropped_total{reason="outbox_full"}`).
pub const MAX_LEN: u64 = 1_000_000;
/// The shortest dispatch lease, whatever the heartbeat.
const MIN_LEASE: Duration = Duration::from_secs(1);
/// How often a holder waiting for events looks at the stream (events
/// appended by this node wake it at once).
const POLL: Duration = Duration::from_millis(100);
/// Events per append script call (each call is atomic; calls are in order).
const APPEND_CHUNK: usize = 256;

/// The kinds the transition sets exist for: the engine emits them.
pub const TRACKED: [HookKind; 6] = [
    HookKind::UserOnline,
    HookKind::UserOffline,
    HookKind::RoomOccupied,
    HookKind::RoomVacated,
    HookKind::ConnectionClosed,
    HookKind::MemberLeft,
];

/// The webhook side of the Redis engine: the outbox and the transitions.
pub struct RedisHooks {
    clients: RedisClients,
    keys: Keys,
    /// What `webhooks.events` enables.
    set: HookSet,
    /// This process's name in the lease: the node id and a random part, so
    /// a restarted process of the same node is a different holder.
    token: String,
    scripts: Scripts,
    /// Until when this process may read as the lease holder (by its own
    /// clock, a fifth short of the lease's TTL); `None` when it
    /// does not hold the lease.
    held_until: Mutex<Option<Instant>>,
    /// The outbox length at the last lease round, `u64::MAX` before one.
    backlog: AtomicU64,
    /// Woken by this node's appends, so a waiting holder reads at once.
    wake: Notify,
    /// How long the lease lives without renewal: a dead holder's successor
    /// starts sending at most this long (plus one renewal period) later.
    lease_ttl: Duration,
    /// Most events the outbox holds; beyond, the oldest unsent are dropped
    /// (counted by the lease holder).
    max_len: u64,
}

/// A number as a script argument.
fn int(n: u64) -> fred::types::Value {
    fred::types::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

struct Scripts {
    append: LuaScript,
    enter: LuaScript,
    exit: LuaScript,
    lease: LuaScript,
    release: LuaScript,
    read: LuaScript,
    ack: LuaScript,
}

impl RedisHooks {
    /// The outbox and transitions of the node `settings` describe, for the
    /// kinds in `set`.
    pub fn new(clients: RedisClients, settings: &RedisSettings, set: HookSet) -> Arc<Self> {
        Self::bounded(clients, settings, set, MAX_LEN)
    }

    /// [`RedisHooks::new`] with an outbox of at most `max_len` waiting
    /// events instead of [`MAX_LEN`].
    pub fn bounded(
        clients: RedisClients,
        settings: &RedisSettings,
        set: HookSet,
        max_len: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            clients,
            keys: Keys::new(&settings.prefix),
            set,
            token: format!("{}/{:016x}", settings.node_id, rand::random::<u64>()),
            scripts: Scripts {
                append: LuaScript::new(scripts::APPEND, "outbox_append"),
                enter: LuaScript::new(scripts::ENTER, "transition_enter"),
                exit: LuaScript::new(scripts::EXIT, "transition_exit"),
                lease: LuaScript::new(scripts::LEASE, "outbox_lease"),
                release: LuaScript::new(scripts::RELEASE, "outbox_release"),
                read: LuaScript::new(scripts::READ, "outbox_read"),
                ack: LuaScript::new(scripts::ACK, "outbox_ack"),
            },
            held_until: Mutex::new(None),
            backlog: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            lease_ttl: settings.node_heartbeat.max(MIN_LEASE),
            max_len: max_len.max(1),
        })
    }

    /// How often the holder renews the lease (and others try to take it).
    fn lease_renew(&self) -> Duration {
        self.lease_ttl * 3 / 10
    }

    /// The holder stops reading this long before the lease could expire in
    /// Redis, so two nodes never send at once.
    fn lease_margin(&self) -> Duration {
        self.lease_ttl / 5
    }

    /// Whether the registry keeps the transition sets (a kind in
    /// [`TRACKED`] is enabled).
    pub fn tracking(&self) -> bool {
        TRACKED.iter().any(|k| self.set.contains(*k))
    }

    /// Whether the registry keeps the rooms' sets too (`room.*`, or the
    /// reaper's `member.left`, which the room set makes exactly once).
    fn tracks_rooms(&self) -> bool {
        [
            HookKind::RoomOccupied,
            HookKind::RoomVacated,
            HookKind::MemberLeft,
        ]
        .iter()
        .any(|k| self.set.contains(*k))
    }

    /// Fails fast while the command connection is down.
    fn check(&self) -> Result<(), BrokerError> {
        if fred::interfaces::ClientLike::is_connected(&self.clients.commands) {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("redis is not connected".into()))
        }
    }
}
