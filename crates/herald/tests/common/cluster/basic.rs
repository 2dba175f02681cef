//! The core scenarios, on any engine: cross-node delivery, shared offsets,
//! resume on another node, cluster-wide presence.

use super::*;
use crate::common::FRAME_WAIT;
use serde_json::{json, Value};
use std::time::Duration;

/// Core: an event published through C reaches a member on A, and a
/// `send_message` on B reaches a member on A; non-members get nothing.
pub async fn scenario_cross_node_delivery(url: &str) {
    let c = TestCluster::start(3, url, "").await;
    let (a, b, cn) = (c.node(0), c.node(1), c.node(2));
    let (mut alice, aauth) = a.connect_token(&project_token(a, "alice")).await;
    assert_eq!(aauth["node_id"], c.id(0), "{aauth}");
    let j = alice.join("project:7").await;
    let epoch = epoch_of(&j);
    let (mut outsider, _) = cn.connect_user("erin").await;

    let answer = cn
        .publish("project:7", "project.updated", json!({"v": 1}))
        .await;
    assert_eq!(offset_of(&answer), 1, "{answer}");
    assert_eq!(epoch_of(&answer), epoch, "one epoch across nodes: {answer}");
    let ev = alice.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["room"], "project:7", "{ev}");
    assert_eq!(ev["event"], "project.updated", "{ev}");
    assert_eq!(ev["data"], json!({"v": 1}), "{ev}");
    assert_eq!(ev["epoch"], epoch.as_str(), "{ev}");
    assert_eq!(ev["offset"], 1, "{ev}");
    assert!(ev["ts"].is_u64() && ev["event_id"].is_string(), "{ev}");

    let (mut bob, bauth) = b.connect_user("bob").await;
    assert_eq!(bauth["node_id"], c.id(1), "{bauth}");
    alice.join("chat:x").await;
    bob.join("chat:x").await;
    let ack = bob
        .request(json!({"type": "send_message", "room": "chat:x", "data": {"text": "hi"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["offset"], 1, "{ack}");
    let m = alice.expect_type("message", FRAME_WAIT).await;
    assert_eq!(m["room"], "chat:x", "{m}");
    assert_eq!(m["data"], json!({"text": "hi"}), "{m}");
    assert_eq!(m["from"]["user_id"], "bob", "{m}");
    assert_eq!(m["from"]["connection_id"], bauth["connection_id"], "{m}");
    assert_eq!(m["epoch"], ack["epoch"], "{m} vs {ack}");
    assert_eq!(m["offset"], 1, "{m}");
    // An idempotency key holds cluster-wide: a retry through another node
    // answers the first offset and delivers nothing again.
    let body = json!({"room": "project:7", "event": "paid", "data": {}, "idempotency_key": "k7"});
    let first = a.publish_body(body.clone()).await;
    let retry = b.publish_body(body).await;
    assert_eq!((offset_of(&first), offset_of(&retry)), (2, 2), "{retry}");
    let ev = alice.expect_type("event", FRAME_WAIT).await;
    assert_eq!((offset_of(&ev), &ev["event"]), (2, &json!("paid")), "{ev}");
    // Nothing else for alice: a sentinel published after the retry is her
    // very next frame (one room, one order across nodes).
    cn.publish("project:7", "sentinel", json!({})).await;
    expect_sentinel(&mut alice, 3).await;
    // The outsider's node published project.updated itself, so a wrong
    // delivery of it would already be queued there.
    outsider.expect_nothing_queued().await;
}

/// Core: sequential publishes alternating between nodes get offsets 1..N of
/// one epoch, then concurrent ones through every node continue them; every
/// subscriber on every node sees exactly 1..total in order.
pub async fn scenario_shared_offsets(url: &str) {
    const SEQUENTIAL: u64 = 300;
    const PER_NODE: u64 = 100;
    let c = TestCluster::start(3, url, "").await;
    let room = "stream:offsets";
    let mut subs = Vec::new();
    let mut epoch = String::new();
    for i in 0..6 {
        let (mut s, _) = c.node(i % 3).connect_user(&format!("sub-{i}")).await;
        let j = s.join(room).await;
        assert_eq!(j["offset"], 0, "{j}");
        if i == 0 {
            epoch = epoch_of(&j);
        }
        assert_eq!(epoch_of(&j), epoch, "one epoch on every node: {j}");
        subs.push(s);
    }
    for n in 1..=SEQUENTIAL {
        let a = c
            .node(n as usize % 3)
            .publish(room, "tick", json!({"n": n}))
            .await;
        assert_eq!(offset_of(&a), n, "publish {n} through node {}: {a}", n % 3);
        assert_eq!(epoch_of(&a), epoch, "{a}");
    }
    let concurrent = c.nodes().iter().map(|node| async move {
        let mut offs = Vec::new();
        for _ in 0..PER_NODE {
            let a = node
                .publish(room, "tick", json!({"concurrent": true}))
                .await;
            offs.push(offset_of(&a));
        }
        offs
    });
    let mut offs: Vec<u64> = futures_util::future::join_all(concurrent)
        .await
        .into_iter()
        .flatten()
        .collect();
    offs.sort_unstable();
    let total = SEQUENTIAL + 3 * PER_NODE;
    assert_eq!(offs, (SEQUENTIAL + 1..=total).collect::<Vec<_>>());
    for (i, s) in subs.iter_mut().enumerate() {
        let evs = s
            .collect_type("event", total as usize, Duration::from_secs(20))
            .await;
        let got: Vec<u64> = evs.iter().map(offset_of).collect();
        assert_eq!(got, (1..=total).collect::<Vec<_>>(), "subscriber {i}");
        assert!(evs.iter().all(|e| e["epoch"] == epoch.as_str()), "sub {i}");
    }
    // No duplicates after them: a sentinel is every subscriber's next frame.
    c.node(0).publish(room, "sentinel", json!({})).await;
    for s in subs.iter_mut() {
        expect_sentinel(s, total + 1).await;
    }
}

/// Core: read some events on A, drop, resume on B with `since`: recovered,
/// the missed events replayed with no gap and no duplicate, then live ones.
pub async fn scenario_resume_across_nodes(url: &str) {
    let c = TestCluster::start(3, url, "").await;
    let (a, b, cn) = (c.node(0), c.node(1), c.node(2));
    let room = "stream:resume";
    let (mut x, _) = a.connect_user("alice").await;
    let epoch = epoch_of(&x.join(room).await);
    for i in 1..=10u64 {
        let ans = cn.publish(room, "e", json!({"i": i})).await;
        assert_eq!(offset_of(&ans), i, "{ans}");
    }
    let evs = x.collect_type("event", 6, FRAME_WAIT).await;
    let got: Vec<u64> = evs.iter().map(offset_of).collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    drop(x);
    for i in 11..=20u64 {
        a.publish(room, "e", json!({"i": i})).await;
    }
    let (mut y, _) = b.connect_user("alice").await;
    let j = join_since(&mut y, room, &epoch, 6).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["epoch"], epoch.as_str(), "{j}");
    assert_eq!(j["offset"], 20, "{j}");
    assert_eq!(j["replayed"], 14, "{j}");
    for i in 21..=25u64 {
        cn.publish(room, "e", json!({"i": i})).await;
    }
    let evs = y.collect_type("event", 19, FRAME_WAIT).await;
    let got: Vec<u64> = evs.iter().map(offset_of).collect();
    assert_eq!(got, (7..=25).collect::<Vec<_>>(), "no gap, no duplicate");
    for e in &evs {
        assert_eq!(e["data"]["i"], e["offset"], "payload matches offset: {e}");
    }
    // No duplicate after them: a sentinel is the next frame.
    a.publish(room, "sentinel", json!({})).await;
    expect_sentinel(&mut y, 26).await;
}

/// Core: members on A and B are listed by C's presence API with their node;
/// `member_joined` / `member_left` cross nodes; a dropped socket leaves.
pub async fn scenario_presence(url: &str) {
    let c = TestCluster::start(3, url, "").await;
    let (a, b, cn) = (c.node(0), c.node(1), c.node(2));
    let room = "project:7";
    let (mut alice, aa) = a.connect_token(&project_token(a, "alice")).await;
    alice.join(room).await;
    let (mut bob, ba) = b.connect_token(&project_token(b, "bob")).await;
    let j = bob.join(room).await;
    let listed = j["members"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert!(
        listed.iter().any(|m| m["user_id"] == "alice"
            && m["connection_id"] == aa["connection_id"]
            && m["node_id"] == c.id(0)),
        "bob's room_joined lists alice on {}: {j}",
        c.id(0)
    );
    expect_member(&mut alice, "member_joined", "bob", &ba["connection_id"]).await;
    let conn = |v: &Value| v["connection_id"].as_str().unwrap_or_default().to_owned();
    let mut want = vec![
        ("alice".to_owned(), conn(&aa), c.id(0).to_owned()),
        ("bob".to_owned(), conn(&ba), c.id(1).to_owned()),
    ];
    want.sort();
    let got = presence(cn, room).await.expect("presence on C");
    assert_eq!(got, want, "presence through {}", c.id(2));

    let (mut carol, ca) = cn.connect_token(&project_token(cn, "carol")).await;
    carol.join(room).await;
    expect_member(&mut alice, "member_joined", "carol", &ca["connection_id"]).await;
    expect_member(&mut bob, "member_joined", "carol", &ca["connection_id"]).await;
    let left = bob
        .request(json!({"type": "leave_room", "room": room}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    expect_member(&mut alice, "member_left", "bob", &ba["connection_id"]).await;
    expect_member(&mut carol, "member_left", "bob", &ba["connection_id"]).await;
    drop(carol);
    expect_member(&mut alice, "member_left", "carol", &ca["connection_id"]).await;
    let only_alice = vec![("alice".to_owned(), conn(&aa), c.id(0).to_owned())];
    let only = &only_alice;
    eventually(
        "presence on B lists only alice",
        FRAME_WAIT,
        || async move {
            let got = presence(b, room).await?;
            if &got == only {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}
