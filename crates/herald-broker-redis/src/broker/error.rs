//! Redis failures as broker errors: anything that a retry could cure is
//! `Unavailable` (clients are told to retry), the rest `Internal`.

use fred::error::{Error, ErrorKind};
use herald_core::BrokerError;

/// Server replies that mean "not now" rather than "never".
const TRANSIENT: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MASTERDOWN",
    "READONLY",
    "CLUSTERDOWN",
    "OOM",
    "NOREPLICAS",
    "NOPERM",
];

pub(super) fn from_redis(error: Error) -> BrokerError {
    let transient = match error.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Backpressure
        | ErrorKind::Sentinel
        | ErrorKind::Auth => true,
        ErrorKind::Unknown => {
            let details = error.details();
            TRANSIENT.iter().any(|p| details.starts_with(p))
        }
        _ => false,
    };
    if transient {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::Internal(error.to_string())
    }
}

/// A reply whose shape is not what the scripts return.
pub(super) fn unexpected(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected reply from Redis: {what}"))
}

pub(super) fn not_connected() -> BrokerError {
    BrokerError::Unavailable("not connected to Redis".into())
}
