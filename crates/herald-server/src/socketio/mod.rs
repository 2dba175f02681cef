//! Socket.IO v4 (#14, docs/protocol.md 8). The Engine.IO transport
//! (polling, WebSocket, the upgrade) lives in [`engine`]; this layer reads
//! the Socket.IO CONNECT ([`connect`]), opens a Herald session on
//! [`herald_node::Transport::SOCKETIO`] with the Socket.IO codec, and runs
//! it ([`pump`]): client emits go to the session, the connection's queue
//! is drained into the Engine.IO session with the recovery token appended
//! to every event.

mod connect;
pub(crate) mod engine;
mod outgoing;
mod pump;

use std::time::Duration;

/// How long the last packets of a closing connection (its `disconnect`,
/// a refusal) may take to leave: a polling client gets them at its next
/// GET, within this bound.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the Socket.IO layer of one Engine.IO session, from its CONNECT to
/// its end. Spawned by the engine on the node's task tracker.
pub(crate) async fn run(start: Box<engine::EioStart>) {
    let engine::EioStart {
        app,
        socket,
        token,
        remote_ip,
        slot,
        pending,
    } = *start;
    // Held for the connection's whole life: a place among the node's sockets.
    let _slot = slot;
    let Some(opened) = Box::pin(connect::connect(&app, socket, token, pending)).await else {
        return;
    };
    pump::run(app, opened, remote_ip).await;
}
