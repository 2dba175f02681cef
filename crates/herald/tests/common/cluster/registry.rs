//! The cluster-wide registry on any engine: connections and stats across
//! nodes, the disconnect API, per-user `reject` and `exclusive` sessions.

use super::*;
use crate::common::{ADMIN_KEY, FRAME_WAIT};
use serde_json::json;
use std::time::Duration;

/// Stats list every node with its figures on every node; a user's
/// connections on every node are listed by each, and a closed one leaves.
pub async fn scenario_connections_and_stats(url: &str) {
    let c = TestCluster::start(3, url, "").await;
    // Stats: every user on one node, so totals are unambiguous.
    let _d1 = c.node(0).connect_user("dave").await;
    let _d2 = c.node(0).connect_user("dave").await;
    let _e = c.node(1).connect_user("erin").await;
    let _f = c.node(2).connect_user("frank").await;
    // Each node: its user room(s) plus `global`.
    let want = vec![
        ("n1".to_owned(), 2, 1, 2),
        ("n2".to_owned(), 1, 1, 2),
        ("n3".to_owned(), 1, 1, 2),
    ];
    for node in c.nodes() {
        let want = &want;
        eventually(
            "stats list all nodes",
            Duration::from_secs(10),
            || async move {
                let (b, per) = stats(node).await?;
                if &per == want && b["connections"] == 4 && b["users"] == 3 {
                    Ok(())
                } else {
                    Err(format!("{b}"))
                }
            },
        )
        .await;
    }

    // Connections: alice on every node, joined to project:7 on A.
    let mut alice = Vec::new();
    for (i, node) in c.nodes().iter().enumerate() {
        let (mut ws, auth) = node.connect_token(&project_token(node, "alice")).await;
        assert_eq!(auth["node_id"], c.id(i), "{auth}");
        if i == 0 {
            ws.join("project:7").await;
        }
        alice.push((ws, auth));
    }
    let mut want: Vec<(String, String)> = alice
        .iter()
        .map(|(_, a)| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (s("connection_id"), s("node_id"))
        })
        .collect();
    want.sort();
    for node in c.nodes() {
        let (want, a0) = (&want, &alice[0].1);
        eventually(
            "alice's connections",
            Duration::from_secs(5),
            || async move {
                let list = connections(node, "alice").await?;
                let mut got: Vec<(String, String)> = list
                    .iter()
                    .map(|e| {
                        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                        (s("connection_id"), s("node_id"))
                    })
                    .collect();
                got.sort();
                let on_a = list
                    .iter()
                    .find(|e| e["connection_id"] == a0["connection_id"]);
                let rooms_ok = on_a.is_some_and(|e| {
                    e["rooms"].as_array().is_some_and(|r| {
                        r.iter()
                            .any(|r| r == "project:7" || r["room"] == "project:7")
                    })
                });
                let fields_ok = list
                    .iter()
                    .all(|e| e["transport"] == "websocket" && e["connected_at"].is_u64());
                if &got == want && rooms_ok && fields_ok {
                    Ok(())
                } else {
                    Err(format!("{list:?}"))
                }
            },
        )
        .await;
    }
    // A closed connection leaves every node's list.
    let (ws, gone) = alice.remove(1);
    ws.close().await;
    for node in c.nodes() {
        let gone = &gone["connection_id"];
        eventually("closed connection unlisted", FRAME_WAIT, || async move {
            let list = connections(node, "alice").await?;
            if list.len() == 2 && list.iter().all(|e| &e["connection_id"] != gone) {
                Ok(())
            } else {
                Err(format!("{list:?}"))
            }
        })
        .await;
    }
}

