//! The registry's core behaviour on a 3-master Redis Cluster: every script
//! stays within one slot, the control channel reaches every node, and the
//! reaper's `member_left` goes out on the sharded room channel.

mod cluster_common;

use cluster_common::{acme, eventually, now_ms, prefix, room, RedisBackend, TestNode, HEARTBEAT};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Config;
use fred::types::Builder;
use herald_broker_redis::keys::Keys;
use herald_broker_redis::wire::{decode_room_message, RoomMessage};
use herald_core::{Cluster, ClusterAdmission, ConnectionRef, PerUserPolicy, PresenceChange};
use herald_testkit::RedisCluster;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_holds_on_a_redis_cluster() {
    let redis = RedisCluster::start();
    let url = redis.url();
    let p = prefix("rc");
    let backend = RedisBackend::on(&url);
    let a = Arc::new(TestNode::start(&backend, &p, "a").await);
    let b = Arc::new(TestNode::start(&backend, &p, "b").await);
    let c = Arc::new(TestNode::start(&backend, &p, "c").await);

    // reject: concurrent admits on three nodes never exceed the limit.
    let mut admits = Vec::new();
    for i in 0..18u64 {
        let node = [&a, &b, &c][(i % 3) as usize].clone();
        let rec = node.record(&format!("r{i}"), "many", 1_000 + i);
        admits.push(tokio::spawn(async move {
            node.connect(&rec, PerUserPolicy::Reject, 4).await
        }));
    }
    let mut admitted = 0;
    for admit in admits {
        if let ClusterAdmission::Admitted(_) = admit.await.expect("task").expect("admit") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
    assert_eq!(
        c.cluster
            .user_connections(&acme(), "many")
            .await
            .expect("list")
            .len(),
        4
    );

    // exclusive: the older session on another node is displaced and closed.
    let x1 = a.record("x1", "solo", 100);
    a.fake.hold(&x1, &[]);
    a.cluster
        .admit(&x1, PerUserPolicy::Exclusive, 1)
        .await
        .expect("admit");
    let x2 = b.record("x2", "solo", 200);
    b.fake.hold(&x2, &[]);
    let displaced = match b.cluster.admit(&x2, PerUserPolicy::Exclusive, 1).await {
        Ok(ClusterAdmission::Admitted(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        displaced,
        vec![ConnectionRef {
            node_id: "a".into(),
            connection_id: "x1".into()
        }]
    );
    b.cluster
        .close_connections(&displaced, 4010)
        .await
        .expect("close");
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.fake.was_closed("x1", 4010)
        })
        .await,
        "x1 not closed"
    );

    // presence and connections list every node.
    let lobby = room("lobby:1");
    let mut members = Vec::new();
    for (node, id) in [(&a, "pa"), (&b, "pb"), (&c, "pc")] {
        let mut rec = node.record(id, id, now_ms());
        node.connect(&rec, PerUserPolicy::Reject, 4)
            .await
            .expect("admit");
        rec.rooms.push("lobby:1".into());
        node.cluster.joined(&lobby, &rec, true).await.expect("join");
        node.fake.hold(&rec, &[("lobby:1", true)]);
        members.push(rec);
    }
    let listed: Vec<String> = a
        .cluster
        .presence(&lobby)
        .await
        .expect("presence")
        .into_iter()
        .map(|m| m.node_id)
        .collect();
    assert_eq!(listed, ["a", "b", "c"]);

    // disconnect_user reaches another node over the control channel.
    let n = a
        .cluster
        .disconnect_user(&acme(), "pb", 4013)
        .await
        .expect("disconnect");
    assert_eq!(n, 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.fake.was_closed("pb", 4013)
        })
        .await,
        "pb not closed"
    );

    // stats list every node.
    let stats_ok = eventually(Duration::from_secs(5), || async {
        let nodes = a.cluster.nodes().await.expect("nodes");
        nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>() == ["a", "b", "c"]
    })
    .await;
    assert!(stats_ok);

    // A silent node is reaped; member_left goes out on the sharded channel.
    let channel = Keys::new(&p).room_channel(&lobby);
    let sub = Builder::from_config(Config::from_url(&url).expect("url"))
        .build_subscriber_client()
        .expect("subscriber");
    sub.init().await.expect("connect");
    sub.ssubscribe(channel.as_str()).await.expect("ssubscribe");
    let mut messages = sub.message_rx();
    c.stop().await;
    let keys = Keys::new(&p);
    let cli = |args: &[&str]| {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        redis.servers()[0].cli(&all)
    };
    let reaped = eventually(HEARTBEAT * 2 + Duration::from_millis(300), || async {
        cli(&["ZSCORE", &keys.nodes(), "c"]).trim().is_empty()
            && cli(&["EXISTS", &keys.node_connections("c")]).trim() == "0"
    })
    .await;
    assert!(reaped, "c was not reaped");
    assert_eq!(
        cli(&["HLEN", &keys.user_connections(&acme(), "pc")]).trim(),
        "0"
    );
    let listed: Vec<String> = a
        .cluster
        .presence(&lobby)
        .await
        .expect("presence")
        .into_iter()
        .map(|m| m.node_id)
        .collect();
    assert_eq!(listed, ["a", "b"]);
    let left = tokio::time::timeout(Duration::from_secs(3), messages.recv())
        .await
        .expect("member_left published")
        .expect("message");
    match decode_room_message(left.value.as_bytes().expect("bytes")).expect("decodes") {
        RoomMessage::Presence(change) => assert_eq!(
            change,
            PresenceChange {
                room: lobby.clone(),
                joined: false,
                user_id: "pc".into(),
                connection_id: "pc".into(),
                node_id: "c".into(),
            }
        ),
        other => panic!("{other:?}"),
    }
    let _ = sub.quit().await;
    a.stop().await;
    b.stop().await;
}
