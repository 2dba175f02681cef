//! The reader delivers every room on its own: a slow socket write or a slow
//! gap fill in one room holds up no other room, and the slow room still
//! gets its publications once each, in order.

mod broker_support;

use broker_support::{prefix, request, room, wait_until, Node, MINUTE};
use herald_broker_redis::keys::Keys;
use herald_core::Broker;
use herald_testkit::RedisServer;
use std::sync::Arc;

/// Lets go of the sink's holds when dropped, so a failing test unwinds
/// instead of leaving a worker blocked.
struct Release(Arc<broker_support::Collect>);

impl Drop for Release {
    fn drop(&mut self) {
        *self.0.hold_writes.lock() = None;
        *self.0.hold_room.lock() = None;
    }
}

/// The sink's writes of one room block (a socket that does not drain):
/// another room's publications are still delivered and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_write_in_one_room_holds_up_no_other_room() {
    let server = RedisServer::start();
    let prefix = prefix("slowwrite");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let (slow, fast) = (room("sw:slow"), room("sw:fast"));
    b.broker.subscribe(&slow).await.expect("subscribe");
    b.broker.subscribe(&fast).await.expect("subscribe");
    *b.sink.hold_writes.lock() = Some(slow.clone());
    let _release = Release(b.sink.clone());
    for _ in 0..3 {
        a.broker
            .publish(request(&slow, 100, MINUTE))
            .await
            .expect("publish");
    }
    for _ in 0..3 {
        a.broker
            .publish(request(&fast, 100, MINUTE))
            .await
            .expect("publish");
    }
    // Each delivery's writes run in a task of their own, so they finish in
    // any order; the order that matters is the deliveries' (the frames
    // queued per connection), checked below.
    wait_until("the fast room's writes ran", || {
        let mut written = b.sink.written(&fast);
        written.sort_unstable();
        written == vec![1, 2, 3]
    })
    .await;
    assert_eq!(b.sink.offsets(&fast), vec![1, 2, 3], "delivered in order");
    assert!(
        b.sink.written(&slow).is_empty(),
        "the slow room's writes are still held"
    );
    assert_eq!(b.sink.offsets(&slow), vec![1, 2, 3], "queued in order");
    *b.sink.hold_writes.lock() = None;
    wait_until("the slow room's writes ran", || {
        b.sink.written(&slow).len() == 3
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A gap in one room is filled by a task of its own: while that fill is
/// stuck (here: its deliveries block, as a slow history read would), other
/// rooms are delivered, and the stuck room's later publications wait behind
/// the fill, then arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_gap_fill_in_one_room_holds_up_no_other_room() {
    let server = RedisServer::start();
    let prefix = prefix("slowfill");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let (slow, fast) = (room("sf:1"), room("sf:2"));
    b.broker.subscribe(&slow).await.expect("subscribe");
    b.broker.subscribe(&fast).await.expect("subscribe");
    let first = a
        .broker
        .publish(request(&slow, 100, MINUTE))
        .await
        .expect("publish");
    wait_until("b gets offset 1", || b.sink.count(&slow) == 1).await;
    // Offsets 2 and 3 go into history without being announced: the next
    // publication reveals a gap that only a history read fills.
    let keys = Keys::new(&prefix);
    for offset in [2u64, 3] {
        let message = format!(
            r#"p{{"o":{offset},"e":"{}","t":"","r":"sf:1","n":"silent","d":{{}},"ts":1,"id":"s{offset}","nd":"cli"}}"#,
            first.position.epoch
        );
        let id = format!("0-{offset}");
        let out = server.cli(&[
            "XADD",
            &keys.room_stream(&slow),
            &id,
            "m",
            &message,
            "x",
            "99999999999999",
        ]);
        assert_eq!(out.trim(), id);
    }
    server.cli(&["HINCRBY", &keys.room_meta(&slow), "offset", "2"]);
    *b.sink.hold_room.lock() = Some(slow.clone());
    let _release = Release(b.sink.clone());
    for _ in 0..2 {
        a.broker
            .publish(request(&slow, 100, MINUTE))
            .await
            .expect("publish");
    }
    for _ in 0..3 {
        a.broker
            .publish(request(&fast, 100, MINUTE))
            .await
            .expect("publish");
    }
    wait_until("the other room is delivered during the fill", || {
        b.sink.offsets(&fast) == vec![1, 2, 3]
    })
    .await;
    assert_eq!(b.sink.offsets(&slow), vec![1], "the fill is still held");
    *b.sink.hold_room.lock() = None;
    wait_until("the slow room catches up", || b.sink.count(&slow) == 5).await;
    assert_eq!(b.sink.offsets(&slow), vec![1, 2, 3, 4, 5]);
    a.stop().await;
    b.stop().await;
}
