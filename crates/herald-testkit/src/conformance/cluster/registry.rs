//! Scenarios of the registry across nodes on one server: per-user
//! policies, control commands, presence, connections, stats, and every call
//! answering `Unavailable` while the store is down.

use super::{acme, eventually, prefix, room, ClusterBackend, TestNode};
use herald_core::{BrokerError, Cluster, ClusterAdmission, ConnectionRef, PerUserPolicy};
use std::sync::Arc;
use std::time::Duration;

/// `reject` admits at most `max` of a user across nodes, however the admissions race.
pub async fn reject_never_admits_more_than_max_across_nodes<B: ClusterBackend>(h: &mut B) {
    let p = prefix("reject");
    let a = Arc::new(TestNode::start(h, &p, "a").await);
    let b = Arc::new(TestNode::start(h, &p, "b").await);

    let mut admits = Vec::new();
    for i in 0..20 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let rec = node.record(&format!("c{i}"), "u1", 1_000 + i);
        admits.push(tokio::spawn(async move {
            node.connect(&rec, PerUserPolicy::Reject, 5).await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for admit in admits {
        match admit.await.expect("task").expect("admit") {
            ClusterAdmission::Admitted(displaced) => {
                assert!(displaced.is_empty(), "reject displaces nothing");
                admitted += 1;
            }
            ClusterAdmission::Refused => refused += 1,
        }
    }
    assert_eq!((admitted, refused), (5, 15));
    let listed = a
        .cluster
        .user_connections(&acme(), "u1")
        .await
        .expect("list");
    assert_eq!(listed.len(), 5);
    assert!(a.cluster.would_refuse(&acme(), "u1", 5).await.expect("ask"));
    assert!(!b.cluster.would_refuse(&acme(), "u2", 5).await.expect("ask"));

    // A removal frees a place on either node.
    let gone = listed[0].clone();
    let owner = if gone.node_id == "a" { &a } else { &b };
    owner.cluster.remove(&gone).await.expect("remove");
    owner
        .cluster
        .remove(&gone)
        .await
        .expect("remove is idempotent");
    assert!(!b.cluster.would_refuse(&acme(), "u1", 5).await.expect("ask"));
    let rec = b.record("late", "u1", 9_999);
    assert_eq!(
        b.connect(&rec, PerUserPolicy::Reject, 5)
            .await
            .expect("admit"),
        ClusterAdmission::Admitted(Vec::new())
    );
    // Refused connections left nothing among their node's keys.
    let conns = h.node_connections(&p, "a").await;
    assert!(conns <= 5, "node a holds {conns} connection entries");
}

/// Racing admissions on three nodes keep `evict_oldest` and `exclusive`: each other connection displaced exactly once.
pub async fn concurrent_admissions_on_three_nodes_keep_each_policy<B: ClusterBackend>(h: &mut B) {
    let p = prefix("concurrent");
    let nodes = [
        Arc::new(TestNode::start(h, &p, "a").await),
        Arc::new(TestNode::start(h, &p, "b").await),
        Arc::new(TestNode::start(h, &p, "c").await),
    ];
    for (policy, user, max) in [
        (PerUserPolicy::EvictOldest, "evicted", 3),
        (PerUserPolicy::Exclusive, "exclusive", 10),
    ] {
        let mut admits = Vec::new();
        for i in 0..12u64 {
            let node = nodes[i as usize % 3].clone();
            let rec = node.record(&format!("{user}{i}"), user, 1_000 + i);
            admits.push(tokio::spawn(async move {
                node.connect(&rec, policy, max).await
            }));
        }
        let mut displaced = Vec::new();
        for admit in admits {
            match admit.await.expect("task").expect("admit") {
                ClusterAdmission::Admitted(d) => displaced.extend(d),
                ClusterAdmission::Refused => panic!("{policy:?} never refuses"),
            }
        }
        let kept = nodes[0]
            .cluster
            .user_connections(&acme(), user)
            .await
            .expect("list");
        let keep = if policy == PerUserPolicy::Exclusive {
            1
        } else {
            max
        };
        assert_eq!(kept.len(), keep, "{policy:?}: {kept:?}");
        // Every other connection was displaced exactly once.
        let mut ids: Vec<String> = displaced.into_iter().map(|d| d.connection_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 12 - keep, "{policy:?}: {ids:?}");
        assert!(kept.iter().all(|k| !ids.contains(&k.connection_id)));
        if policy == PerUserPolicy::Exclusive {
            assert_eq!(h.lock(&p, user).await, Some(kept[0].connection_id.clone()));
        }
    }
}

/// `evict_oldest` displaces the oldest connection of any node, closed there by a control command.
pub async fn evict_oldest_displaces_the_oldest_cluster_wide_and_closes_it_remotely<
    B: ClusterBackend,
>(
    h: &mut B,
) {
    let p = prefix("evict");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;

    let c1 = a.record("c1", "u1", 100);
    let c2 = b.record("c2", "u1", 200);
    let c3 = a.record("c3", "u1", 300);
    a.fake.hold(&c1, &[]);
    b.fake.hold(&c2, &[]);
    a.fake.hold(&c3, &[]);
    for (node, rec) in [(&a, &c1), (&b, &c2), (&a, &c3)] {
        let r = node.cluster.admit(rec, PerUserPolicy::EvictOldest, 3).await;
        assert_eq!(r.expect("admit"), ClusterAdmission::Admitted(Vec::new()));
    }
    let c4 = b.record("c4", "u1", 400);
    b.fake.hold(&c4, &[]);
    let displaced = match b.cluster.admit(&c4, PerUserPolicy::EvictOldest, 3).await {
        Ok(ClusterAdmission::Admitted(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        displaced,
        vec![ConnectionRef {
            node_id: "a".into(),
            connection_id: "c1".into()
        }]
    );
    b.cluster
        .close_connections(&displaced, 4010)
        .await
        .expect("close");
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.fake.was_closed("c1", 4010)
        })
        .await,
        "node a never closed c1: {:?}",
        a.fake.closed()
    );
    let ids: Vec<String> = a
        .cluster
        .user_connections(&acme(), "u1")
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.connection_id)
        .collect();
    assert_eq!(ids, ["c2", "c3", "c4"]);
}

/// `exclusive` displaces every older session on any node; the lock stays with its holder until it goes.
pub async fn exclusive_displaces_every_older_session_on_any_node<B: ClusterBackend>(h: &mut B) {
    let p = prefix("exclusive");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;

    let x1 = a.record("x1", "u1", 100);
    a.fake.hold(&x1, &[]);
    let first = a.cluster.admit(&x1, PerUserPolicy::Exclusive, 10).await;
    assert_eq!(
        first.expect("admit"),
        ClusterAdmission::Admitted(Vec::new())
    );

    let x2 = b.record("x2", "u1", 200);
    b.fake.hold(&x2, &[]);
    let displaced = match b.cluster.admit(&x2, PerUserPolicy::Exclusive, 10).await {
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
        "x1 was not closed"
    );
    assert_eq!(h.lock(&p, "u1").await.as_deref(), Some("x2"));
    let listed = a
        .cluster
        .user_connections(&acme(), "u1")
        .await
        .expect("list");
    assert_eq!(listed, vec![x2.clone()]);

    // The lock stays with its holder over heartbeats; its removal
    // releases it (and the user's key goes: nothing is left of the user).
    tokio::time::sleep(B::HEARTBEAT * 4).await;
    assert_eq!(h.lock(&p, "u1").await.as_deref(), Some("x2"));
    assert!(b.fake.closed().is_empty());
    b.cluster.remove(&x2).await.expect("remove");
    assert!(h.user_gone(&p, "u1").await);
    assert_eq!(h.lock(&p, "u1").await, None);
}

/// A session whose lock another took is closed by its own node's renewal, with no command.
pub async fn a_taken_over_lock_closes_its_session_without_any_message<B: ClusterBackend>(
    h: &mut B,
) {
    let p = prefix("takeover");
    let a = TestNode::start(h, &p, "a").await;

    let x1 = a.record("x1", "u1", 100);
    a.fake.hold(&x1, &[]);
    let admitted = a.cluster.admit(&x1, PerUserPolicy::Exclusive, 1).await;
    assert_eq!(
        admitted.expect("admit"),
        ClusterAdmission::Admitted(Vec::new())
    );

    // Another node took the lock and its close command was lost.
    h.set_lock(&p, "u1", "someone-else").await;
    assert!(
        eventually(B::HEARTBEAT * 3, || async { a.fake.was_closed("x1", 4010) }).await,
        "x1 kept running after losing its lock"
    );
    // The lock stays with its new holder.
    assert_eq!(h.lock(&p, "u1").await.as_deref(), Some("someone-else"));

    // A holder the registry has no record of is displaced too; its node is
    // unknown, so the close goes to whichever node holds it.
    let x3 = a.record("x3", "u1", 300);
    let displaced = match a.connect(&x3, PerUserPolicy::Exclusive, 1).await {
        Ok(ClusterAdmission::Admitted(d)) => d,
        other => panic!("{other:?}"),
    };
    // x1 was closed; its record is displaced too unless the node's sweep
    // (which drops records of connections the node no longer holds) got
    // there first.
    let lock_holder = ConnectionRef {
        node_id: String::new(),
        connection_id: "someone-else".into(),
    };
    let x1_ref = ConnectionRef {
        node_id: "a".into(),
        connection_id: "x1".into(),
    };
    assert!(displaced.contains(&lock_holder), "{displaced:?}");
    assert!(
        displaced.iter().all(|d| *d == lock_holder || *d == x1_ref),
        "{displaced:?}"
    );
    assert_eq!(h.lock(&p, "u1").await.as_deref(), Some("x3"));
}

/// `disconnect_user` closes the user's connections on every node, once.
pub async fn disconnect_user_reaches_connections_on_other_nodes<B: ClusterBackend>(h: &mut B) {
    let p = prefix("disconnect");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;
    let c = TestNode::start(h, &p, "c").await;

    for (node, id) in [(&a, "a1"), (&b, "b1"), (&b, "b2"), (&c, "c1")] {
        let rec = node.record(id, "u1", 100);
        node.fake.hold(&rec, &[]);
        node.cluster
            .admit(&rec, PerUserPolicy::Reject, 10)
            .await
            .expect("admit");
    }
    let other = c.record("other", "u2", 100);
    c.fake.hold(&other, &[]);

    let listed = a
        .cluster
        .disconnect_user(&acme(), "u1", 4013)
        .await
        .expect("disconnect");
    assert_eq!(listed, 4);
    assert!(
        a.fake.was_closed("a1", 4013),
        "the local one closes at once"
    );
    let reached = eventually(Duration::from_secs(5), || async {
        b.fake.was_closed("b1", 4013)
            && b.fake.was_closed("b2", 4013)
            && c.fake.was_closed("c1", 4013)
    })
    .await;
    assert!(
        reached,
        "b: {:?}, c: {:?}",
        b.fake.closed(),
        c.fake.closed()
    );
    assert_eq!(c.fake.closed().len(), 1, "u2 was left alone");
    assert_eq!(a.fake.closed().len(), 1, "the origin does not close twice");
}

/// Presence and a user's connections list every node's entries; leaving and removal take them away.
pub async fn presence_and_user_connections_list_every_node<B: ClusterBackend>(h: &mut B) {
    let p = prefix("presence");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;
    let chat = room("chat:1");

    let mut ra = a.record("ca", "u1", 100);
    let mut rb = b.record("cb", "u2", 200);
    let mut rb2 = b.record("cb2", "u1", 300);
    for (node, rec) in [(&a, &ra), (&b, &rb), (&b, &rb2)] {
        node.connect(rec, PerUserPolicy::Reject, 10)
            .await
            .expect("admit");
    }
    for (node, rec) in [(&a, &mut ra), (&b, &mut rb)] {
        rec.rooms.push("chat:1".into());
        node.cluster.joined(&chat, rec, true).await.expect("join");
        node.fake.hold(rec, &[("chat:1", true)]);
    }
    // A room without presence: recorded in the record, not in the members.
    rb2.rooms.push("quiet:1".into());
    b.cluster
        .joined(&room("quiet:1"), &rb2, false)
        .await
        .expect("join");

    let members = b.presence(&chat).await.expect("presence");
    let who: Vec<(&str, &str, &str)> = members
        .iter()
        .map(|m| {
            (
                m.user_id.as_str(),
                m.connection_id.as_str(),
                m.node_id.as_str(),
            )
        })
        .collect();
    assert_eq!(who, [("u1", "ca", "a"), ("u2", "cb", "b")]);
    assert!(a
        .presence(&room("quiet:1"))
        .await
        .expect("presence")
        .is_empty());

    let u1 = b
        .cluster
        .user_connections(&acme(), "u1")
        .await
        .expect("list");
    assert_eq!(
        u1,
        vec![ra.clone(), rb2.clone()],
        "records carry their rooms"
    );

    // Leaving and disconnecting take the entries away.
    ra.rooms.clear();
    a.cluster.left(&chat, &ra, true).await.expect("leave");
    let members = b.presence(&chat).await.expect("presence");
    assert_eq!(members.len(), 1);
    assert_eq!(
        a.cluster
            .user_connections(&acme(), "u1")
            .await
            .expect("list")[0]
            .rooms,
        Vec::<String>::new()
    );
    b.cluster.remove(&rb).await.expect("remove");
    assert!(a.presence(&chat).await.expect("presence").is_empty());

    // A removed connection that still reports a join does not come back.
    b.cluster.joined(&chat, &rb, true).await.expect("join");
    assert!(a.presence(&chat).await.expect("presence").is_empty());
    assert!(a
        .cluster
        .user_connections(&acme(), "u2")
        .await
        .expect("list")
        .is_empty());
}

/// `nodes` lists every live node with the figures of its heartbeat (this node's fresh).
pub async fn stats_list_every_live_node_with_its_figures<B: ClusterBackend>(h: &mut B) {
    let p = prefix("stats");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;
    let c = TestNode::start(h, &p, "c").await;
    c.fake.hold(&c.record("c1", "u1", 1), &[]);
    c.fake.hold(&c.record("c2", "u2", 1), &[]);
    a.fake.hold(&a.record("a1", "u1", 1), &[]);

    let listed = eventually(Duration::from_secs(5), || async {
        let nodes = a.cluster.nodes().await.expect("nodes");
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        ids == ["a", "b", "c"] && nodes[2].connections == 2 && nodes[2].users == 2
    })
    .await;
    assert!(listed, "{:?}", a.cluster.nodes().await);
    let nodes = a.cluster.nodes().await.expect("nodes");
    assert_eq!(nodes[0].connections, 1, "this node's own figures, fresh");
    drop(b);
    drop(c);
}

/// Every call answers `Unavailable` while the server is down; after it is back the registry carries on.
pub async fn every_call_answers_unavailable_while_the_store_is_down<B: ClusterBackend>(h: &mut B) {
    let p = prefix("down");
    let a = TestNode::start(h, &p, "a").await;
    // Ready once connected, the buckets open and the control subjects
    // subscribed.
    let up = eventually(Duration::from_secs(5), || async { a.cluster.is_ready() }).await;
    assert!(up, "never ready");
    h.kill();
    let down = eventually(Duration::from_secs(5), || async { !a.cluster.is_ready() }).await;
    assert!(down, "still ready with the store gone");
    let rec = a.record("c1", "u1", 1);
    let unavailable = |r: Result<(), BrokerError>| matches!(r, Err(BrokerError::Unavailable(_)));
    assert!(unavailable(
        a.cluster
            .admit(&rec, PerUserPolicy::Reject, 1)
            .await
            .map(drop)
    ));
    assert!(unavailable(
        a.cluster.would_refuse(&acme(), "u1", 1).await.map(drop)
    ));
    assert!(unavailable(a.cluster.remove(&rec).await));
    assert!(unavailable(
        a.cluster.joined(&room("r:1"), &rec, true).await
    ));
    assert!(unavailable(a.presence(&room("r:1")).await.map(drop)));
    assert!(unavailable(
        a.cluster.user_connections(&acme(), "u1").await.map(drop)
    ));
    assert!(unavailable(a.cluster.nodes().await.map(drop)));
    assert!(unavailable(
        a.cluster
            .disconnect_user(&acme(), "u1", 4013)
            .await
            .map(drop)
    ));
    let remote = [ConnectionRef {
        node_id: "b".into(),
        connection_id: "x".into(),
    }];
    assert!(unavailable(
        a.cluster.close_connections(&remote, 4010).await
    ));

    // Back (with its store where the backend keeps one): the registry
    // carries on.
    h.revive();
    let up = eventually(Duration::from_secs(10), || async { a.cluster.is_ready() }).await;
    assert!(up, "not ready after the store came back");
    let admitted = eventually(Duration::from_secs(5), || async {
        a.connect(&rec, PerUserPolicy::Reject, 1).await.is_ok()
    })
    .await;
    assert!(admitted, "admission failed after the store came back");
    let listed = a
        .cluster
        .user_connections(&acme(), "u1")
        .await
        .expect("list");
    assert_eq!(listed, vec![rec]);
    a.stop().await;
}

/// A node deciding from what it last wrote still counts other nodes' changes, and leaves nothing behind.
pub async fn a_node_deciding_from_what_it_last_wrote_still_sees_other_nodes_changes<
    B: ClusterBackend,
>(
    h: &mut B,
) {
    let p = prefix("stale");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;

    // a remembers the user's key with one connection; b adds a second.
    let a1 = a.record("a1", "u1", 1);
    let b1 = b.record("b1", "u1", 2);
    for (node, rec) in [(&a, &a1), (&b, &b1)] {
        let admitted = node.connect(rec, PerUserPolicy::Reject, 2).await;
        assert_eq!(
            admitted.expect("admit"),
            ClusterAdmission::Admitted(Vec::new())
        );
    }
    // a's next decision counts b's connection.
    let a2 = a.record("a2", "u1", 3);
    let third = a.connect(&a2, PerUserPolicy::Reject, 2).await;
    assert_eq!(third.expect("admit"), ClusterAdmission::Refused);

    // b removes its connection; a's remembered key still lists it, yet
    // a's removal of its own leaves nothing behind.
    b.cluster.remove(&b1).await.expect("remove");
    a.cluster.remove(&a1).await.expect("remove");
    assert!(h.user_gone(&p, "u1").await);
    assert_eq!(h.lock(&p, "u1").await, None);
    assert!(a
        .cluster
        .user_connections(&acme(), "u1")
        .await
        .expect("list")
        .is_empty());
}
