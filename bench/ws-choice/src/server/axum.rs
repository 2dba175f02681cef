//! axum 0.8 `ws` (tungstenite 0.29): `feed` each frame, then one `flush` per batch.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use super::{query_n, Hub, DRAIN_MAX};

pub async fn serve(listener: TcpListener, hub: Arc<Hub>, nodelay: bool) {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(move |tcp| {
        if nodelay {
            let _ = tcp.set_nodelay(true);
        }
    });
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/broadcast", post(broadcast_handler))
        .with_state(hub);
    axum::serve(listener, app).await.expect("serve");
}

async fn broadcast_handler(State(hub): State<Arc<Hub>>, uri: Uri) -> String {
    let r = hub.push(query_n(uri.query()));
    format!("receivers={r}\n")
}

async fn ws_handler(ws: WebSocketUpgrade, State(hub): State<Arc<Hub>>) -> Response {
    // Subscribe before the 101 goes out, so no frame sent after the client's
    // handshake completes can be missed.
    let rx = hub.tx.subscribe();
    ws.read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| conn(socket, rx))
}

async fn conn(mut socket: WebSocket, mut rx: broadcast::Receiver<Bytes>) {
    loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            r = rx.recv() => match r {
                Ok(b) => {
                    if feed(&mut socket, b).await.is_err() { break; }
                    let mut n = 1;
                    while n < DRAIN_MAX {
                        match rx.try_recv() {
                            Ok(b) => {
                                if feed(&mut socket, b).await.is_err() { return; }
                                n += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    if socket.flush().await.is_err() { break; }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

async fn feed(socket: &mut WebSocket, b: Bytes) -> Result<(), axum::Error> {
    // axum has no unchecked constructor: this re-validates UTF-8 per recipient.
    let text = Utf8Bytes::try_from(b).map_err(axum::Error::new)?;
    socket.feed(Message::Text(text)).await
}
