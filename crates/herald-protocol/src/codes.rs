//! Error codes carried by `error` frames and API errors, and WebSocket close
//! codes with whether a client should reconnect after them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `error` frame or an HTTP API error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed: bad JSON, missing or mistyped fields.
    BadRequest,
    /// The frame's `type` is not one the server knows.
    UnknownType,
    /// No valid credentials.
    Unauthorized,
    /// Credentials are valid but do not allow this.
    Forbidden,
    /// The room named is not joined by this connection.
    NotJoined,
    /// Too many requests; slow down.
    RateLimited,
    /// The payload is over the size limit.
    TooLarge,
    /// A configured limit (rooms per connection, connections) was reached.
    LimitExceeded,
    /// The broker cannot be reached right now; retry later.
    Unavailable,
    /// A bug or unexpected failure on the server.
    Internal,
    /// The resource does not exist (HTTP API only; an extension).
    NotFound,
}

impl ErrorCode {
    /// The wire string, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotJoined => "not_joined",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::LimitExceeded => "limit_exceeded",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closes a WebSocket. Codes 1000-1009 are RFC 6455's; the
/// 40xx range is Herald's own. Whether a client should reconnect is part of
/// the contract, so it lives here next to the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure (the client asked, or the server is done).
    Normal,
    /// 1001: the node is shutting down; reconnect elsewhere.
    GoingAway,
    /// 1002: the client broke RFC 6455 framing (an unmasked or reserved
    /// frame, a bad continuation, an oversized control frame); an
    /// extension to the contract's list.
    ProtocolError,
    /// 1007: a text frame was not valid UTF-8 (RFC 6455 8.1 requires
    /// failing the connection; an extension to the contract's list).
    InvalidPayload,
    /// 1009: a frame exceeded `limits.max_message_bytes`.
    TooBig,
    /// 4001: no valid token, or none arrived within `limits.auth_timeout`.
    Unauthorized,
    /// 4008: still over the rate limit after 5 s of `rate_limited` errors.
    RateLimited,
    /// 4010: replaced by a newer session of the same user.
    SessionReplaced,
    /// 4011: the send queue overflowed (slow consumer).
    SlowConsumer,
    /// 4012: the token expired and no fresh one was sent.
    TokenExpired,
    /// 4013: disconnected by the HTTP API.
    DisconnectedByApi,
    /// 4014: nothing heard from the client within `limits.stale_timeout`.
    Stale,
    /// 4029: over `limits.max_connections_per_user` under the `reject` policy.
    TooManyConnections,
    /// 1013: the node cannot admit the connection now (its cluster registry
    /// is unreachable); try again later, maybe on another node (RFC 6455's
    /// "Try Again Later"; an extension to the contract's list).
    TryAgainLater,
}

impl CloseCode {
    /// Every close code.
    pub const ALL: [CloseCode; 14] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::TooBig,
        Self::Unauthorized,
        Self::RateLimited,
        Self::SessionReplaced,
        Self::SlowConsumer,
        Self::TokenExpired,
        Self::DisconnectedByApi,
        Self::Stale,
        Self::TooManyConnections,
        Self::TryAgainLater,
    ];

    /// The close code numbered `code`, if Herald uses it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The numeric close code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::TooBig => 1009,
            Self::Unauthorized => 4001,
            Self::RateLimited => 4008,
            Self::SessionReplaced => 4010,
            Self::SlowConsumer => 4011,
            Self::TokenExpired => 4012,
            Self::DisconnectedByApi => 4013,
            Self::Stale => 4014,
            Self::TooManyConnections => 4029,
            Self::TryAgainLater => 1013,
        }
    }

    /// Whether the client should reconnect after this close. Infrastructure
    /// causes (shutdown, slow consumer, expiry, staleness) say yes; decisions
    /// about this client (auth, eviction, API disconnect, limits) say no.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            Self::GoingAway
                | Self::SlowConsumer
                | Self::TokenExpired
                | Self::Stale
                | Self::TryAgainLater
        )
    }

    /// A short, stable reason used in `disconnect` frames, close frames,
    /// logs and the `reason` label of `herald_connections_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::GoingAway => "shutdown",
            Self::ProtocolError => "protocol_error",
            Self::InvalidPayload => "invalid_utf8",
            Self::TooBig => "message_too_big",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::SessionReplaced => "session_replaced",
            Self::SlowConsumer => "slow_consumer",
            Self::TokenExpired => "token_expired",
            Self::DisconnectedByApi => "disconnected",
            Self::Stale => "stale",
            Self::TooManyConnections => "too_many_connections",
            Self::TryAgainLater => "try_again_later",
        }
    }
}
