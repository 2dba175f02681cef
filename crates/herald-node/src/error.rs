//! Errors of node operations, each mapping to one wire error code.

use herald_core::{BrokerError, RoomError};
use herald_protocol::ErrorCode;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A room name was invalid.
    #[error("invalid room: {0}")]
    Room(#[from] RoomError),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The room is not joined by this connection.
    #[error("room `{0}` is not joined")]
    NotJoined(String),
    /// A configured limit was reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The payload is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Something the request needs cannot answer now (the backend behind
    /// a `proxy` rule or `rpc`); the client should retry.
    #[error("{0}")]
    Unavailable(String),
    /// What the request names does not exist (an `rpc` method the backend
    /// does not know, `rpc` not enabled).
    #[error("{0}")]
    NotFound(String),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a client is told when the broker cannot be reached: the engine's
/// own text (hosts, Redis replies) is for the log only.
pub const BROKER_UNAVAILABLE_MESSAGE: &str = "the broker is unavailable; retry shortly";
/// What a client is told when the broker failed unexpectedly.
pub const BROKER_INTERNAL_MESSAGE: &str = "internal broker error; the node logged the details";

impl NodeError {
    /// The message to show a client: the error's text, except that a
    /// broker failure gets a generic message per code, since the engine's
    /// text names internal hosts and replies. Log the error itself.
    pub fn client_message(&self) -> String {
        match self {
            Self::Broker(BrokerError::Unavailable(_)) => BROKER_UNAVAILABLE_MESSAGE.to_owned(),
            Self::Broker(BrokerError::Internal(_)) => BROKER_INTERNAL_MESSAGE.to_owned(),
            other => other.to_string(),
        }
    }

    /// Whether [`client_message`](Self::client_message) hides this error's
    /// text, so the caller should log it.
    pub fn is_broker_failure(&self) -> bool {
        matches!(
            self,
            Self::Broker(BrokerError::Unavailable(_) | BrokerError::Internal(_))
        )
    }

    /// The wire error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) | Self::Room(_) => ErrorCode::BadRequest,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotJoined(_) => ErrorCode::NotJoined,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Broker(BrokerError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Broker(BrokerError::IdempotencyConflict { .. }) => ErrorCode::BadRequest,
            Self::Broker(BrokerError::Internal(_)) => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_failures_hide_the_engine_text() {
        for e in [
            NodeError::Broker(BrokerError::Unavailable(
                "IO Error: 10.9.8.7:6379 refused".into(),
            )),
            NodeError::Broker(BrokerError::Internal("ERR secret script reply".into())),
        ] {
            let message = e.client_message();
            assert!(!message.contains("10.9.8.7"), "{message}");
            assert!(!message.contains("secret"), "{message}");
            assert!(e.is_broker_failure());
        }
        let conflict = NodeError::Broker(BrokerError::IdempotencyConflict {
            room: "chat:1".into(),
        });
        assert!(conflict.client_message().contains("chat:1"));
        assert!(!conflict.is_broker_failure());
    }
}
