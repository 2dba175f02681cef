//! The registry over time: dead nodes are reaped (with `member_left` for
//! their members), a NATS restarted without its store gets everything
//! back, leaving and restarting a node clean up after it.

mod cluster_common;

use cluster_common::{acme, eventually, now_ms, prefix, room, Store, TestNode, HEARTBEAT};
use futures_util::StreamExt;
use herald_broker_nats::wire::decode_presence;
use herald_core::{Cluster, ClusterAdmission, ConnectionRecord, PerUserPolicy, PresenceChange};
use herald_testkit::NatsServer;
use std::time::{Duration, Instant};

/// Scheduling slack on top of a promised delay (no speed is asserted).
const SLACK: Duration = Duration::from_millis(300);

/// Admits `rec` on `node`, holds it there and joins it to `name` (with
/// presence); returns the record as the registry has it.
async fn admit_in_room(node: &TestNode, conn: &str, user: &str, name: &str) -> ConnectionRecord {
    let mut rec = node.record(conn, user, now_ms());
    let admitted = node.connect(&rec, PerUserPolicy::Exclusive, 5).await;
    assert_eq!(
        admitted.expect("admit"),
        ClusterAdmission::Admitted(Vec::new())
    );
    rec.rooms.push(name.into());
    node.cluster
        .joined(&room(name), &rec, true)
        .await
        .expect("join");
    node.fake.hold(&rec, &[(name, true)]);
    rec
}

#[tokio::test]
async fn a_silent_node_is_reaped_within_two_heartbeats_with_member_left() {
    let server = NatsServer::start();
    let p = prefix("reap");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let c = TestNode::start(&server.url(), &p, "c").await;
    let store = Store::connect(&server.url(), &p).await;
    let lobby = room("lobby:1");
    let mut messages = store.subscribe_room(&lobby).await;

    admit_in_room(&a, "a1", "u1", "lobby:1").await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;
    assert_eq!(a.cluster.presence(&lobby).await.expect("presence").len(), 2);

    // b's tasks stop as in a crash: no `leave`.
    b.stop().await;
    let stopped = Instant::now();
    let reaped = eventually(HEARTBEAT * 2 + SLACK, || async {
        store.node_keys("b").await.is_empty()
            && !store
                .keys("nodes")
                .await
                .contains(&herald_broker_nats::names::token("b"))
    })
    .await;
    assert!(
        reaped,
        "b still registered {:?} after it stopped",
        stopped.elapsed()
    );
    let members = a.cluster.presence(&lobby).await.expect("presence");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].connection_id, "a1");
    assert!(c
        .cluster
        .user_connections(&acme(), "u2")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        store.user(&acme(), "u2").await,
        serde_json::Value::Null,
        "the user's entry is gone, not just hidden"
    );
    let nodes: Vec<String> = a
        .cluster
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(nodes, ["a", "c"]);

    // Exactly one member_left, though two survivors were reaping.
    let left = tokio::time::timeout(Duration::from_secs(2), messages.next())
        .await
        .expect("member_left published")
        .expect("message");
    assert_eq!(
        decode_presence(&lobby, left.headers.as_ref(), &left.payload),
        Some(PresenceChange {
            room: lobby.clone(),
            joined: false,
            user_id: "u2".into(),
            connection_id: "b1".into(),
            node_id: "b".into(),
        })
    );
    let again = tokio::time::timeout(HEARTBEAT * 2, messages.next()).await;
    assert!(again.is_err(), "member_left went out twice");
}

#[tokio::test]
async fn nats_restarted_without_its_store_gets_every_entry_back() {
    let mut server = NatsServer::start();
    let p = prefix("restart");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let lobby = room("lobby:1");
    admit_in_room(&a, "a1", "u1", "lobby:1").await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;

    server.restart_empty();
    let store = Store::connect(&server.url(), &p).await;
    let back = eventually(Duration::from_secs(10), || async {
        let members = a.cluster.presence(&lobby).await.map(|m| m.len());
        let u2 = a
            .cluster
            .user_connections(&acme(), "u2")
            .await
            .map(|l| l.len());
        matches!((members, u2), (Ok(2), Ok(1)))
    })
    .await;
    assert!(back, "entries not registered again");
    let back = eventually(HEARTBEAT * 3, || async {
        store.lock(&acme(), "u1").await.as_deref() == Some("a1")
            && store.lock(&acme(), "u2").await.as_deref() == Some("b1")
    })
    .await;
    assert!(back, "exclusive locks not taken again");

    // The control channel works again too.
    a.cluster
        .disconnect_user(&acme(), "u2", 4013)
        .await
        .expect("disconnect");
    let reached = eventually(Duration::from_secs(5), || async {
        b.fake.was_closed("b1", 4013)
    })
    .await;
    assert!(reached, "b did not subscribe again after the restart");
    assert!(a.cluster.is_ready() && b.cluster.is_ready());
}

