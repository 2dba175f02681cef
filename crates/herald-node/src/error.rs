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
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl NodeError {
    /// The wire error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) | Self::Room(_) => ErrorCode::BadRequest,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotJoined(_) => ErrorCode::NotJoined,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Broker(BrokerError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Broker(BrokerError::IdempotencyConflict { .. }) => ErrorCode::BadRequest,
            Self::Broker(BrokerError::Internal(_)) => ErrorCode::Internal,
        }
    }
}
