//! The admin side of the HTTP API: disconnecting a user, listing a user's
//! connections, room presence, stats and minting tokens, and how presence
//! and connections are scoped by tenant (PROTOCOL.md 4 and 5). Keys and
//! scopes, publishing and broadcasting live in `api.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_user_closes_all_their_sockets_with_4013() {
    let node = TestNode::start("").await;
    let (mut a1, _) = node.connect_user("alice").await;
    let (mut a2, _) = node.connect_user("alice").await;
    let (mut bob, _) = node.connect_user("bob").await;
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/users/alice/disconnect",
            Some(ADMIN_KEY),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    for c in [&mut a1, &mut a2] {
        let close = c.expect_close(FRAME_WAIT).await;
        assert_eq!(close.code, 4013, "{close:?}");
        let d = close
            .disconnect
            .unwrap_or_else(|| panic!("disconnect frame first"));
        assert_eq!(d["code"], 4013, "{d}");
        assert_eq!(
            d["reconnect"], false,
            "API disconnect says do not reconnect: {d}"
        );
    }
    bob.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_connections_are_listed() {
    let node = TestNode::start("").await;
    let t = node.token("alice", &[], None, json!({"projects": [7]}), HOUR);
    let (mut c1, a1) = node.connect_token(&t).await;
    let (_c2, a2) = node.connect_token(&t).await;
    c1.join("project:7").await;
    let (s, b) = node
        .api(
            "GET",
            "/api/v1/users/alice/connections",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["user_id"], "alice", "{b}");
    let conns = b["connections"].as_array().unwrap_or_else(|| panic!("{b}"));
    assert_eq!(conns.len(), 2, "{b}");
    let c1_entry = conns
        .iter()
        .find(|c| c["connection_id"] == a1["connection_id"])
        .unwrap_or_else(|| panic!("first connection listed: {b}"));
    assert!(
        conns
            .iter()
            .any(|c| c["connection_id"] == a2["connection_id"]),
        "second connection listed: {b}"
    );
    assert_eq!(c1_entry["node_id"], a1["node_id"], "{c1_entry}");
    assert!(c1_entry["transport"].is_string(), "{c1_entry}");
    assert!(!c1_entry["connected_at"].is_null(), "{c1_entry}");
    let rooms = c1_entry["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("{c1_entry}"));
    assert!(
        rooms
            .iter()
            .any(|r| r == "project:7" || r["room"] == "project:7"),
        "rooms lists project:7: {c1_entry}"
    );
    let (s, b) = node
        .api(
            "GET",
            "/api/v1/users/nobody/connections",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert!(
        (s == 200 && b["connections"].as_array().is_some_and(|a| a.is_empty())) || s == 404,
        "unknown user: {s} {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_endpoint_lists_members() {
    let node = TestNode::start("").await;
    let ta = node.token("alice", &[], None, json!({"projects": [7]}), HOUR);
    let tb = node.token("bob", &[], None, json!({"projects": [7]}), HOUR);
    let (mut a, aauth) = node.connect_token(&ta).await;
    let (mut b, _) = node.connect_token(&tb).await;
    a.join("project:7").await;
    b.join("project:7").await;
    let (s, body) = node
        .api(
            "GET",
            &format!("/api/v1/rooms/{}/presence", enc("project:7")),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["room"], "project:7", "{body}");
    let members = body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    let mut users: Vec<&str> = members
        .iter()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    users.sort_unstable();
    assert_eq!(users, vec!["alice", "bob"], "{body}");
    let am = members
        .iter()
        .find(|m| m["user_id"] == "alice")
        .expect("alice");
    assert_eq!(am["connection_id"], aauth["connection_id"]);
    assert!(am["node_id"].is_string());
    // Unencoded colon in the path is accepted as well.
    let (s, body2) = node
        .api(
            "GET",
            "/api/v1/rooms/project:7/presence",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body2}");
    drop(b);
    let deadline = std::time::Instant::now() + FRAME_WAIT;
    loop {
        let (_, body) = node
            .api(
                "GET",
                "/api/v1/rooms/project%3A7/presence",
                Some(ADMIN_KEY),
                None,
            )
            .await;
        if body["members"].as_array().map(|m| m.len()) == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob still present: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_users_and_rooms() {
    let node = TestNode::start("").await;
    let (_a1, _) = node.connect_user("alice").await;
    let (_a2, _) = node.connect_user("alice").await;
    let (_b, _) = node.connect_user("bob").await;
    let (s, b) = node
        .api("GET", "/api/v1/stats", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["connections"], 3, "{b}");
    assert_eq!(b["users"], 2, "{b}");
    assert!(
        b["rooms"].as_u64().is_some_and(|r| r >= 3),
        "user:alice, user:bob, global: {b}"
    );
    let nodes = b["nodes"].as_array().unwrap_or_else(|| panic!("{b}"));
    assert_eq!(nodes.len(), 1, "{b}");
    assert!(nodes[0]["node_id"].is_string(), "{b}");
    assert_eq!(nodes[0]["connections"], 3, "{b}");
    assert_eq!(nodes[0]["users"], 2, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_endpoint_mints_a_token_that_connects() {
    let node = TestNode::start("").await;
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN_KEY),
            Some(json!({"sub": "carol", "roles": ["viewer"], "ttl": "1h", "claims": {"projects": [7]}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token: {b}"))
        .to_owned();
    assert!(!b["expires_at"].is_null(), "expires_at: {b}");
    let (mut c, auth) = node.connect_token(&token).await;
    assert_eq!(auth["user_id"], "carol");
    c.join("project:7").await;
    // A tenant given at minting scopes the token.
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN_KEY),
            Some(json!({"sub": "dave", "tenant": "acme"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (mut d, _) = node
        .connect_token(b["token"].as_str().expect("token"))
        .await;
    node.publish_body(json!({"room": "user:dave", "event": "t", "data": 1, "tenant": "acme"}))
        .await;
    let e = d.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_connections_are_scoped_by_tenant() {
    let node = TestNode::start("").await;
    let ta = node.token("alice", &[], Some("acme"), json!({"projects": [7]}), HOUR);
    let tb = node.token("bob", &[], Some("globex"), json!({"projects": [7]}), HOUR);
    let (mut a, _) = node.connect_token(&ta).await;
    let (mut b, _) = node.connect_token(&tb).await;
    a.join("project:7").await;
    b.join("project:7").await;
    let users = |body: &Value| -> Vec<String> {
        body["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["user_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (s, body) = node
        .api(
            "GET",
            "/api/v1/rooms/project%3A7/presence?tenant=acme",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(users(&body), vec!["alice"], "acme sees only acme: {body}");
    let (_, body) = node
        .api(
            "GET",
            "/api/v1/rooms/project%3A7/presence?tenant=globex",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(users(&body), vec!["bob"], "globex sees only globex: {body}");
    let (s, body) = node
        .api(
            "GET",
            "/api/v1/rooms/project%3A7/presence",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert!(s == 200 || s == 404, "{s} {body}");
    assert!(
        users(&body).is_empty(),
        "the default tenant has no members: {body}"
    );
    // Members of another tenant never appear in room_joined either.
    let ta2 = node.token("amy", &[], Some("acme"), json!({"projects": [7]}), HOUR);
    let (mut a2, _) = node.connect_token(&ta2).await;
    let j = a2.join("project:7").await;
    let names: Vec<&str> = j["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["user_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !names.contains(&"bob"),
        "room_joined members leak tenant globex: {j}"
    );
    assert!(names.contains(&"alice"), "{j}");
    let mj = a.expect_type("member_joined", FRAME_WAIT).await;
    assert_eq!(mj["user_id"], "amy");
    b.expect_nothing_queued().await;
}
