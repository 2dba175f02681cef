//! Socket.IO v4 (#14): the Engine.IO transport in [`engine`]; the Socket.IO
//! layer (CONNECT, the mapping onto Herald's sessions) is filled in by its
//! owner.

pub(crate) mod engine;

/// Runs the Socket.IO layer of one Engine.IO session. Until that layer
/// lands this only keeps the Engine.IO session alive (pings at the
/// heartbeat interval, input dropped) until the client leaves or the node
/// shuts down.
pub(crate) async fn run(start: Box<engine::EioStart>) {
    let engine::EioStart {
        app, mut socket, ..
    } = *start;
    let cancel = app.node.cancellation();
    let mut ping = tokio::time::interval(app.node.limits().heartbeat_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            event = socket.recv() => {
                if let engine::EioEvent::Closed(_) = event {
                    break;
                }
            }
            _ = ping.tick() => {
                if socket.ping().await.is_err() {
                    break;
                }
            }
            () = cancel.cancelled() => break,
        }
    }
    socket.close(&[], std::time::Duration::from_secs(1)).await;
}
