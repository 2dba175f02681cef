//! The Redis broker when Redis goes away: publishes fail fast and whole,
//! readiness follows the connection, subscriptions come back by themselves,
//! and what was published while a node was deaf is caught up from history.

mod broker_support;

use broker_support::{prefix, request, room, wait_until, Node, MINUTE};
use fred::interfaces::ClientLike;
use herald_core::{Broker, BrokerError};
use herald_testkit::RedisServer;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_redis_brings_back_subscriptions_and_a_new_epoch() {
    let mut server = RedisServer::start();
    let prefix = prefix("restart");
    // A long command timeout: failing fast must not come from it.
    let timeout = Duration::from_secs(10);
    let a = Node::start_with_timeout(&server.url(), &prefix, "a", timeout).await;
    let b = Node::start_with_timeout(&server.url(), &prefix, "b", timeout).await;
    let r = room("f:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    let first = a
        .broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    a.broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    wait_until("b gets both", || b.sink.count(&r) == 2).await;

    server.kill();
    // Both of A's connections: a command sent in the moment before fred
    // notices the loss waits for its timeout, which is not what this tests.
    wait_until("the nodes notice", || {
        !a.clients.commands.is_connected()
            && !a.clients.subscriber.is_connected()
            && !b.clients.subscriber.is_connected()
    })
    .await;
    assert!(!a.broker.is_ready() && !b.broker.is_ready());
    let started = Instant::now();
    let refused = a.broker.publish(request(&r, 10, MINUTE)).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < timeout / 2,
        "answered without waiting for the command timeout"
    );
    let position = a.broker.position(&r).await;
    assert!(matches!(position, Err(BrokerError::Unavailable(_))));
    let subscribe = b.broker.subscribe(&room("f:2")).await;
    assert!(matches!(subscribe, Err(BrokerError::Unavailable(_))));
    assert_eq!(
        b.broker.stats().streams,
        1,
        "a failed subscribe is not counted"
    );

    server.restart();
    wait_until("readiness returns", || {
        a.broker.is_ready() && b.broker.is_ready()
    })
    .await;
    let mut epochs = Vec::new();
    for expected in 1..=3 {
        let out = a
            .broker
            .publish(request(&r, 10, MINUTE))
            .await
            .expect("publish");
        assert_eq!(out.position.offset, expected, "the stream starts over");
        assert_ne!(out.position.epoch, first.position.epoch, "in a new epoch");
        epochs.push(out.position.epoch);
    }
    wait_until("b is subscribed again", || b.sink.count(&r) == 5).await;
    let positions = b.sink.positions(&r);
    let after: Vec<(String, u64)> = (1..=3).map(|o| (epochs[0].clone(), o)).collect();
    assert_eq!(
        positions[2..],
        after[..],
        "the new epoch's events, once, in order"
    );
    a.stop().await;
    b.stop().await;
}

/// Node B's subscriber loses its connection and cannot subscribe again for
/// a while (the ACL takes channels from B's user, which also disconnects
/// it); node A, another user, keeps publishing. Once B may subscribe again
/// it catches up from history: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deaf_node_catches_up_from_history_after_reconnecting() {
    let server = RedisServer::start();
    let acl = server.cli(&["ACL", "SETUSER", "alice", "on", ">pw", "~*", "&*", "+@all"]);
    assert_eq!(acl.trim(), "OK");
    let prefix = prefix("catchup");
    let alice = format!("redis://alice:pw@127.0.0.1:{}", server.port());
    let a = Node::start(&alice, &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let r = room("c:1");
    let quiet = room("c:quiet");
    b.broker.subscribe(&r).await.expect("subscribe");
    b.broker.subscribe(&quiet).await.expect("subscribe");
    a.broker.subscribe(&r).await.expect("subscribe");
    for _ in 0..3 {
        a.broker
            .publish(request(&r, 100, MINUTE))
            .await
            .expect("publish");
    }
    wait_until("b gets the first three", || b.sink.count(&r) == 3).await;

    let acl = server.cli(&["ACL", "SETUSER", "default", "resetchannels"]);
    assert_eq!(acl.trim(), "OK");
    // B's subscription is gone now: these reach B only through history.
    for _ in 0..5 {
        a.broker
            .publish(request(&r, 100, MINUTE))
            .await
            .expect("publish");
    }
    // A room B had no event of yet: caught up from its subscribe baseline.
    a.broker
        .publish(request(&quiet, 100, MINUTE))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.sink.count(&r), 3, "b is deaf");
    let acl = server.cli(&["ACL", "SETUSER", "default", "allchannels"]);
    assert_eq!(acl.trim(), "OK");
    wait_until("b catches up", || b.sink.count(&r) == 8).await;
    wait_until("b catches up the quiet room", || b.sink.count(&quiet) == 1).await;
    a.broker
        .publish(request(&r, 100, MINUTE))
        .await
        .expect("publish");
    wait_until("b is live again", || b.sink.count(&r) == 9).await;
    wait_until("a has them all", || a.sink.count(&r) == 9).await;
    assert_eq!(b.sink.offsets(&r), (1..=9).collect::<Vec<u64>>());
    assert_eq!(a.sink.offsets(&r), (1..=9).collect::<Vec<u64>>());
    a.stop().await;
    b.stop().await;
}

/// Another node publishes while this node's subscriber connection is being
/// replaced: whatever mix of live messages and catch-up delivers them,
/// each arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_subscriber_connections_lose_and_repeat_nothing() {
    let server = RedisServer::start();
    let prefix = prefix("kill");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let r = room("k:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    let mut published = 0;
    for _ in 0..5 {
        server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        for _ in 0..4 {
            a.broker
                .publish(request(&r, 100, MINUTE))
                .await
                .expect("publish");
            published += 1;
        }
        wait_until("b has everything", || b.sink.count(&r) == published).await;
    }
    assert_eq!(
        b.sink.offsets(&r),
        (1..=published as u64).collect::<Vec<u64>>()
    );
    a.stop().await;
    b.stop().await;
}

/// A reader that falls more than the subscriber's buffer behind loses
/// messages off the channel; it catches up on them from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_reader_catches_up_from_history() {
    let server = RedisServer::start();
    let prefix = prefix("lag");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let r = room("l:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    // More than the subscriber's buffer of 16,384 messages.
    const TOTAL: u64 = 20_000;
    const PUBLISHERS: u64 = 50;
    b.sink.hold.store(true, Ordering::Release);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..PUBLISHERS {
        let (broker, r) = (a.broker.clone(), r.clone());
        tasks.spawn(async move {
            for _ in 0..TOTAL / PUBLISHERS {
                let req = request(&r, TOTAL as usize, MINUTE);
                broker.publish(req).await.expect("publish");
            }
        });
    }
    let published = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("publisher");
        }
    });
    published.await.expect("the publishes finish");
    b.sink.hold.store(false, Ordering::Release);
    wait_until("b has everything", || b.sink.count(&r) == TOTAL as usize).await;
    assert_eq!(b.sink.offsets(&r), (1..=TOTAL).collect::<Vec<u64>>());
    a.stop().await;
    b.stop().await;
}
