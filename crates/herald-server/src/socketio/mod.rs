//! Socket.IO v4 (#14): the Engine.IO transport in [`engine`]; the Socket.IO
//! layer (CONNECT, the mapping onto Herald's sessions) is filled in by its
//! owner.

pub(crate) mod engine;

/// Runs the Socket.IO layer of one Engine.IO session (placeholder until the
/// Socket.IO layer lands: it closes the session at once).
#[allow(dead_code)]
pub(crate) async fn run(start: Box<engine::EioStart>) {
    let start = *start;
    start
        .socket
        .close(&[], std::time::Duration::from_secs(1))
        .await;
}
