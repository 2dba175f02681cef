//! The ingest stream consumer against real Redis: every entry published
//! once and acknowledged, shared between nodes, dead-lettered when invalid
//! or delivered too often, claimed from a dead node, retried while the
//! broker is unavailable, and resumed after Redis restarts empty.

mod support;

use fred::interfaces::StreamsInterface;
use fred::types::Value;
use herald_broker_redis::IngestOptions;
use herald_testkit::{RedisCluster, RedisServer};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::{fast, payload, start_node, wait_for, Mode, Service, Target, GROUP};

async fn publishes_each_entry_once_in_order(url: &str) {
    let service = Service::connect(url).await;
    // Some entries exist before any node created the group: they count too.
    let mut ids = vec![service.append(&payload(0)).await];
    let target = Target::new(Mode::Accept);
    let node = start_node(url, "n1", target.clone(), IngestOptions::default());
    for n in 1..20 {
        ids.push(service.append(&payload(n)).await);
    }
    wait_for("20 publishes", || async { target.published().len() >= 20 }).await;
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), payload(n)))
        .collect();
    assert_eq!(target.published(), expected, "once each, in stream order");
    wait_for("acknowledgements", || async {
        service.pending().await == 0
    })
    .await;
    assert_eq!(
        service.stream_len().await,
        0,
        "acknowledged entries are deleted"
    );
    node.stop().await;
    assert_eq!(target.published().len(), 20);
    assert!(
        service.consumers().await.is_empty(),
        "a node that stops with nothing pending leaves the group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_published_once_and_acknowledged() {
    let server = RedisServer::start();
    publishes_each_entry_once_in_order(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_published_once_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    publishes_each_entry_once_in_order(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_group_and_publish_every_entry_once() {
    let server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let mut ids = HashSet::new();
    for n in 0..250 {
        ids.insert(service.append(&payload(n)).await);
    }
    // Each publish takes a moment, so that neither node can take it all.
    let (a, b) = (Target::slow(), Target::slow());
    let node_a = start_node(&url, "a", a.clone(), fast());
    let node_b = start_node(&url, "b", b.clone(), fast());
    for n in 250..500 {
        ids.insert(service.append(&payload(n)).await);
    }
    wait_for("500 publishes", || async {
        a.published().len() + b.published().len() >= 500
    })
    .await;
    wait_for("acknowledgements", || async {
        service.pending().await == 0
    })
    .await;

    let mut seen = HashSet::new();
    for id in a.ids().into_iter().chain(b.ids()) {
        assert!(seen.insert(id.clone()), "{id} published twice");
    }
    assert_eq!(seen, ids);
    assert!(!a.published().is_empty() && !b.published().is_empty());
    assert_eq!(service.stream_len().await, 0);
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublishable_entries_go_to_the_dead_stream_and_are_acknowledged() {
    let server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let bad = service
        .append(r#"{"room":"bad","event":"e","data":1}"#)
        .await;
    let missing = service
        .append_fields(vec![("data".into(), "x".into())])
        .await;
    let binary = service
        .append_fields(vec![(
            "payload".into(),
            Value::Bytes(vec![0xff, 0xfe].into()),
        )])
        .await;
    let good = service.append(&payload(1)).await;

    let target = Target::new(Mode::Accept);
    let node = start_node(&url, "n1", target.clone(), fast());
    wait_for("the good entry", || async {
        !target.published().is_empty()
    })
    .await;
    wait_for("acknowledgements", || async {
        service.pending().await == 0
    })
    .await;
    assert_eq!(target.ids(), vec![good]);

    let dead = service.dead().await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let by_id: HashMap<&str, &HashMap<String, String>> =
        dead.iter().map(|f| (f["id"].as_str(), f)).collect();
    assert_eq!(by_id[bad.as_str()]["reason"], "room: bad");
    assert!(by_id[bad.as_str()]["payload"].contains(r#""room":"bad""#));
    assert_eq!(by_id[missing.as_str()]["reason"], "missing field payload");
    assert_eq!(by_id[missing.as_str()]["data"], "x", "raw fields kept");
    assert_eq!(
        by_id[binary.as_str()]["reason"],
        "payload is not UTF-8 text"
    );
    assert!(dead.iter().all(|f| f["node"] == "n1"));
    assert_eq!(service.stream_len().await, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_consumer_that_died_are_claimed_by_another() {
    let server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let stuck = Target::new(Mode::Hang);
    let node_a = start_node(&url, "a", stuck.clone(), fast());
    let mut ids = HashSet::new();
    for n in 0..10 {
        ids.insert(service.append(&payload(n)).await);
    }
    // `a` read the entries and hangs on the first; then it dies.
    wait_for("a to take the entries", || async { stuck.attempts() >= 1 }).await;
    wait_for("all ten delivered to a", || async {
        service.pending().await == 10
    })
    .await;
    node_a.stop().await;
    assert_eq!(service.pending().await, 10, "nothing was acknowledged");
    assert_eq!(
        service.consumers().await,
        vec!["a".to_owned()],
        "a keeps its entries"
    );

    let target = Target::new(Mode::Accept);
    let node_b = start_node(&url, "b", target.clone(), fast());
    wait_for("b to publish them", || async {
        target.published().len() >= 10
    })
    .await;
    wait_for("acknowledgements", || async {
        service.pending().await == 0
    })
    .await;
    let published: Vec<String> = target.ids();
    assert_eq!(published.len(), 10, "once each: {published:?}");
    assert_eq!(published.into_iter().collect::<HashSet<_>>(), ids);
    assert!(stuck.published().is_empty());
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_entries_stay_pending_and_are_published_after_recovery() {
    let server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let target = Target::new(Mode::Unavailable);
    let node = start_node(&url, "n1", target.clone(), fast());
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(service.append(&payload(n)).await);
    }
    // Retried with backoff, longer than claim_idle, held by this node.
    wait_for("several retries", || async { target.attempts() >= 6 }).await;
    assert!(target.published().is_empty());
    assert_eq!(service.pending().await, 5, "left pending, not acknowledged");
    let deliveries = service.deliveries().await;
    assert!(
        deliveries.values().all(|&n| n == 1),
        "retries while unavailable use no delivery attempts: {deliveries:?}"
    );

    *target.mode.lock() = Mode::Accept;
    wait_for("the publishes", || async { target.published().len() >= 5 }).await;
    wait_for("acknowledgements", || async {
        service.pending().await == 0
    })
    .await;
    assert_eq!(target.ids(), ids, "each once, in order, nothing lost");
    assert!(service.dead().await.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_too_often_goes_to_the_dead_stream() {
    let server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let redis = &service.clients.commands;
    let stream = service.keys.ingest();
    let _: Value = redis
        .xgroup_create(&stream, GROUP, "0", true)
        .await
        .expect("XGROUP CREATE");
    let poison = service.append(&payload(1)).await;
    let fine = service.append(&payload(2)).await;
    // A consumer `ghost` got both; `poison` was then delivered 4 more times.
    let _: Value = redis
        .xreadgroup(GROUP, "ghost", Some(10), None, false, &stream, ">")
        .await
        .expect("XREADGROUP");
    for _ in 0..4 {
        let _: Value = redis
            .xclaim(
                &stream,
                GROUP,
                "ghost",
                0,
                poison.as_str(),
                None,
                None,
                None,
                false,
                false,
            )
            .await
            .expect("XCLAIM");
    }
    assert_eq!(service.deliveries().await[&poison], 5);

    let target = Target::new(Mode::Accept);
    let node = start_node(&url, "n1", target.clone(), fast());
    wait_for("the claims", || async { service.pending().await == 0 }).await;
    assert_eq!(target.ids(), vec![fine], "the other entry is published");
    let dead = service.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], poison);
    assert!(
        dead[0]["reason"].starts_with("delivery attempts exhausted: "),
        "{}",
        dead[0]["reason"]
    );
    assert_eq!(dead[0]["payload"], payload(1));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_the_group_is_recreated_and_consumption_goes_on() {
    let mut server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let target = Target::new(Mode::Accept);
    let node = start_node(&url, "n1", target.clone(), fast());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(service.append(&payload(n)).await);
    }
    wait_for("the first publishes", || async {
        target.published().len() >= 3
    })
    .await;

    // Down for a while (the consumer backs off), then back, empty.
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| server.restart());
    for n in 3..6 {
        ids.push(service.append(&payload(n)).await);
    }
    wait_for("publishes after the restart", || async {
        target.published().len() >= 6
    })
    .await;
    wait_for("acknowledgements", || async {
        service.pending().await == 0
    })
    .await;
    assert_eq!(target.ids(), ids);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_stops_promptly_while_redis_is_down() {
    let mut server = RedisServer::start();
    let url = server.url();
    let service = Service::connect(&url).await;
    let target = Target::new(Mode::Accept);
    let node = start_node(&url, "n1", target.clone(), fast());
    service.append(&payload(1)).await;
    wait_for("a publish", || async { !target.published().is_empty() }).await;
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.stop().await;
}
