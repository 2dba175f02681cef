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
mod writer;

use std::time::Duration;

/// How long the last packets of a closing connection (its `disconnect`,
/// a refusal) may take to leave: a polling client gets them at its next
/// GET, within this bound.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the Socket.IO layer of one Engine.IO session, from its CONNECT to
/// its end. Spawned by the engine on the node's task tracker. Only a box
/// of the connection's state and the idle loop live in this future for the
/// connection's whole life: the CONNECT, the first packets and the close
/// run boxed, since an async fn's state is as large as its largest phase
/// and every idle connection would carry it.
pub(crate) async fn run(start: Box<engine::EioStart>) {
    let Some((mut live, end)) = Box::pin(open(start)).await else {
        return;
    };
    let end = match end {
        Some(end) => end,
        None => pump::pump(&mut live).await,
    };
    Box::pin(pump::finish(live, end)).await;
}

/// Waits for the CONNECT, opens the session and sends the first packets.
async fn open(start: Box<engine::EioStart>) -> Option<(Box<pump::Live>, Option<pump::End>)> {
    let engine::EioStart {
        app,
        socket,
        token,
        credential,
        remote_ip,
        slot,
        pending,
    } = *start;
    let credential = credential.context("socketio");
    let opened = connect::connect(&app, socket, token, &credential, pending).await?;
    Some(pump::begin(&app, opened, slot, remote_ip).await)
}
