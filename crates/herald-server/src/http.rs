//! The HTTP server: accepts TCP connections and serves each with hyper's
//! HTTP/1.1 connection, upgrades allowed, until shutdown.
//!
//! Herald runs this loop itself rather than `axum::serve` for two reasons,
//! both measured on the connect path (docs/benchmarks.md): a WebSocket
//! upgrade must get the raw `TcpStream` back, which hyper hands over only
//! for the exact I/O type it served (`axum::serve` wraps it in a private
//! type), and `axum::serve` rebuilt the router for every connection, about
//! a fifth of a connect's CPU time. Here the router is built once and each
//! connection gets a cheap clone. Each request carries its client's
//! address as axum's `ConnectInfo<SocketAddr>` extension (for the per-IP
//! connection cap).
//!
//! With TLS configured ([`tls::Tls`]), each connection's handshake runs in
//! its own task, under [`HANDSHAKE_TIMEOUT`], never in the accept loop;
//! hyper then serves the TLS stream the same way ([`conn::Served`]).

pub(crate) mod conn;
mod io;
pub(crate) mod tls;

pub(crate) use conn::{Conn, Served};
pub(crate) use io::ServerIo;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open HTTP connections (requests in flight, SSE streams the
/// drain did not end) get to finish after shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error other than a failed handshake, such as
/// running out of file descriptors, before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Ends one HTTP connection at once, socket and all, from inside a
/// request's handler. Every request carries its connection's handle as an
/// extension: an SSE stream whose reader stopped reading blocks hyper in a
/// write that no timeout ends, so only dropping the connection frees the
/// socket (and the stream's slot) that a zero-window peer would otherwise
/// hold forever.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionHandle(CancellationToken);

impl ConnectionHandle {
    /// Drops the connection: whatever hyper was writing is abandoned and
    /// the socket is closed.
    pub(crate) fn abort(&self) {
        self.0.cancel();
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish (bounded). With `tls`, every
/// connection is TLS (HTTPS, WSS).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let http = Arc::new(http);
    // Cancelled at shutdown: each connection finishes its request in
    // flight, then closes (keep-alive ends).
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        let stop = stop.clone();
        match &tls {
            None => {
                let served = Served::Plain(stream);
                connections.spawn(serve_connection(
                    http.clone(),
                    router.clone(),
                    peer,
                    served,
                    stop,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let (http, router) = (http.clone(), router.clone());
                connections.spawn(async move {
                    if let Some(tls) = handshake(&acceptor, stream, &stop).await {
                        let served = Served::Tls(Box::new(tls));
                        serve_connection(http, router, peer, served, stop).await;
                    }
                });
            }
        }
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

/// The TLS handshake of one connection, within [`HANDSHAKE_TIMEOUT`];
/// `None` when it failed, timed out or the server is stopping.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    stop: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::select! {
        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match done {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                // A client that does not trust the certificate, or speaks
                // plain HTTP to the TLS port: the client's problem.
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        },
        () = stop.cancelled() => None,
    }
}

/// Serves one connection with hyper until it ends, is aborted through its
/// [`ConnectionHandle`], or the server stops (then gracefully).
async fn serve_connection(
    http: Arc<http1::Builder>,
    router: Router,
    peer: SocketAddr,
    io: Served,
    stop: CancellationToken,
) {
    let kill = CancellationToken::new();
    let handle = ConnectionHandle(kill.clone());
    let inner = TowerToHyperService::new(router);
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo::<SocketAddr>(peer));
        extensions.insert(handle.clone());
        inner.call(request)
    });
    let connection = http
        .serve_connection(TokioIo::new(ServerIo::new(io)), service)
        .with_upgrades();
    tokio::pin!(connection);
    // A client going away mid-request is not the server's error. An abort
    // drops the connection wherever it stands.
    tokio::select! {
        _ = connection.as_mut() => return,
        () = kill.cancelled() => return,
        () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = connection => {}
        () = kill.cancelled() => {}
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