#[tokio::test]
async fn leave_removes_the_node_and_announces_its_members() {
    let server = NatsServer::start();
    let p = prefix("leave");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let store = Store::connect(&server.url(), &p).await;
    let lobby = room("lobby:1");
    let mut messages = store.subscribe_room(&lobby).await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;

    b.cluster.leave().await;
    assert!(a
        .cluster
        .presence(&lobby)
        .await
        .expect("presence")
        .is_empty());
    assert!(a
        .cluster
        .user_connections(&acme(), "u2")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(store.user(&acme(), "u2").await, serde_json::Value::Null);
    assert!(store.node_keys("b").await.is_empty());
    let left = tokio::time::timeout(Duration::from_secs(2), messages.next())
        .await
        .expect("member_left published")
        .expect("message");
    assert!(matches!(
        decode_presence(&lobby, left.headers.as_ref(), &left.payload),
        Some(PresenceChange { joined: false, .. })
    ));
    // Its heartbeat does not bring it back.
    tokio::time::sleep(HEARTBEAT * 2).await;
    let nodes: Vec<String> = a
        .cluster
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(nodes, ["a"]);
    assert!(a
        .cluster
        .user_connections(&acme(), "u2")
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_drops_what_its_predecessor_left() {
    let server = NatsServer::start();
    let p = prefix("reborn");
    let first = TestNode::start(&server.url(), &p, "a").await;
    admit_in_room(&first, "old", "u1", "lobby:1").await;
    first.stop().await;

    // Back before anyone took it for dead: its nodes entry never lapsed.
    let second = TestNode::start(&server.url(), &p, "a").await;
    let fresh = second.record("new", "u3", now_ms());
    second
        .connect(&fresh, PerUserPolicy::Reject, 5)
        .await
        .expect("admit");
    let clean = eventually(HEARTBEAT * 2 + SLACK, || async {
        second
            .cluster
            .user_connections(&acme(), "u1")
            .await
            .is_ok_and(|l| l.is_empty())
            && second
                .cluster
                .presence(&room("lobby:1"))
                .await
                .is_ok_and(|m| m.is_empty())
    })
    .await;
    assert!(clean, "the predecessor's entries stayed");
    let kept = second
        .cluster
        .user_connections(&acme(), "u3")
        .await
        .expect("list");
    assert_eq!(kept, vec![fresh]);
}

#[tokio::test]
async fn a_node_the_store_forgot_registers_again_even_when_an_admission_comes_first() {
    let server = NatsServer::start();
    let p = prefix("forgot");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let lobby = room("lobby:1");
    admit_in_room(&a, "a1", "u1", "lobby:1").await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;

    // The buckets stay, their contents go (as when a survivor wrongly
    // reaped both); node a admits before its next heartbeat.
    let store = Store::connect(&server.url(), &p).await;
    store.wipe("registry").await;
    store.wipe("nodes").await;
    let fresh = a.record("a2", "u3", now_ms());
    a.connect(&fresh, PerUserPolicy::Reject, 5)
        .await
        .expect("admit");
    // A write racing the wipe may go unanswered (its heartbeat then fails
    // after the command timeout and the next one carries on): the deadline
    // covers that.
    let back = eventually(Duration::from_secs(2) + HEARTBEAT * 4, || async {
        let members = a.cluster.presence(&lobby).await.map(|m| m.len());
        let u1 = b
            .cluster
            .user_connections(&acme(), "u1")
            .await
            .map(|l| l.len());
        let u3 = b
            .cluster
            .user_connections(&acme(), "u3")
            .await
            .map(|l| l.len());
        matches!((members, u1, u3), (Ok(2), Ok(1), Ok(1)))
    })
    .await;
    assert!(
        back,
        "entries not registered again: {:?} {:?} {:?} {:?}",
        a.cluster.presence(&lobby).await,
        b.cluster.user_connections(&acme(), "u1").await,
        b.cluster.user_connections(&acme(), "u3").await,
        store.keys("registry").await
    );
    assert_eq!(store.lock(&acme(), "u1").await.as_deref(), Some("a1"));
}

#[tokio::test]
async fn an_outage_longer_than_the_node_keys_reaps_no_live_node() {
    let mut server = NatsServer::start();
    let p = prefix("outage");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let lobby = room("lobby:1");
    admit_in_room(&a, "a1", "u1", "lobby:1").await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;

    // Down for longer than a node key lives: every key has expired when
    // the server comes back with its store.
    server.kill();
    tokio::time::sleep(HEARTBEAT * 3).await;
    server.restart();
    let store = Store::connect(&server.url(), &p).await;
    let mut messages = store.subscribe_room(&lobby).await;
    let up = eventually(Duration::from_secs(10), || async {
        a.cluster.is_ready() && b.cluster.is_ready()
    })
    .await;
    assert!(up, "not ready after the outage");
    // Reads may skip b's members until its next heartbeat, but nothing of
    // b is removed: its record, member and marker stay throughout.
    let until = Instant::now() + HEARTBEAT * 4;
    while Instant::now() < until {
        let held = store.node_keys("b").await;
        assert_eq!(held.len(), 3, "b's entries were reaped: {held:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let members = a.cluster.presence(&lobby).await.expect("presence");
    assert_eq!(members.len(), 2);
    let left = tokio::time::timeout(Duration::from_millis(50), messages.next()).await;
    assert!(left.is_err(), "member_left announced for a live node");
}
