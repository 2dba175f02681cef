//! Rooms and namespaces: auto-join, rule forms, room name validation,
//! leave, send_message, presence, offsets and order, the event filter and
//! the rooms-per-connection limit (PROTOCOL.md 3 and 4).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

const CHAT: &str = r#"
[namespaces.chat]
join = "any"
send = "any"
presence = true

[namespaces.quiet]
join = "any"
send = "any"

[namespaces.ops]
join = "role:ops,sre"
"#;

fn room_names(auth: &Value) -> Vec<String> {
    auth["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("rooms is an array: {auth}"))
        .iter()
        .map(|r| r["room"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_global_rooms_are_auto_joined_and_listed() {
    let node = TestNode::start("").await;
    let (mut c, auth) = node.connect_user("alice").await;
    let names = room_names(&auth);
    assert!(names.contains(&"user:alice".to_owned()), "{auth}");
    assert!(names.contains(&"global".to_owned()), "{auth}");
    for r in auth["rooms"].as_array().expect("rooms") {
        assert!(r["epoch"].is_string(), "room entry has epoch: {r}");
        assert_eq!(r["offset"], 0, "fresh room offset 0: {r}");
    }
    // Auto-joined rooms deliver without a join.
    node.publish("user:alice", "note", json!({"n": 1})).await;
    let ev = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["room"], "user:alice");
    node.publish("global", "note", json!({"n": 2})).await;
    let ev = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["room"], "global");
    // And a later connection sees the advanced offset.
    let (_c2, auth2) = node.connect_user("alice").await;
    let r = auth2["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["room"] == "user:alice")
        .cloned()
        .expect("user room");
    assert_eq!(r["offset"], 1, "offset of the last event: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_project_requires_the_projects_claim() {
    let node = TestNode::start("").await;
    let t = node.token("alice", &[], None, json!({"projects": [7, "9"]}), HOUR);
    let (mut c, _) = node.connect_token(&t).await;
    let j = c.join("project:7").await;
    assert!(j["id"].is_number(), "room_joined carries the id: {j}");
    assert_eq!(j["offset"], 0, "{j}");
    assert!(j["epoch"].is_string(), "{j}");
    assert!(j["members"].is_array(), "project has presence on: {j}");
    assert!(j.get("recovered").is_none(), "no since, no recovered: {j}");
    c.join("project:9").await;
    c.request_error(
        json!({"type": "join_room", "room": "project:8"}),
        "forbidden",
    )
    .await;
    let (mut d, _) = node.connect_user("bob").await;
    d.request_error(
        json!({"type": "join_room", "room": "project:7"}),
        "forbidden",
    )
    .await;
    // The joined member receives project events.
    node.publish("project:7", "project.updated", json!({"v": 1}))
        .await;
    let ev = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["room"], "project:7");
    d.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_another_users_room_is_forbidden_and_leaks_nothing() {
    let node = TestNode::start("").await;
    let (mut alice, _) = node.connect_user("alice").await;
    let (mut bob, _) = node.connect_user("bob").await;
    alice
        .request_error(
            json!({"type": "join_room", "room": "user:bob"}),
            "forbidden",
        )
        .await;
    node.publish("user:bob", "secret", json!({"for": "bob"}))
        .await;
    let ev = bob.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["room"], "user:bob");
    alice.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespace_is_forbidden_but_admin_passes_every_rule() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("alice").await;
    c.request_error(
        json!({"type": "join_room", "room": "secret:1"}),
        "forbidden",
    )
    .await;
    c.request_error(
        json!({"type": "join_room", "room": "barename"}),
        "forbidden",
    )
    .await;
    let t = node.token("root", &["admin"], None, json!({}), HOUR);
    let (mut a, _) = node.connect_token(&t).await;
    a.join("secret:1").await;
    a.join("user:alice").await;
    a.join("project:123").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_rule_admits_listed_roles_only() {
    let node = TestNode::start(CHAT).await;
    let t = node.token("s", &["sre"], None, json!({}), HOUR);
    let (mut sre, _) = node.connect_token(&t).await;
    sre.join("ops:pager").await;
    let t = node.token("d", &["dev"], None, json!({}), HOUR);
    let (mut dev, _) = node.connect_token(&t).await;
    dev.request_error(
        json!({"type": "join_room", "room": "ops:pager"}),
        "forbidden",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_room_names_get_bad_request() {
    let node = TestNode::start("").await;
    let t = node.token("root", &["admin"], None, json!({}), HOUR);
    let (mut c, _) = node.connect_token(&t).await;
    let long = "a".repeat(10 * 1024);
    let just_over = format!("x:{}", "b".repeat(254));
    for room in [
        "",
        "bad room",
        "a#b",
        "chat:é",
        "line\nbreak",
        "nul\0byte",
        "quote\"",
        "semi;colon",
        "pct%41",
        long.as_str(),
        just_over.as_str(),
    ] {
        let shown: String = room.chars().take(40).collect();
        let reply = c.request(json!({"type": "join_room", "room": room})).await;
        assert_eq!(reply["type"], "error", "room {shown:?}: {reply}");
        assert_eq!(reply["code"], "bad_request", "room {shown:?}: {reply}");
        let reply = c
            .request(json!({"type": "send_message", "room": room, "data": 1}))
            .await;
        assert_eq!(reply["code"], "bad_request", "send to {shown:?}: {reply}");
    }
    // 255 bytes with every allowed character class is a valid name.
    let ok = format!("x:aZ09_.:@/=-{}", "c".repeat(255 - 13));
    assert_eq!(ok.len(), 255);
    c.join(&ok).await;
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_room_stops_delivery_and_leaving_again_is_not_joined() {
    let node = TestNode::start("").await;
    let t = node.token("alice", &[], None, json!({"projects": [7]}), HOUR);
    let (mut c, _) = node.connect_token(&t).await;
    c.join("project:7").await;
    let again = c.join("project:7").await;
    assert_eq!(again["type"], "room_joined", "re-join answers room_joined");
    let left = c
        .request(json!({"type": "leave_room", "room": "project:7"}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    assert_eq!(left["room"], "project:7", "{left}");
    assert!(
        left.get("reason").is_none(),
        "client-initiated leave has no reason: {left}"
    );
    node.publish("project:7", "after.leave", json!(1)).await;
    c.expect_nothing_queued().await;
    c.request_error(
        json!({"type": "leave_room", "room": "project:7"}),
        "not_joined",
    )
    .await;
    c.request_error(
        json!({"type": "leave_room", "room": "project:99"}),
        "not_joined",
    )
    .await;
    // Leaving an auto-joined room works too.
    let left = c
        .request(json!({"type": "leave_room", "room": "global"}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    node.publish("global", "after.leave", json!(1)).await;
    c.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_acks_with_position_and_members_get_message_with_from() {
    let node = TestNode::start(CHAT).await;
    let (mut alice, aauth) = node.connect_user("alice").await;
    let (mut bob, _) = node.connect_user("bob").await;
    alice.join("chat:lobby").await;
    bob.join("chat:lobby").await;
    let ack = alice
        .request(json!({"type": "send_message", "room": "chat:lobby", "data": {"text": "hi", "n": [1, 2]}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(ack["epoch"].is_string(), "ack has epoch: {ack}");
    assert_eq!(ack["offset"], 1, "first message in the room: {ack}");
    let m = bob.expect_type("message", FRAME_WAIT).await;
    assert_eq!(m["room"], "chat:lobby", "{m}");
    assert_eq!(m["event"], "message", "default event name: {m}");
    assert_eq!(m["data"], json!({"text": "hi", "n": [1, 2]}), "{m}");
    assert_eq!(m["offset"], 1, "{m}");
    assert_eq!(m["epoch"], ack["epoch"], "{m}");
    assert_eq!(m["from"]["user_id"], "alice", "{m}");
    assert_eq!(m["from"]["connection_id"], aauth["connection_id"], "{m}");
    assert!(m["ts"].is_u64() && m["event_id"].is_string(), "{m}");
    let ack = alice
        .request(
            json!({"type": "send_message", "room": "chat:lobby", "event": "typing", "data": null}),
        )
        .await;
    assert_eq!(ack["offset"], 2, "{ack}");
    let m = bob.expect_type("message", FRAME_WAIT).await;
    assert_eq!(m["event"], "typing", "custom event name: {m}");
    // Published events and messages share the room's offsets.
    let p = node.publish("chat:lobby", "server.note", json!(3)).await;
    assert_eq!(p["offset"], 3, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_to_unjoined_system_or_global_room_is_refused() {
    let node = TestNode::start(CHAT).await;
    let (mut c, _) = node.connect_user("alice").await;
    c.request_error(
        json!({"type": "send_message", "room": "chat:elsewhere", "data": 1}),
        "not_joined",
    )
    .await;
    c.join("system").await;
    c.request_error(
        json!({"type": "send_message", "room": "system", "data": 1}),
        "forbidden",
    )
    .await;
    c.request_error(
        json!({"type": "send_message", "room": "global", "data": 1}),
        "forbidden",
    )
    .await;
    c.request_error(
        json!({"type": "send_message", "room": "user:alice", "data": 1}),
        "forbidden",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_and_announces_joins_and_leaves() {
    let node = TestNode::start(CHAT).await;
    let (mut alice, aauth) = node.connect_user("alice").await;
    let j = alice.join("chat:p").await;
    let members = j["members"].as_array().expect("members in presence room");
    assert!(
        members.iter().all(|m| m["user_id"] == "alice"),
        "only alice so far: {j}"
    );
    let (mut bob, bauth) = node.connect_user("bob").await;
    let j = bob.join("chat:p").await;
    let members = j["members"].as_array().expect("members");
    let alice_member = members
        .iter()
        .find(|m| m["user_id"] == "alice")
        .unwrap_or_else(|| panic!("alice listed to bob: {j}"));
    assert_eq!(alice_member["connection_id"], aauth["connection_id"]);
    assert!(alice_member["node_id"].is_string(), "{alice_member}");
    let mj = alice.expect_type("member_joined", FRAME_WAIT).await;
    assert_eq!(mj["room"], "chat:p");
    assert_eq!(mj["user_id"], "bob");
    assert_eq!(mj["connection_id"], bauth["connection_id"]);
    bob.request(json!({"type": "leave_room", "room": "chat:p"}))
        .await;
    let ml = alice.expect_type("member_left", FRAME_WAIT).await;
    assert_eq!(ml["user_id"], "bob", "{ml}");
    assert_eq!(ml["connection_id"], bauth["connection_id"], "{ml}");
    // A disconnect also leaves.
    let (mut carol, _) = node.connect_user("carol").await;
    carol.join("chat:p").await;
    let mj = alice.expect_type("member_joined", FRAME_WAIT).await;
    assert_eq!(mj["user_id"], "carol");
    drop(carol);
    let ml = alice.expect_type("member_left", FRAME_WAIT).await;
    assert_eq!(ml["user_id"], "carol", "dropping the socket leaves: {ml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_without_presence_send_no_member_frames() {
    let node = TestNode::start(CHAT).await;
    let (mut alice, _) = node.connect_user("alice").await;
    let j = alice.join("quiet:1").await;
    assert!(
        j.get("members").is_none(),
        "no members without presence: {j}"
    );
    let (mut bob, _) = node.connect_user("bob").await;
    bob.join("quiet:1").await;
    alice.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_count_up_by_one_per_room_and_events_arrive_in_order() {
    let node = TestNode::start("").await;
    let t = node.token("alice", &[], None, json!({"projects": [7, 8]}), HOUR);
    let (mut c, _) = node.connect_token(&t).await;
    c.join("project:7").await;
    c.join("project:8").await;
    // Publish 200 events with 4 concurrent publishers.
    let mut handles = Vec::new();
    let url = node.url();
    for w in 0..4 {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut offsets = Vec::new();
            for i in 0..50 {
                let r = http
                    .post(format!("{url}/api/v1/publish"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"room": "project:7", "event": "tick", "data": {"w": w, "i": i}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(r.status().as_u16(), 200);
                let v: Value = r.json().await.expect("json");
                offsets.push(v["offset"].as_u64().expect("offset"));
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("publisher"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<u64>>(),
        "publish answers offsets 1..=200"
    );
    let evs = c.collect_type("event", 200, Duration::from_secs(20)).await;
    let got: Vec<u64> = evs
        .iter()
        .map(|e| e["offset"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        got,
        (1..=200).collect::<Vec<u64>>(),
        "events arrive in offset order"
    );
    let epoch = &evs[0]["epoch"];
    assert!(evs.iter().all(|e| &e["epoch"] == epoch), "one epoch");
    // Per-worker order is publish order.
    for w in 0..4 {
        let is: Vec<u64> = evs
            .iter()
            .filter(|e| e["data"]["w"] == w)
            .map(|e| e["data"]["i"].as_u64().unwrap_or(999))
            .collect();
        assert_eq!(is, (0..50).collect::<Vec<u64>>(), "worker {w} order");
    }
    // Another room counts on its own.
    let p = node.publish("project:8", "tick", json!(0)).await;
    assert_eq!(p["offset"], 1, "offsets are per room: {p}");
    let e = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["room"], "project:8");
    assert_eq!(e["offset"], 1);
    c.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_frames_carry_every_contract_field() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("alice").await;
    let before = now_ms();
    let p = node
        .publish(
            "user:alice",
            "order.shipped",
            json!({"id": 5, "tags": ["a"], "x": null}),
        )
        .await;
    assert_eq!(p["room"], "user:alice", "{p}");
    assert!(p["epoch"].is_string(), "{p}");
    assert_eq!(p["offset"], 1, "{p}");
    let e = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["room"], "user:alice");
    assert_eq!(e["event"], "order.shipped");
    assert_eq!(e["data"], json!({"id": 5, "tags": ["a"], "x": null}));
    assert_eq!(e["epoch"], p["epoch"]);
    assert_eq!(e["offset"], 1);
    let ts = e["ts"].as_u64().unwrap_or(0);
    assert!(
        ts + 5000 >= before && ts <= now_ms() + 5000,
        "ts is ms since the epoch at publish: {ts} vs {before}"
    );
    assert!(e["event_id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    assert!(
        e.get("from").is_none(),
        "published events have no from: {e}"
    );
    let e2 = {
        node.publish("user:alice", "order.shipped", json!(2)).await;
        c.expect_type("event", FRAME_WAIT).await
    };
    assert_ne!(e2["event_id"], e["event_id"], "event ids are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_filter_subscribe_adds_unsubscribe_removes_messages_unfiltered() {
    let node = TestNode::start(CHAT).await;
    let (mut c, _) = node.connect_user("alice").await;
    let (mut other, _) = node.connect_user("bob").await;
    c.join("chat:f").await;
    other.join("chat:f").await;
    let ack = c
        .request(json!({"type": "subscribe", "events": ["project.*"]}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for ev in [
        "task.created",
        "project.updated",
        "project",
        "project.deep.nested",
        "xproject.y",
    ] {
        node.publish("user:alice", ev, json!({"ev": ev})).await;
    }
    // A sentinel the filter lets through: everything before it was judged.
    node.publish("user:alice", "project.end", json!(0)).await;
    let got = c.collect_until_event("project.end").await;
    let names: Vec<&str> = got.iter().filter_map(|v| v["event"].as_str()).collect();
    assert_eq!(
        names,
        vec!["project.updated", "project.deep.nested"],
        "first subscribe replaces `*`; `*` spans dots"
    );
    // A later subscribe adds.
    c.request(json!({"type": "subscribe", "events": ["task.*"]}))
        .await;
    node.publish("user:alice", "task.created", json!(1)).await;
    node.publish("user:alice", "project.updated", json!(2))
        .await;
    let evs = c.collect_type("event", 2, FRAME_WAIT).await;
    assert_eq!(evs[0]["event"], "task.created");
    assert_eq!(evs[1]["event"], "project.updated");
    // Unsubscribe removes.
    c.request(json!({"type": "unsubscribe", "events": ["project.*"]}))
        .await;
    node.publish("user:alice", "project.updated", json!(3))
        .await;
    node.publish("user:alice", "task.done", json!(4)).await;
    let e = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "task.done", "project.* removed: {e}");
    // Messages are not filtered.
    other
        .request(
            json!({"type": "send_message", "room": "chat:f", "event": "chat.text", "data": "yo"}),
        )
        .await;
    let m = c.expect_type("message", FRAME_WAIT).await;
    assert_eq!(m["event"], "chat.text", "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rooms_per_connection_counts_auto_joined_rooms() {
    let node = TestNode::start(&format!("[limits]\nmax_rooms_per_connection = 4\n{CHAT}")).await;
    let (mut c, auth) = node.connect_user("alice").await;
    assert_eq!(
        room_names(&auth).len(),
        2,
        "user and global auto-joined: {auth}"
    );
    c.join("chat:a").await;
    c.join("chat:b").await;
    c.request_error(
        json!({"type": "join_room", "room": "chat:c"}),
        "limit_exceeded",
    )
    .await;
    // Re-joining a joined room is not a new room.
    c.join("chat:b").await;
    c.request(json!({"type": "leave_room", "room": "chat:a"}))
        .await;
    c.join("chat:c").await;
}
