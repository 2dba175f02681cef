//! The access-proxy contract: namespace rules `join = "proxy"` and
//! `send = "proxy"` ask the backend, and `rpc` frames are forwarded to it.
//! The server's HTTP implementation adds the timeout, the concurrency bound
//! and the circuit breaker; the node caches the answers per connection.

use crate::{Identity, RoomName};
use async_trait::async_trait;
use serde_json::value::RawValue;
use std::time::Duration;

/// The backend's answer to a join or send question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessDecision {
    /// Whether the action is allowed.
    pub allow: bool,
    /// How long the connection may reuse this answer (allow and deny
    /// alike); `None`: ask again next time.
    pub cache_ttl: Option<Duration>,
}

/// Why the backend gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyFailure {
    /// The backend could not answer: down, timed out, or its circuit
    /// breaker is open. The client gets `unavailable` and should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The backend answered with a 4xx status and `{"message"}`.
    #[error("{message}")]
    Rejected {
        /// The HTTP status (400 to 499).
        status: u16,
        /// The backend's message, safe to show the client.
        message: String,
    },
}

/// Asks the backend about a connection's actions.
#[async_trait]
pub trait AccessProxy: Send + Sync + 'static {
    /// May `who` join `room` (a room whose namespace rule is `join = "proxy"`)?
    async fn join(&self, who: &Identity, room: &RoomName) -> Result<AccessDecision, ProxyFailure>;

    /// May `who` send `event` to `room` (rule `send = "proxy"`)?
    async fn send(
        &self,
        who: &Identity,
        room: &RoomName,
        event: &str,
    ) -> Result<AccessDecision, ProxyFailure>;

    /// Forwards an `rpc` frame of `who`'s connection `connection_id`; the
    /// backend's JSON answer goes back to the client as `rpc_result`.
    async fn rpc(
        &self,
        who: &Identity,
        connection_id: &str,
        method: &str,
        data: &RawValue,
    ) -> Result<Box<RawValue>, ProxyFailure>;
}
