//! Fixtures shared by the writer's plain-TCP and TLS tests.

use super::Outbound;
use bytes::Bytes;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Bound on any single wait of these tests.
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// A text frame of `n` bytes, each `tag`.
pub(super) fn text(n: usize, tag: u8) -> Outbound {
    Outbound::Frame {
        bytes: Bytes::from(vec![tag; n]),
        publication: None,
        change: None,
    }
}

/// A connected loopback pair: (server end, client end). With
/// `small_buffers` both sides get 4 KiB socket buffers, so the kernel
/// takes only part of a large write.
pub(super) async fn tcp_pair(small_buffers: bool) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let socket = TcpSocket::new_v4().expect("socket");
    if small_buffers {
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    }
    let (client, accepted) = tokio::join!(socket.connect(addr), listener.accept());
    let client = client.expect("connect");
    let (server, _) = accepted.expect("accept");
    if small_buffers {
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .expect("SO_SNDBUF");
    }
    (server, client)
}
