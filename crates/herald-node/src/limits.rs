//! The limits that protect a node (PROTOCOL.md 1, `limits.*`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use herald_core::PerUserPolicy;

/// Limits applied by a node: the `[limits]` table of the config, with the
/// defaults of the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open sockets a node accepts (503 beyond).
    pub max_connections: usize,
    /// Connections a user may hold.
    pub max_connections_per_user: usize,
    /// What to do past `max_connections_per_user`.
    pub per_user_policy: PerUserPolicy,
    /// Rooms one connection may be in, auto-joined ones included.
    pub max_rooms_per_connection: usize,
    /// Largest client frame, in bytes (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Sustained client frames per second.
    pub messages_per_second: u32,
    /// Bucket size for bursts of client frames.
    pub burst: u32,
    /// Frames a connection's send queue holds before it is cut (4011).
    pub send_queue_messages: usize,
    /// Bytes a connection's send queue holds before it is cut (4011).
    pub send_queue_bytes: usize,
    /// Time allowed for the `authenticate` frame.
    #[serde(with = "herald_core::duration")]
    pub auth_timeout: Duration,
    /// Interval of server pings.
    #[serde(with = "herald_core::duration")]
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed (4014).
    #[serde(with = "herald_core::duration")]
    pub stale_timeout: Duration,
    // hardening group A: the unauthenticated phase and per-IP caps
    /// Sockets upgraded but not yet authenticated a node holds (503 beyond).
    pub max_pending_connections: usize,
    /// Largest frame, and fragmented message, accepted before
    /// `authenticate` (close 1009 beyond); the smaller of this and
    /// `max_message_bytes` applies.
    pub max_pending_message_bytes: usize,
    /// WebSocket and SSE connections one remote IP may hold (429 beyond);
    /// 0 turns the cap off.
    pub max_connections_per_ip: usize,
    // group B: subscription patterns cap, history byte budgets
    /// Distinct event patterns (`subscribe`) one connection may hold.
    pub max_event_patterns: usize,
    /// Bytes of history one room keeps (oldest events trimmed first); a
    /// namespace's `history_max_bytes` overrides it.
    pub history_room_bytes: usize,
    /// Bytes of history the whole node keeps with the memory engine (oldest
    /// events of any room trimmed first).
    pub history_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_user: 10,
            per_user_policy: PerUserPolicy::Reject,
            max_rooms_per_connection: 256,
            max_message_bytes: 1_048_576,
            messages_per_second: 100,
            burst: 200,
            send_queue_messages: 1024,
            send_queue_bytes: 4_194_304,
            auth_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(25),
            stale_timeout: Duration::from_secs(60),
            // hardening group A
            max_pending_connections: 1024,
            max_pending_message_bytes: 16_384,
            max_connections_per_ip: 0,
            // group B
            max_event_patterns: 64,
            history_room_bytes: 1_048_576,
            history_total_bytes: 268_435_456,
        }
    }
}