/// The disconnect API called on one node closes the user's connections on
/// every node with 4013, and no one else's.
pub async fn scenario_disconnect_api(url: &str) {
    let c = TestCluster::start(3, url, "").await;
    let (mut a1, _) = c.node(0).connect_user("alice").await;
    let (mut a2, _) = c.node(1).connect_user("alice").await;
    let (mut b1, _) = c.node(0).connect_user("bob").await;
    let (mut b2, _) = c.node(2).connect_user("bob").await;
    let path = "/api/v1/users/alice/disconnect";
    let (s, body) = c
        .node(2)
        .api("POST", path, Some(ADMIN_KEY), Some(json!({})))
        .await;
    assert_eq!(s, 200, "{body}");
    for ws in [&mut a1, &mut a2] {
        let close = ws.expect_close(FRAME_WAIT).await;
        assert_eq!(close.code, 4013, "{close:?}");
        let d = close
            .disconnect
            .unwrap_or_else(|| panic!("disconnect frame first"));
        assert_eq!(d["code"], 4013, "{d}");
        assert_eq!(d["reconnect"], false, "{d}");
    }
    b1.ping_ok().await;
    b2.ping_ok().await;
    let node = c.node(1);
    eventually("alice unlisted", FRAME_WAIT, || async move {
        let list = connections(node, "alice").await?;
        list.is_empty().then_some(()).ok_or(format!("{list:?}"))
    })
    .await;
}

/// `max_connections_per_user` under `reject` counts across nodes; a freed
/// slot is usable from any node.
pub async fn scenario_per_user_reject(url: &str) {
    let limits = "[limits]\nmax_connections_per_user = 2\nper_user_policy = \"reject\"\n";
    let c = TestCluster::start(3, url, limits).await;
    let (a1, _) = c.node(0).connect_user("alice").await;
    let (mut a2, _) = c.node(1).connect_user("alice").await;
    upgrade_refused(c.node(2), "alice", 429).await;
    upgrade_refused(c.node(0), "alice", 429).await;
    let (mut bob, _) = c.node(2).connect_user("bob").await;
    bob.ping_ok().await;
    a2.ping_ok().await;
    // A freed slot is usable from any node.
    a1.close().await;
    let node = c.node(2);
    let mut a3 = eventually("slot freed", FRAME_WAIT, || async move {
        let token = node.user_token("alice");
        match WsClient::connect(&node.ws_url(), TokenIn::Header(token)).await {
            Ok(ws) => Ok(ws),
            Err(e) if upgrade_status(&e) == Some(429) => Err("429".to_owned()),
            Err(e) => panic!("unexpected: {}", describe_ws_error(&e)),
        }
    })
    .await;
    a3.expect_type("authenticated", FRAME_WAIT).await;
    upgrade_refused(c.node(1), "alice", 429).await;
    a2.ping_ok().await;
    a3.ping_ok().await;
}

/// `exclusive`: a new session on any node closes the older one on another
/// node with 4010 (the kill switch), leaving only the newest listed.
pub async fn scenario_exclusive_session(url: &str) {
    let c = TestCluster::start(3, url, "[limits]\nper_user_policy = \"exclusive\"\n").await;
    let (mut c1, _) = c.node(0).connect_user("alice").await;
    let (mut bob, _) = c.node(0).connect_user("bob").await;
    let (mut c2, _) = c.node(1).connect_user("alice").await;
    let close = c1.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 4010, "{close:?}");
    let d = close.disconnect.expect("disconnect before 4010");
    assert_eq!(d["code"], 4010, "{d}");
    c2.ping_ok().await;
    let (mut c3, a3) = c.node(2).connect_user("alice").await;
    let close = c2.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 4010, "{close:?}");
    assert!(close.disconnect.is_some(), "disconnect before 4010");
    c3.ping_ok().await;
    bob.ping_ok().await;
    let (node, id) = (c.node(0), &a3["connection_id"]);
    eventually("only the newest listed", FRAME_WAIT, || async move {
        let list = connections(node, "alice").await?;
        match list.as_slice() {
            [only] if &only["connection_id"] == id && only["node_id"] == "n3" => Ok(()),
            _ => Err(format!("{list:?}")),
        }
    })
    .await;
}
