//! Liveness on one nats-server: the registry conformance suite's scenarios
//! (`herald_testkit::conformance::cluster::liveness`), and what only a
//! JetStream store does (buckets emptied under the nodes, an outage longer
//! than the node keys live).

mod cluster_common;

use cluster_common::{
    acme, eventually, now_ms, prefix, room, NatsBackend, Store, TestNode, HEARTBEAT,
};
use futures_util::StreamExt;
use herald_core::{Cluster, PerUserPolicy};
use herald_testkit::conformance::cluster::liveness;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_silent_node_is_reaped_within_two_heartbeats_with_member_left() {
    liveness::a_silent_node_is_reaped_within_two_heartbeats_with_member_left(
        &mut NatsBackend::start(),
    )
    .await;
}

#[tokio::test]
async fn nats_restarted_without_its_store_gets_every_entry_back() {
    liveness::a_store_restarted_empty_gets_every_entry_back(&mut NatsBackend::start()).await;
}

#[tokio::test]
async fn leave_removes_the_node_and_announces_its_members() {
    liveness::leave_removes_the_node_and_announces_its_members(&mut NatsBackend::start()).await;
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_drops_what_its_predecessor_left() {
    liveness::a_node_restarted_under_the_same_id_drops_what_its_predecessor_left(
        &mut NatsBackend::start(),
    )
    .await;
}

#[tokio::test]
async fn a_node_the_store_forgot_registers_again_even_when_an_admission_comes_first() {
    let h = NatsBackend::start();
    let p = prefix("forgot");
    let a = TestNode::start(&h, &p, "a").await;
    let b = TestNode::start(&h, &p, "b").await;
    let lobby = room("lobby:1");
    a.admit_in_room("a1", "u1", "lobby:1").await;
    b.admit_in_room("b1", "u2", "lobby:1").await;

    // The buckets stay, their contents go (as when a survivor wrongly
    // reaped both); node a admits before its next heartbeat.
    let store = Store::connect(&h.server.url(), &p).await;
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
        let members = a.presence(&lobby).await.map(|m| m.len());
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
        a.presence(&lobby).await,
        b.cluster.user_connections(&acme(), "u1").await,
        b.cluster.user_connections(&acme(), "u3").await,
        store.keys("registry").await
    );
    assert_eq!(store.lock(&acme(), "u1").await.as_deref(), Some("a1"));
}

#[tokio::test]
async fn an_outage_longer_than_the_node_keys_reaps_no_live_node() {
    let mut h = NatsBackend::start();
    let p = prefix("outage");
    let a = TestNode::start(&h, &p, "a").await;
    let b = TestNode::start(&h, &p, "b").await;
    let lobby = room("lobby:1");
    a.admit_in_room("a1", "u1", "lobby:1").await;
    b.admit_in_room("b1", "u2", "lobby:1").await;

    // Down for longer than a node key lives: every key has expired when
    // the server comes back with its store.
    h.server.kill();
    tokio::time::sleep(HEARTBEAT * 3).await;
    h.server.restart();
    let store = Store::connect(&h.server.url(), &p).await;
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
    let members = a.presence(&lobby).await.expect("presence");
    assert_eq!(members.len(), 2);
    let left = tokio::time::timeout(Duration::from_millis(50), messages.next()).await;
    assert!(left.is_err(), "member_left announced for a live node");
}
