//! Several nodes on one nats-server: concurrent publishes to one room take
//! distinct consecutive offsets (the wrong-last-sequence retry), every
//! node gets each publication once in order, and idempotency keys hold
//! across nodes.

mod broker_support;

use broker_support::{prefix, request, room, wait_until, Node, MINUTE};
use herald_core::{Broker, BrokerError};
use herald_testkit::NatsServer;
use std::collections::BTreeSet;
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_burst_to_one_room_takes_offsets_one_to_n() {
    let server = NatsServer::start();
    let prefix = prefix("burst");
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(Node::start(&server.url(), &prefix, id).await);
    }
    let r = room("burst:1");
    for node in &nodes {
        node.broker.subscribe(&r).await.expect("subscribe");
    }
    const EACH: u64 = 100;
    let mut tasks = JoinSet::new();
    for node in &nodes {
        for _ in 0..EACH {
            let broker = node.broker.clone();
            let req = request(&r, 0, MINUTE);
            tasks.spawn(async move { broker.publish(req).await });
        }
    }
    let mut offsets = Vec::new();
    let mut epochs = BTreeSet::new();
    while let Some(outcome) = tasks.join_next().await {
        let outcome = outcome.expect("task").expect("every publish succeeds");
        offsets.push(outcome.position.offset);
        epochs.insert(outcome.position.epoch);
    }
    offsets.sort_unstable();
    let n = 3 * EACH;
    assert_eq!(
        offsets,
        (1..=n).collect::<Vec<_>>(),
        "distinct and gap-free"
    );
    assert_eq!(epochs.len(), 1);
    for node in &nodes {
        wait_until("every node gets all", || {
            node.sink.offsets(&r).len() >= n as usize
        })
        .await;
        assert_eq!(
            node.sink.offsets(&r),
            (1..=n).collect::<Vec<_>>(),
            "once each, in order"
        );
    }
    // The stream holds exactly the accepted publishes (refused attempts
    // stored nothing).
    let jsz = server.monitor("/jsz?streams=1").expect("monitor");
    let jsz: serde_json::Value = serde_json::from_str(&jsz).expect("json");
    let streams = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rooms = format!("{prefix}-rooms");
    let stream = streams
        .iter()
        .find(|s| s["name"] == rooms.as_str())
        .expect("the rooms' stream");
    let state = &stream["state"];
    assert_eq!(state["messages"], n, "{state}");
    println!(
        "stored bytes per event of data `{{}}` (headers, subject, framing): {}",
        state["bytes"].as_u64().unwrap_or(0) / n
    );
    let retries: u64 = nodes.iter().map(|n| n.broker.publish_retries()).sum();
    println!("3 nodes x {EACH} concurrent publishes to one room: {retries} retries on wrong last sequence ({:.2} per publish)", retries as f64 / n as f64);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_publishes_once_across_nodes() {
    let server = NatsServer::start();
    let prefix = prefix("idem");
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(Node::start(&server.url(), &prefix, id).await);
    }
    let r = room("idem:1");
    nodes[0].broker.subscribe(&r).await.expect("subscribe");
    // Other publishes race the keyed ones, so the keyed ones also lose
    // offset races and retry with their key.
    let mut tasks = JoinSet::new();
    for round in 0..3 {
        for node in &nodes {
            let broker = node.broker.clone();
            let mut keyed = request(&r, 10, MINUTE);
            keyed.idempotency_key = Some(format!("key-{round}"));
            tasks.spawn(async move { (Some(round), broker.publish(keyed).await) });
            let broker = node.broker.clone();
            let plain = request(&r, 10, MINUTE);
            tasks.spawn(async move { (None, broker.publish(plain).await) });
        }
    }
    let mut keyed = vec![Vec::new(); 3];
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (round, outcome) = joined.expect("task");
        let outcome = outcome.expect("publish");
        if let Some(round) = round {
            keyed[round].push(outcome.clone());
        }
        if !outcome.duplicate {
            all.push(outcome.position.offset);
        }
    }
    for outcomes in &keyed {
        assert_eq!(
            outcomes.iter().filter(|o| !o.duplicate).count(),
            1,
            "{outcomes:?}"
        );
        let positions: BTreeSet<_> = outcomes
            .iter()
            .map(|o| (o.position.epoch.clone(), o.position.offset))
            .collect();
        assert_eq!(positions.len(), 1, "every retry answers the first position");
    }
    all.sort_unstable();
    assert_eq!(all, (1..=12).collect::<Vec<_>>(), "3 keyed + 9 plain");
    wait_until("a gets 12", || nodes[0].sink.offsets(&r).len() >= 12).await;
    assert_eq!(nodes[0].sink.offsets(&r), (1..=12).collect::<Vec<_>>());
    let mut elsewhere = request(&room("idem:2"), 10, MINUTE);
    elsewhere.idempotency_key = Some("key-0".into());
    match nodes[2].broker.publish(elsewhere).await {
        Err(BrokerError::IdempotencyConflict { room }) => assert_eq!(room, "idem:1"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    for node in nodes {
        node.stop().await;
    }
}
