//! The upgrade of a polling session to WebSocket, as Engine.IO clients do
//! it: the client opens a WebSocket with the session's `sid` and sends
//! `2probe`; the server answers `3probe` and releases the pending GET with
//! a noop (`6`), so the client can pause polling; the client then sends
//! `5`, and from that packet on the session lives on the WebSocket. The
//! probe runs in its own task; on `5` it hands the socket to the session,
//! which writes the packets no GET took first, then everything else.

use super::table::{PollShared, Probe};
use super::websocket::text_frame;
use crate::ws::frames::{self, Incoming};
use crate::ws::socket::{Read, WsSocket};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::frame::coding::Control;

/// How long a refused probe's socket waits for the client to close.
const LINGER: Duration = Duration::from_millis(500);

/// Runs one probe of `shared` on the WebSocket taken from `on_upgrade`:
/// the client has pingTimeout from the upgrade request to send `5`, else
/// the probe is dropped and the session goes on polling.
/// The node's shutdown (`cancel`) ends it too.
pub(super) async fn probe(
    shared: Arc<PollShared>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    cancel: CancellationToken,
    deflate: Option<crate::ws::deflate::Deflate>,
) {
    let config = shared.config;
    let deadline = Instant::now() + config.ping_timeout;
    let Some(mut socket) =
        super::websocket::take_socket(on_upgrade, deadline, config.max_payload, deflate).await
    else {
        return;
    };
    let started = shared.update(|s| {
        let free = s.ended.is_none() && !s.closing && matches!(s.probe, Probe::None);
        if free {
            s.probe = Probe::Probing;
        }
        (free, false)
    });
    if !started {
        refuse(&socket).await;
        return;
    }
    let outcome = tokio::select! {
        outcome = timeout_at(deadline, exchange(&shared, &mut socket)) => outcome,
        () = cancel.cancelled() => Ok(false),
    };
    match outcome {
        Ok(true) => {
            // `5`: the session takes the socket (and any frames the client
            // sent after it) at its next recv or send.
            shared.update(|s| {
                let live = s.ended.is_none();
                s.release = false;
                if live {
                    s.probe = Probe::Ready(Box::new(socket));
                } else {
                    s.probe = Probe::None;
                }
                ((), true)
            });
        }
        Ok(false) | Err(_) => {
            shared.update(|s| {
                s.probe = Probe::None;
                s.release = false;
                ((), false)
            });
            refuse(&socket).await;
        }
    }
}

/// Reads the probe's frames: answers `2probe` with `3probe` (and releases
/// the pending GET); `true` once `5` arrived, `false` on anything else.
async fn exchange(shared: &PollShared, socket: &mut WsSocket) -> bool {
    loop {
        let Some(frame) = socket.take() else {
            match socket.fill().await {
                Ok(Read::Open) => continue,
                Ok(Read::Eof) | Err(_) => return false,
            }
        };
        match frame {
            Incoming::Text(text) if text == "2probe" => {
                if socket.write_all(&text_frame(b"3probe")).await.is_err() {
                    return false;
                }
                // The client waits for its pending GET to return before
                // it sends `5`.
                shared.update(|s| {
                    s.release = true;
                    ((), true)
                });
            }
            Incoming::Text(text) if text == "5" => return true,
            Incoming::Ping(payload) => {
                let pong = frames::control(Control::Pong, &payload);
                if socket.write_all(&pong).await.is_err() {
                    return false;
                }
            }
            Incoming::Pong => {}
            _ => return false,
        }
    }
}

/// Closes a probe that will not become the session's transport.
async fn refuse(socket: &WsSocket) {
    let close = frames::close(1000, "");
    if tokio::time::timeout(LINGER, socket.write_all(&close))
        .await
        .is_ok()
    {
        socket.shut_down(LINGER).await;
    }
}
