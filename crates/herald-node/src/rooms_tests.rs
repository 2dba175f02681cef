//! Unit tests of [`super::Rooms`]: membership and the join buffer's bound.

use super::Rooms;
use crate::conn::Connection;
use crate::flush::Flusher;
use crate::queue::SendQueue;
use crate::transport::Transport;
use herald_core::{Identity, Publication, PublicationSink, RoomKey, RoomName, Tenant};
use herald_protocol::{CloseCode, StreamPosition};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::task::TaskTracker;

fn rooms(pending_limit: usize) -> Rooms {
    Rooms::new(
        Arc::from("n1"),
        pending_limit,
        Flusher::new(TaskTracker::new()),
    )
}

fn room() -> RoomKey {
    RoomKey::new(
        Tenant::default_tenant(),
        RoomName::parse("chat:1").expect("room name"),
    )
}

fn conn(i: usize) -> Arc<Connection> {
    Arc::new(Connection::new(
        format!("c{i}"),
        Identity::new(format!("u{i}")),
        &Transport::SSE,
        &herald_protocol::HERALD_JSON,
        SendQueue::new(64, 1 << 20),
        Instant::now(),
        0,
    ))
}

fn publication(offset: u64) -> Arc<Publication> {
    Arc::new(Publication::new(
        room(),
        StreamPosition::new("e", offset),
        "tick",
        serde_json::value::to_raw_value(&offset).expect("raw"),
        0,
        format!("id{offset}"),
    ))
}

/// Joins `conn` and turns it live at offset 0.
fn join_live(rooms: &Rooms, conn: &Arc<Connection>) {
    rooms.begin_join(&room(), conn, false, false);
    let position = StreamPosition::new("e", 0);
    rooms
        .complete_join(&room(), conn, &position, None, &[], true)
        .expect("member present");
}

#[test]
fn a_join_whose_pending_buffer_overflows_is_closed_as_a_slow_consumer() {
    let rooms = rooms(2);
    let live = conn(0);
    let joining = conn(1);
    join_live(&rooms, &live);
    rooms.begin_join(&room(), &joining, false, false);
    for offset in 1..=2 {
        rooms.deliver(publication(offset)).run();
    }
    assert_eq!(joining.queue.closing(), None, "within the buffer's bound");
    rooms.deliver(publication(3)).run();
    assert_eq!(joining.queue.closing(), Some(CloseCode::SlowConsumer));
    // The live member is not held up by the joining one.
    assert_eq!(live.queue.closing(), None);
    assert_eq!(live.queue.len(), 3);
    // What the cut member buffered stays bounded.
    assert_eq!(
        rooms.take_pending(&room(), &joining).map(|b| b.len()),
        Some(2)
    );
}

#[test]
fn removing_a_member_keeps_every_other_member_served() {
    let rooms = rooms(16);
    let conns: Vec<_> = (0..5).map(conn).collect();
    for c in &conns {
        join_live(&rooms, c);
    }
    assert_eq!(rooms.len(), 1);
    rooms.remove(&room(), &conns[1]);
    rooms.remove(&room(), &conns[1]);
    assert_eq!(rooms.members(&room()).len(), 4);
    rooms.deliver(publication(1)).run();
    let got: Vec<usize> = conns.iter().map(|c| c.queue.len()).collect();
    assert_eq!(got, vec![1, 0, 1, 1, 1]);
    for c in &conns {
        rooms.remove(&room(), c);
    }
    assert_eq!(rooms.len(), 0, "an empty room is dropped");
}
