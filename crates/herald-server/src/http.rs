//! The HTTP server: accepts TCP connections and serves each with hyper's
//! HTTP/1.1 connection, upgrades allowed, until shutdown.
//!
//! Herald runs this loop itself rather than `axum::serve` for two reasons,
//! both measured on the connect path (docs/benchmarks.md): a WebSocket
//! upgrade must get the raw `TcpStream` back, which hyper hands over only
//! for the exact I/O type it served (`axum::serve` wraps it in a private
//! type), and `axum::serve` rebuilt the router for every connection, about
//! a fifth of a connect's CPU time. Here the router is built once and each
//! connection gets a cheap clone.

mod io;

pub(crate) use io::ServerIo;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open HTTP connections (requests in flight, SSE streams the
/// drain did not end) get to finish after shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after an accept error other than a failed handshake, such as
/// running out of file descriptors, before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish (bounded).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Cancelled at shutdown: each connection finishes its request in
    // flight, then closes (keep-alive ends).
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Frames are written whole (or batched) by Herald: Nagle's delay
        // would only hold back the next small frame behind an unacked one.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = http
            .serve_connection(TokioIo::new(ServerIo::new(stream)), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            // A client going away mid-request is not the server's error.
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(CLOSE_TIMEOUT) => {
            tracing::warn!(open = connections.len(), "HTTP connections still open at shutdown");
        }
    }
}

/// Connection-level errors (a client reset during the handshake) are the
/// client's; anything else, such as the descriptor limit, is logged and
/// accepting pauses briefly so the loop does not spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}
