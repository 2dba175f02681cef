//! NATS going away and coming back: calls answer `Unavailable` at once
//! while it is down, offsets carry on after a restart with the store, a
//! new epoch starts after a restart without it (or after the stream was
//! deleted), and listened rooms catch up on what they missed.

mod broker_support;

use broker_support::{prefix, request, room, wait_until, Node, Proxy, MINUTE};
use herald_core::{Broker, BrokerError};
use herald_testkit::NatsServer;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_keeps_offsets_and_an_empty_restart_starts_a_new_epoch() {
    let mut server = NatsServer::start();
    let prefix = prefix("outage");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let r = room("out:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    for _ in 0..3 {
        a.broker
            .publish(request(&r, 10, MINUTE))
            .await
            .expect("publish");
    }
    let before = a.broker.position(&r).await.expect("position");
    wait_until("b gets 3", || b.sink.offsets(&r).len() == 3).await;

    server.kill();
    wait_until("not ready while NATS is down", || !a.broker.is_ready()).await;
    let started = Instant::now();
    match a.broker.publish(request(&r, 10, MINUTE)).await {
        Err(BrokerError::Unavailable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered without waiting for the command timeout"
    );
    assert!(matches!(
        a.broker.history(&r, 0, 10).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(matches!(
        a.broker.subscribe(&room("out:2")).await,
        Err(BrokerError::Unavailable(_))
    ));

    server.restart();
    wait_until("ready again", || a.broker.is_ready() && b.broker.is_ready()).await;
    let next = a
        .broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    assert_eq!(next.position.epoch, before.epoch, "the store kept the room");
    assert_eq!(next.position.offset, 4, "offsets carry on");
    wait_until("b gets it without subscribing again", || {
        b.sink.offsets(&r) == vec![1, 2, 3, 4]
    })
    .await;

    server.restart_empty();
    wait_until("ready after an empty restart", || {
        a.broker.is_ready() && b.broker.is_ready()
    })
    .await;
    let fresh = a
        .broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    assert_ne!(fresh.position.epoch, before.epoch, "a new epoch");
    assert_eq!(fresh.position.offset, 1);
    wait_until("b gets the new epoch's first", || {
        b.sink
            .publications
            .lock()
            .last()
            .is_some_and(|p| p.position == fresh.position)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_stream_is_created_again_in_a_new_epoch() {
    let server = NatsServer::start();
    let prefix = prefix("deleted");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let stream = format!("{prefix}-rooms");
    let jsz = server.monitor("/jsz?streams=1").expect("monitor");
    assert!(jsz.contains(&stream), "created when missing: {jsz}");
    let r = room("del:1");
    let first = a
        .broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    js.delete_stream(&stream).await.expect("delete the stream");
    // The first publish after finds it gone; the engine makes it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        match a.broker.publish(request(&r, 10, MINUTE)).await {
            Ok(outcome) => break outcome,
            Err(BrokerError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the stream did not come back: {e}"),
        }
    };
    assert_eq!(again.position.offset, 1);
    assert_ne!(
        again.position.epoch, first.position.epoch,
        "positions are never reused"
    );
    a.stop().await;
}

/// One node's connection drops (a proxy cuts it) while another publishes:
/// after reconnecting, it catches up from the stream, in order, and keeps
/// receiving without subscribing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_lost_its_connection_catches_up() {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port()).await;
    let prefix = prefix("catchup");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&proxy.url(), &prefix, "b").await;
    let r = room("cu:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    a.broker
        .publish(request(&r, 100, MINUTE))
        .await
        .expect("publish");
    wait_until("b gets the first", || b.sink.offsets(&r) == vec![1]).await;
    proxy.cut();
    wait_until("b is down", || !b.broker.is_ready()).await;
    for _ in 0..5 {
        a.broker
            .publish(request(&r, 100, MINUTE))
            .await
            .expect("publish");
    }
    proxy.heal();
    wait_until("b caught up", || b.sink.offsets(&r).len() == 6).await;
    a.broker
        .publish(request(&r, 100, MINUTE))
        .await
        .expect("publish");
    wait_until("b still listens", || b.sink.offsets(&r).len() == 7).await;
    assert_eq!(
        b.sink.offsets(&r),
        (1..=7).collect::<Vec<_>>(),
        "in order, once"
    );
    a.stop().await;
    b.stop().await;
}

/// A stream made with other settings (by hand, with a shorter max_age and
/// no direct gets) is brought to the node's; one without the engine's
/// RePublish (which the server cannot add) leaves the engine not ready,
/// and its answers say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_with_other_settings_is_updated_or_refused() {
    use async_nats::jetstream::stream;
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    let made = |prefix: &str, republish: bool| stream::Config {
        name: format!("{prefix}-rooms"),
        subjects: vec![format!("{prefix}.room.*")],
        max_age: Duration::from_secs(3600),
        republish: republish.then(|| stream::Republish {
            source: format!("{prefix}.room.*"),
            destination: format!("{prefix}.deliver.{{{{wildcard(1)}}}}"),
            headers_only: false,
        }),
        ..Default::default()
    };

    let prefix = prefix("drift");
    js.create_stream(made(&prefix, true))
        .await
        .expect("a stream made elsewhere");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let r = room("drift:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    a.broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    wait_until("delivered", || b.sink.offsets(&r) == vec![1]).await;
    let mut stream = js
        .get_stream(format!("{prefix}-rooms"))
        .await
        .expect("stream");
    let config = &stream.info().await.expect("info").config;
    assert_eq!(config.max_age, Duration::from_secs(86_400));
    assert!(config.allow_direct);
    a.stop().await;
    b.stop().await;

    let bare = broker_support::prefix("bare");
    js.create_stream(made(&bare, false))
        .await
        .expect("a stream without RePublish");
    let c = broker_support::Node::start_with(broker_support::settings(&server.url(), &bare, "c"));
    let broker = c.broker.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match broker.publish(request(&r, 10, MINUTE)).await {
            Err(BrokerError::Unavailable(why)) if why.contains("RePublish") => break why,
            Err(BrokerError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected a refusal naming RePublish, got {other:?}"),
        }
    };
    assert!(!broker.is_ready());
    assert!(refused.contains("broker.prefix"), "{refused}");
    c.stop().await;
}
