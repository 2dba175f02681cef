//! The registry over time: dead nodes are reaped (with `member_left` for
//! their members), a restarted Redis gets everything back, leaving and
//! restarting a node clean up after it.

mod cluster_common;

use cluster_common::{acme, eventually, now_ms, prefix, room, TestNode, HEARTBEAT};
use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Config;
use fred::types::Builder;
use herald_broker_redis::keys::Keys;
use herald_broker_redis::wire::{decode_room_message, RoomMessage};
use herald_core::{Cluster, ClusterAdmission, ConnectionRecord, PerUserPolicy, PresenceChange};
use herald_testkit::RedisServer;
use std::time::{Duration, Instant};

/// Scheduling slack on top of a promised delay (no speed is asserted).
const SLACK: Duration = Duration::from_millis(300);

/// Room channels are sharded channels, on a single server too.
async fn subscriber(url: &str, channel: &str) -> SubscriberClient {
    let config = Config::from_url(url).expect("url");
    let sub = Builder::from_config(config)
        .build_subscriber_client()
        .expect("subscriber");
    sub.init().await.expect("connect");
    sub.ssubscribe(channel).await.expect("ssubscribe");
    sub
}

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
    let server = RedisServer::start();
    let p = prefix("reap");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let c = TestNode::start(&server.url(), &p, "c").await;
    let keys = Keys::new(&p);
    let lobby = room("lobby:1");
    let sub = subscriber(&server.url(), &keys.room_channel(&lobby)).await;
    let mut messages = sub.message_rx();

    admit_in_room(&a, "a1", "u1", "lobby:1").await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;
    assert_eq!(a.cluster.presence(&lobby).await.expect("presence").len(), 2);

    // b's tasks stop as in a crash: no `leave`.
    b.stop().await;
    let stopped = Instant::now();
    let reaped = eventually(HEARTBEAT * 2 + SLACK, || async {
        server
            .cli(&["ZSCORE", &keys.nodes(), "b"])
            .trim()
            .is_empty()
            && server.cli(&["EXISTS", &keys.node_connections("b")]).trim() == "0"
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
    let raw = server.cli(&["HLEN", &keys.user_connections(&acme(), "u2")]);
    assert_eq!(
        raw.trim(),
        "0",
        "the user's hash entry is gone, not just hidden"
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
    let left = tokio::time::timeout(Duration::from_secs(2), messages.recv())
        .await
        .expect("member_left published")
        .expect("message");
    let bytes = left.value.as_bytes().expect("bytes").to_vec();
    match decode_room_message(&bytes).expect("decodes") {
        RoomMessage::Presence(change) => assert_eq!(
            change,
            PresenceChange {
                room: lobby.clone(),
                joined: false,
                user_id: "u2".into(),
                connection_id: "b1".into(),
                node_id: "b".into(),
            }
        ),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(HEARTBEAT).await;
    assert!(messages.try_recv().is_err(), "member_left went out twice");
    let _ = sub.quit().await;
}

#[tokio::test]
async fn a_restarted_redis_gets_every_entry_back_within_a_few_heartbeats() {
    let mut server = RedisServer::start();
    let p = prefix("restart");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let keys = Keys::new(&p);
    let lobby = room("lobby:1");
    admit_in_room(&a, "a1", "u1", "lobby:1").await;
    admit_in_room(&b, "b1", "u2", "lobby:1").await;

    server.restart();
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "0");
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
        server.cli(&["GET", &keys.user_lock(&acme(), "u1")]).trim() == "a1"
            && server.cli(&["GET", &keys.user_lock(&acme(), "u2")]).trim() == "b1"
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
}

#[tokio::test]
async fn leave_removes_the_node_and_announces_its_members() {
    let server = RedisServer::start();
    let p = prefix("leave");
    let a = TestNode::start(&server.url(), &p, "a").await;
    let b = TestNode::start(&server.url(), &p, "b").await;
    let keys = Keys::new(&p);
    let lobby = room("lobby:1");
    let sub = subscriber(&server.url(), &keys.room_channel(&lobby)).await;
    let mut messages = sub.message_rx();
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
    assert_eq!(
        server
            .cli(&["EXISTS", &keys.user_lock(&acme(), "u2")])
            .trim(),
        "0"
    );
    let left = tokio::time::timeout(Duration::from_secs(2), messages.recv())
        .await
        .expect("member_left published")
        .expect("message");
    assert!(matches!(
        decode_room_message(left.value.as_bytes().expect("bytes")),
        Ok(RoomMessage::Presence(PresenceChange { joined: false, .. }))
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
    let _ = sub.quit().await;
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_drops_what_its_predecessor_left() {
    let server = RedisServer::start();
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
