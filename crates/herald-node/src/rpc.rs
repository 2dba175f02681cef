//! `rpc` frames: forwarded to the backend (`proxy.rpc_url`) off the
//! connection's read loop, so a slow backend stalls no other frame, and
//! answered with `rpc_result` or `error` (docs/protocol.md 3).

use crate::access::BACKEND_UNAVAILABLE_MESSAGE;
use crate::error::NodeError;
use crate::metrics;
use crate::session::Session;
use herald_core::ProxyFailure;
use herald_protocol::{RequestId, ServerFrame};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Most `rpc` calls one connection may have in flight; beyond, a call is
/// refused with `limit_exceeded`.
pub const MAX_RPC_IN_FLIGHT: usize = 8;

/// What a client is told when no backend takes `rpc` calls.
pub(crate) const RPC_DISABLED_MESSAGE: &str = "rpc is not enabled (proxy.rpc_url)";

/// A connection's calls in flight, cancelled when its session goes (the
/// guard) or the node stops (the token is a child of the node's).
pub(crate) struct RpcCalls {
    in_flight: Arc<AtomicUsize>,
    cancel: CancellationToken,
    _guard: DropGuard,
}

impl RpcCalls {
    pub(crate) fn new(node_cancel: &CancellationToken) -> Self {
        let cancel = node_cancel.child_token();
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            _guard: cancel.clone().drop_guard(),
            cancel,
        }
    }

    /// Takes a place among the calls in flight; `None` when all are taken.
    fn admit(&self) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_RPC_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.in_flight.clone()))
    }
}

/// A place among the calls in flight, given back when the call ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The error a failed call is answered with.
fn failure_error(failure: ProxyFailure) -> NodeError {
    match failure {
        ProxyFailure::Unavailable(_) => NodeError::Unavailable(BACKEND_UNAVAILABLE_MESSAGE.into()),
        ProxyFailure::Rejected { status, message } => match status {
            403 => NodeError::Forbidden(message),
            404 => NodeError::NotFound(message),
            _ => NodeError::BadRequest(message),
        },
    }
}

impl Session {
    /// Starts an `rpc` call; its answer is queued when the backend gives
    /// it. Refused at once when no backend takes calls, or when
    /// [`MAX_RPC_IN_FLIGHT`] calls of this connection are running.
    pub(crate) fn rpc(
        &mut self,
        id: Option<RequestId>,
        method: String,
        data: Box<RawValue>,
    ) -> Result<(), NodeError> {
        let Some(id) = id else {
            // The codecs require one; a request nobody could answer is refused.
            return Err(NodeError::BadRequest("rpc: missing field `id`".into()));
        };
        let Some(proxy) = self.node.access_proxy().cloned() else {
            metrics::rpc_call("disabled");
            return Err(NodeError::NotFound(RPC_DISABLED_MESSAGE.into()));
        };
        let Some(in_flight) = self.rpc.admit() else {
            metrics::rpc_call("limit_exceeded");
            return Err(NodeError::LimitExceeded(format!(
                "at most {MAX_RPC_IN_FLIGHT} rpc calls in flight per connection"
            )));
        };
        let conn = self.conn.clone();
        let cancel = self.rpc.cancel.clone();
        self.node.tasks().spawn(async move {
            let _in_flight = in_flight;
            let identity = conn.identity();
            let call = proxy.rpc(&identity, &conn.id, &method, &data);
            let answer = tokio::select! {
                // The connection or the node went: nobody to answer.
                () = cancel.cancelled() => return,
                answer = call => answer,
            };
            let frame = match answer {
                Ok(data) => {
                    metrics::rpc_call("ok");
                    ServerFrame::RpcResult { id, data }
                }
                Err(failure) => {
                    if let ProxyFailure::Unavailable(detail) = &failure {
                        tracing::warn!(
                            connection_id = %conn.id, method, error = %detail,
                            "the rpc backend could not answer"
                        );
                    }
                    metrics::rpc_call(match &failure {
                        ProxyFailure::Unavailable(_) => "unavailable",
                        ProxyFailure::Rejected { .. } => "rejected",
                    });
                    let e = failure_error(failure);
                    ServerFrame::Error {
                        id: Some(id),
                        code: e.code(),
                        message: e.client_message(),
                    }
                }
            };
            conn.reply(&frame);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::ErrorCode;

    #[test]
    fn rejections_map_to_codes() {
        let rejected = |status| ProxyFailure::Rejected {
            status,
            message: format!("said {status}"),
        };
        for (status, code) in [
            (400, ErrorCode::BadRequest),
            (403, ErrorCode::Forbidden),
            (404, ErrorCode::NotFound),
            (409, ErrorCode::BadRequest),
            (422, ErrorCode::BadRequest),
        ] {
            let e = failure_error(rejected(status));
            assert_eq!(e.code(), code, "{status}");
            assert_eq!(e.client_message(), format!("said {status}"));
        }
        let e = failure_error(ProxyFailure::Unavailable("10.0.0.1 refused".into()));
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(!e.client_message().contains("10.0.0.1"));
    }

    #[test]
    fn in_flight_calls_are_bounded_and_given_back() {
        let calls = RpcCalls::new(&CancellationToken::new());
        let held: Vec<InFlight> = (0..MAX_RPC_IN_FLIGHT)
            .filter_map(|_| calls.admit())
            .collect();
        assert_eq!(held.len(), MAX_RPC_IN_FLIGHT);
        assert!(calls.admit().is_none());
        drop(held);
        assert!(calls.admit().is_some());
    }
}
