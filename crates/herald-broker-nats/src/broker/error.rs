//! NATS failures as broker errors: whatever a retry could cure is
//! `Unavailable` (clients are told to retry), the rest `Internal`.

use herald_core::BrokerError;
use std::fmt::Display;

pub(super) fn not_connected() -> BrokerError {
    BrokerError::Unavailable("not connected to NATS".into())
}

pub(super) fn no_stream() -> BrokerError {
    BrokerError::Unavailable("the rooms' stream is not ready yet".into())
}

/// A request that failed on the way (timeout, connection, server busy).
pub(super) fn unavailable(what: &str, error: impl Display) -> BrokerError {
    BrokerError::Unavailable(format!("NATS {what}: {error}"))
}

/// An answer the engine cannot make sense of.
pub(super) fn internal(what: &str, error: impl Display) -> BrokerError {
    BrokerError::Internal(format!("NATS {what}: {error}"))
}
