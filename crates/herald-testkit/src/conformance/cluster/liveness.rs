//! Scenarios of liveness: silent nodes are reaped (announcing their
//! members), a store that forgot everything gets it back, leaving and
//! restarting a node clean up after it.

use super::{acme, eventually, now_ms, prefix, room, ClusterBackend, TestNode};
use herald_core::{Cluster, PerUserPolicy, PresenceChange};
use std::time::{Duration, Instant};

/// Scheduling slack on top of a promised delay (no speed is asserted).
const SLACK: Duration = Duration::from_millis(300);

/// A node that stops heartbeating is reaped within two heartbeats: its entries go and its members are announced `member_left`, once cluster-wide.
pub async fn a_silent_node_is_reaped_within_two_heartbeats_with_member_left<B: ClusterBackend>(
    h: &mut B,
) {
    let p = prefix("reap");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;
    let c = TestNode::start(h, &p, "c").await;
    let lobby = room("lobby:1");
    let mut messages = h.watch(&p, &lobby).await;

    a.admit_in_room("a1", "u1", "lobby:1").await;
    b.admit_in_room("b1", "u2", "lobby:1").await;
    assert_eq!(a.presence(&lobby).await.expect("presence").len(), 2);

    // b's tasks stop as in a crash: no `leave`.
    b.stop().await;
    let stopped = Instant::now();
    let reaped = eventually(B::HEARTBEAT * 2 + SLACK, || async {
        h.node_gone(&p, "b").await
    })
    .await;
    assert!(
        reaped,
        "b still registered {:?} after it stopped",
        stopped.elapsed()
    );
    let members = a.presence(&lobby).await.expect("presence");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].connection_id, "a1");
    assert!(c
        .cluster
        .user_connections(&acme(), "u2")
        .await
        .expect("list")
        .is_empty());
    assert!(
        h.user_gone(&p, "u2").await,
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
    let left = tokio::time::timeout(Duration::from_secs(2), messages.recv())
        .await
        .expect("member_left published")
        .expect("message");
    assert_eq!(
        left,
        PresenceChange {
            room: lobby.clone(),
            joined: false,
            user_id: "u2".into(),
            connection_id: "b1".into(),
            node_id: "b".into(),
        }
    );
    let again = tokio::time::timeout(B::HEARTBEAT * 2, messages.recv()).await;
    assert!(again.is_err(), "member_left went out twice");
}

/// A server restarted without its store gets every live node's entries and locks back, and the control commands work again.
pub async fn a_store_restarted_empty_gets_every_entry_back<B: ClusterBackend>(h: &mut B) {
    let p = prefix("restart");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;
    let lobby = room("lobby:1");
    a.admit_in_room("a1", "u1", "lobby:1").await;
    b.admit_in_room("b1", "u2", "lobby:1").await;

    h.forget_everything().await;
    let back = eventually(Duration::from_secs(10), || async {
        let members = a.presence(&lobby).await.map(|m| m.len());
        let u2 = a
            .cluster
            .user_connections(&acme(), "u2")
            .await
            .map(|l| l.len());
        matches!((members, u2), (Ok(2), Ok(1)))
    })
    .await;
    assert!(back, "entries not registered again");
    let back = eventually(B::HEARTBEAT * 3, || async {
        h.lock(&p, "u1").await.as_deref() == Some("a1")
            && h.lock(&p, "u2").await.as_deref() == Some("b1")
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

/// `leave` removes the node and its entries at once and announces its members; its heartbeat does not bring it back.
pub async fn leave_removes_the_node_and_announces_its_members<B: ClusterBackend>(h: &mut B) {
    let p = prefix("leave");
    let a = TestNode::start(h, &p, "a").await;
    let b = TestNode::start(h, &p, "b").await;
    let lobby = room("lobby:1");
    let mut messages = h.watch(&p, &lobby).await;
    b.admit_in_room("b1", "u2", "lobby:1").await;

    b.cluster.leave().await;
    assert!(a.presence(&lobby).await.expect("presence").is_empty());
    assert!(a
        .cluster
        .user_connections(&acme(), "u2")
        .await
        .expect("list")
        .is_empty());
    assert!(h.user_gone(&p, "u2").await);
    assert_eq!(h.lock(&p, "u2").await, None);
    assert!(h.node_gone(&p, "b").await);
    let left = tokio::time::timeout(Duration::from_secs(2), messages.recv())
        .await
        .expect("member_left published")
        .expect("message");
    assert!(matches!(left, PresenceChange { joined: false, .. }));
    // Its heartbeat does not bring it back.
    tokio::time::sleep(B::HEARTBEAT * 2).await;
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

/// A node restarted under the same id drops what its predecessor left and keeps its own.
pub async fn a_node_restarted_under_the_same_id_drops_what_its_predecessor_left<
    B: ClusterBackend,
>(
    h: &mut B,
) {
    let p = prefix("reborn");
    let first = TestNode::start(h, &p, "a").await;
    first.admit_in_room("old", "u1", "lobby:1").await;
    first.stop().await;

    // Back before anyone took it for dead: its nodes entry never lapsed.
    let second = TestNode::start(h, &p, "a").await;
    let fresh = second.record("new", "u3", now_ms());
    second
        .connect(&fresh, PerUserPolicy::Reject, 5)
        .await
        .expect("admit");
    let clean = eventually(B::HEARTBEAT * 2 + SLACK, || async {
        second
            .cluster
            .user_connections(&acme(), "u1")
            .await
            .is_ok_and(|l| l.is_empty())
            && second
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
