//! The scenarios. Each starts its own nodes through the [`Harness`] and
//! stops them; "a" and "b" are two nodes on one backend, or the same node
//! for an engine serving one.

use super::{request, request_with, room, room_of, wait_until, Harness, Needs, TestNode, MINUTE};
use herald_core::{BrokerError, HistoryPage, MemberRecord, PresenceChange};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::task::JoinSet;

async fn stop(nodes: Vec<TestNode>) {
    for node in nodes {
        node.stop().await;
    }
}

fn offsets(page: &HistoryPage) -> Vec<u64> {
    page.publications
        .iter()
        .map(|p| p.position.offset)
        .collect()
}

/// Every node publishes concurrently to three rooms: offsets are shared
/// and gap-free, and each node's sink gets every publication once, in
/// order.
pub async fn shared_offsets_and_ordered_delivery(h: &Harness) {
    let nodes = h.nodes("order", 2).await;
    let rooms = [
        room("chat:1"),
        room_of(Some("acme"), "chat:1"),
        room("project:9"),
    ];
    for node in &nodes {
        for r in &rooms {
            node.broker.subscribe(r).await.expect("subscribe");
        }
    }
    const EACH: u64 = 40;
    let mut tasks = JoinSet::new();
    for node in &nodes {
        for r in &rooms {
            for _ in 0..EACH {
                let broker = node.broker.clone();
                // No history: only live delivery can bring these.
                let req = request(r, 0, MINUTE);
                let room = r.clone();
                tasks.spawn(async move { (room, broker.publish(req).await) });
            }
        }
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (room, outcome) = joined.expect("task");
        outcomes.push((room, outcome.expect("publish")));
    }
    let expected: Vec<u64> = (1..=nodes.len() as u64 * EACH).collect();
    for r in &rooms {
        let mut got: Vec<u64> = outcomes
            .iter()
            .filter(|(room, _)| room == r)
            .map(|(_, o)| o.position.offset)
            .collect();
        got.sort_unstable();
        assert_eq!(got, expected, "offsets of {r} are shared and gap-free");
        let epochs: BTreeSet<&str> = outcomes
            .iter()
            .filter(|(room, _)| room == r)
            .map(|(_, o)| o.position.epoch.as_str())
            .collect();
        assert_eq!(epochs.len(), 1, "one epoch");
        for node in &nodes {
            wait_until("every publication arrives", || {
                node.sink.count(r) >= expected.len()
            })
            .await;
            assert_eq!(node.sink.offsets(r), expected, "in order, once each");
        }
        let ids = |node: &TestNode| -> Vec<String> {
            let pubs = node.sink.publications.lock();
            pubs.iter()
                .filter(|p| &p.room == r)
                .map(|p| p.event_id.clone())
                .collect()
        };
        for node in &nodes[1..] {
            assert_eq!(ids(&nodes[0]), ids(node), "every node saw the same events");
        }
    }
    stop(nodes).await;
}

/// Subscriptions are counted: after one of two unsubscribes the room is
/// still delivered, an extra unsubscribe is harmless, and a new subscribe
/// listens again.
pub async fn subscriptions_are_counted(h: &Harness) {
    let nodes = h.nodes("count", 2).await;
    let (a, b) = (&nodes[0], &nodes[nodes.len() - 1]);
    let r = room("chat:c");
    a.broker.subscribe(&r).await.expect("subscribe");
    a.broker.subscribe(&r).await.expect("subscribe again");
    let publish = || b.broker.publish(request(&r, 10, MINUTE));
    publish().await.expect("publish");
    wait_until("a gets the first", || a.sink.count(&r) == 1).await;
    a.broker
        .unsubscribe(&r)
        .await
        .expect("unsubscribe one of two");
    publish().await.expect("publish");
    wait_until("a still listens", || a.sink.count(&r) == 2).await;
    a.broker
        .unsubscribe(&r)
        .await
        .expect("unsubscribe the last");
    a.broker
        .unsubscribe(&r)
        .await
        .expect("an extra unsubscribe is harmless");
    a.broker.subscribe(&r).await.expect("subscribe anew");
    let last = publish().await.expect("publish");
    wait_until("a listens again", || {
        a.sink.offsets(&r).last() == Some(&last.position.offset)
    })
    .await;
    let got = a.sink.offsets(&r);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(&got[..2], &[1, 2]);
    stop(nodes).await;
}

/// After the last unsubscribe, another node's publications of the room no
/// longer reach this node (on one node every publication is local, and the
/// contract lets the sink get rooms it does not listen to).
pub async fn unsubscribed_rooms_get_nothing(h: &Harness) {
    if !h.supports("unsubscribed_rooms_get_nothing", Needs::MultiNode) {
        return;
    }
    let nodes = h.nodes("unsub", 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let r = room("chat:u");
    let marker = room("chat:marker");
    a.broker.subscribe(&r).await.expect("subscribe");
    a.broker.subscribe(&r).await.expect("subscribe again");
    a.broker.subscribe(&marker).await.expect("subscribe marker");
    b.broker.subscribe(&r).await.expect("subscribe b");
    let publish = |room| b.broker.publish(request(room, 10, MINUTE));
    publish(&r).await.expect("publish");
    wait_until("a gets the first", || a.sink.count(&r) == 1).await;
    a.broker
        .unsubscribe(&r)
        .await
        .expect("unsubscribe one of two");
    publish(&r).await.expect("publish");
    wait_until("a still listens", || a.sink.count(&r) == 2).await;
    a.broker
        .unsubscribe(&r)
        .await
        .expect("unsubscribe the last");
    for _ in 0..3 {
        publish(&r).await.expect("publish");
    }
    wait_until("b gets them", || b.sink.count(&r) == 5).await;
    // The marker goes out after them: once it is in, they would be too.
    publish(&marker).await.expect("publish marker");
    wait_until("a gets the marker", || a.sink.count(&marker) == 1).await;
    assert_eq!(a.sink.offsets(&r), vec![1, 2], "nothing after unsubscribe");
    if h.streams_are_listened() {
        let streams = a.broker.stats().streams;
        assert_eq!(streams, 1, "only the marker room is listened");
    }
    a.broker
        .unsubscribe(&r)
        .await
        .expect("an extra unsubscribe is harmless");
    a.broker.subscribe(&r).await.expect("subscribe anew");
    publish(&r).await.expect("publish");
    wait_until("a listens again", || a.sink.count(&r) == 3).await;
    assert_eq!(a.sink.offsets(&r), vec![1, 2, 6]);
    stop(nodes).await;
}

/// Positions, epochs, trimming by size and age, `complete` and `limit`.
pub async fn history_and_positions(h: &Harness) {
    let nodes = h.nodes("history", 2).await;
    let (a, b) = (&nodes[0], &nodes[nodes.len() - 1]);
    let r = room("h:1");
    let fresh = a.broker.position(&r).await.expect("position");
    assert_eq!(fresh.offset, 0);
    assert!(!fresh.epoch.is_empty());
    let other = b.broker.position(&r).await.expect("position");
    assert_eq!(other, fresh, "every node agrees on a new room's epoch");
    for i in 1..=5u64 {
        let node = if i % 2 == 0 { a } else { b };
        let out = node.broker.publish(request(&r, 3, MINUTE)).await;
        let out = out.expect("publish");
        assert_eq!(
            (out.position.epoch.as_str(), out.position.offset),
            (fresh.epoch.as_str(), i)
        );
        assert!(!out.duplicate);
    }
    let page = b.broker.history(&r, 2, 100).await.expect("history");
    assert_eq!(offsets(&page), vec![3, 4, 5]);
    assert!(page.complete);
    assert_eq!(page.position.offset, 5);
    assert_eq!(page.position.epoch, fresh.epoch);
    let page = a.broker.history(&r, 1, 100).await.expect("history");
    assert_eq!(offsets(&page), vec![3, 4, 5]);
    assert!(!page.complete, "offset 2 was trimmed");
    let page = a.broker.history(&r, 5, 100).await.expect("history");
    assert!(page.complete && page.publications.is_empty());
    let page = a.broker.history(&r, 2, 2).await.expect("history");
    assert_eq!(offsets(&page), vec![3, 4]);
    assert!(!page.complete, "the limit cut the page");
    let page = a.broker.history(&r, 9, 100).await.expect("history");
    assert!(
        !page.complete && page.publications.is_empty(),
        "beyond the head"
    );
    assert_eq!(a.broker.position(&r).await.expect("position").offset, 5);

    let short = Duration::from_millis(300);
    let t = room("h:ttl");
    for _ in 0..3 {
        a.broker
            .publish(request(&t, 10, short))
            .await
            .expect("publish");
    }
    let page = a.broker.history(&t, 0, 10).await.expect("history");
    assert_eq!((offsets(&page), page.complete), (vec![1, 2, 3], true));
    // Waits out the ttl (no event to wait on: expiry is the clock's).
    tokio::time::sleep(Duration::from_millis(450)).await;
    let page = a.broker.history(&t, 0, 10).await.expect("history");
    assert!(page.publications.is_empty() && !page.complete, "expired");
    assert_eq!(page.position.offset, 3, "the position outlives history");
    let epoch = page.position.epoch.clone();
    let out = b
        .broker
        .publish(request(&t, 10, short))
        .await
        .expect("publish");
    assert_eq!((out.position.epoch, out.position.offset), (epoch, 4));
    let page = a.broker.history(&t, 3, 10).await.expect("history");
    assert_eq!((offsets(&page), page.complete), (vec![4], true));
    let page = a.broker.history(&t, 0, 10).await.expect("history");
    assert_eq!((offsets(&page), page.complete), (vec![4], false));

    let none = room("h:none");
    for _ in 0..2 {
        a.broker
            .publish(request(&none, 0, MINUTE))
            .await
            .expect("publish");
    }
    let page = a.broker.history(&none, 0, 10).await.expect("history");
    assert!(
        page.publications.is_empty() && !page.complete,
        "nothing stored"
    );
    let page = a.broker.history(&none, 2, 10).await.expect("history");
    assert!(page.complete);

    let v = room("h:verbatim");
    let data = r#"{"b": [1, 2.50],   "a":"é\u00e9"}"#;
    let out = a.broker.publish(request_with(&v, data, 5, MINUTE)).await;
    out.expect("publish");
    let page = b.broker.history(&v, 0, 10).await.expect("history");
    let p = &page.publications[0];
    assert_eq!(p.data.get(), data, "the payload is kept byte for byte");
    assert_eq!((p.event.as_str(), p.room.clone()), ("e", v.clone()));
    // The accept time travels with the event, for the latency histogram.
    assert!(p.ts > 0 && !p.event_id.is_empty() && p.accepted_at.is_some());
    stop(nodes).await;
}

/// Each room's history is held to `history.max_bytes`, oldest events
/// first; a resume from a trimmed offset is incomplete, and the trims are
/// counted.
pub async fn room_byte_budget_trims_oldest(h: &Harness) {
    let nodes = h.nodes("bytes", 1).await;
    let a = &nodes[0];
    let r = room("b:1");
    let data = format!("\"{}\"", "x".repeat(1000));
    for _ in 0..20 {
        let mut req = request_with(&r, &data, 1000, MINUTE);
        req.history.max_bytes = 10_000;
        a.broker.publish(req).await.expect("publish");
    }
    let page = a.broker.history(&r, 0, 100).await.expect("history");
    let kept = offsets(&page);
    assert!(!page.complete, "the oldest events were trimmed");
    assert!(!kept.is_empty() && kept.len() < 20, "{kept:?}");
    assert_eq!(kept.last(), Some(&20), "the newest are kept");
    assert!(
        kept.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {kept:?}"
    );
    let resumed = a.broker.history(&r, kept[0] - 1, 100).await;
    assert!(
        resumed.expect("history").complete,
        "nothing missing after the oldest kept"
    );
    let trimmed = a.broker.stats().trimmed;
    assert_eq!(trimmed.room_bytes as usize, 20 - kept.len(), "{trimmed:?}");
    stop(nodes).await;
}

/// Reads of rooms without a stream answer offset 0, an empty complete page
/// and the same position, and create nothing.
pub async fn reads_of_unknown_rooms_create_nothing(h: &Harness) {
    let nodes = h.nodes("readonly", 1).await;
    let a = &nodes[0];
    let before = a.broker.stats().streams;
    for i in 0..20 {
        let r = room(&format!("ro:{i}"));
        let position = a.broker.position(&r).await.expect("position");
        assert_eq!(position.offset, 0);
        let page = a.broker.history(&r, 0, 10).await.expect("history");
        assert!(page.complete && page.publications.is_empty());
        assert_eq!(page.position, position);
    }
    assert_eq!(a.broker.stats().streams, before, "no stream was created");
    stop(nodes).await;
}

/// A repeated idempotency key answers the first outcome and delivers
/// nothing; the same key for another room of the tenant is a conflict.
pub async fn idempotency(h: &Harness) {
    let nodes = h.nodes("idem", 2).await;
    let (a, b) = (&nodes[0], &nodes[nodes.len() - 1]);
    let r = room("i:a");
    b.broker.subscribe(&r).await.expect("subscribe");
    let mut req = request(&r, 10, MINUTE);
    req.idempotency_key = Some("key-1".into());
    let first = a.broker.publish(req.clone()).await.expect("publish");
    let again = b.broker.publish(req.clone()).await.expect("publish again");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.position, again.position);
    let next = a
        .broker
        .publish(request(&r, 10, MINUTE))
        .await
        .expect("publish");
    assert_eq!(next.position.offset, 2, "a duplicate takes no offset");
    wait_until("b gets both", || b.sink.count(&r) == 2).await;
    assert_eq!(b.sink.offsets(&r), vec![1, 2]);
    let mut elsewhere = req.clone();
    elsewhere.room = room("i:b");
    match a.broker.publish(elsewhere).await {
        Err(BrokerError::IdempotencyConflict { room }) => assert_eq!(room, "i:a"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    req.room = room_of(Some("other"), "i:a");
    let other = a.broker.publish(req).await.expect("publish");
    assert!(!other.duplicate, "keys are per tenant");
    stop(nodes).await;
}

fn change(room: &herald_core::RoomKey, node_id: &str) -> PresenceChange {
    PresenceChange {
        room: room.clone(),
        joined: true,
        user_id: "u1".into(),
        connection_id: "c1".into(),
        node_id: node_id.into(),
    }
}

/// Announcing a presence change succeeds and is never echoed to its
/// origin; nobody is listed in a room nobody joined, and an engine serving
/// one node lists the node's own members.
pub async fn presence_announce(h: &Harness) {
    let nodes = h.nodes("announce", 1).await;
    let a = &nodes[0];
    let r = room("pa:1");
    a.broker.subscribe(&r).await.expect("subscribe");
    a.presence
        .announce(&change(&r, &a.id))
        .await
        .expect("announce");
    // Same room, so on an engine that carries presence with the room's
    // publications the announcement would come before this one.
    a.broker
        .publish(request(&r, 0, MINUTE))
        .await
        .expect("publish");
    wait_until("a gets the publication", || a.sink.count(&r) == 1).await;
    assert!(
        a.sink.presence.lock().is_empty(),
        "not echoed to its origin"
    );
    let nobody = a.presence.members(&room("pa:empty")).await;
    assert!(nobody.expect("members").is_empty());
    if !h.multi_node() {
        let member = MemberRecord {
            user_id: "u1".into(),
            connection_id: "c1".into(),
            node_id: a.id.clone(),
        };
        a.sink.local.lock().push((r.clone(), member.clone()));
        let members = a.presence.members(&r).await.expect("members");
        assert_eq!(members, vec![member], "the node's own members");
    }
    stop(nodes).await;
}

/// A presence change announced by one node reaches the others, not itself.
pub async fn presence_reaches_other_nodes(h: &Harness) {
    if !h.supports("presence_reaches_other_nodes", Needs::MultiNode) {
        return;
    }
    let nodes = h.nodes("presence", 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let r = room("p:1");
    a.broker.subscribe(&r).await.expect("subscribe");
    b.broker.subscribe(&r).await.expect("subscribe");
    let change = change(&r, &a.id);
    a.presence.announce(&change).await.expect("announce");
    wait_until("b hears it", || !b.sink.presence.lock().is_empty()).await;
    assert_eq!(*b.sink.presence.lock(), vec![change]);
    // Same channel, so the publication arrives after the announcement.
    a.broker
        .publish(request(&r, 0, MINUTE))
        .await
        .expect("publish");
    wait_until("a gets the publication", || a.sink.count(&r) == 1).await;
    assert!(
        a.sink.presence.lock().is_empty(),
        "not echoed to its origin"
    );
    stop(nodes).await;
}

/// Concurrent subscribes each return only once listening is live, and an
/// unsubscribe racing a subscribe never leaves the room deaf. Without
/// history, a publication sent before listening was live could not be
/// recovered, so every probe arriving proves it.
pub async fn subscribe_races(h: &Harness) {
    let nodes = h.nodes("race", 2).await;
    let (a, b) = (&nodes[0], &nodes[nodes.len() - 1]);
    let r = room("race:1");
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (sub, publisher, r) = (a.broker.clone(), b.broker.clone(), r.clone());
        tasks.spawn(async move {
            sub.subscribe(&r).await.expect("subscribe");
            let probe = publisher.publish(request(&r, 0, MINUTE)).await;
            probe.expect("probe").position.offset
        });
    }
    let mut probes = Vec::new();
    while let Some(offset) = tasks.join_next().await {
        probes.push(offset.expect("task"));
    }
    probes.sort_unstable();
    wait_until("every probe arrives", || a.sink.count(&r) == 8).await;
    assert_eq!(a.sink.offsets(&r), probes);
    for _ in 0..7 {
        a.broker.unsubscribe(&r).await.expect("unsubscribe");
    }
    // Count 1 now; each round ends with count 1 again.
    for expected in 9..=28 {
        let (u, s) = (a.broker.clone(), a.broker.clone());
        let (r1, r2) = (r.clone(), r.clone());
        let left = tokio::spawn(async move { u.unsubscribe(&r1).await });
        let joined = tokio::spawn(async move { s.subscribe(&r2).await });
        left.await.expect("task").expect("unsubscribe");
        joined.await.expect("task").expect("subscribe");
        b.broker
            .publish(request(&r, 0, MINUTE))
            .await
            .expect("probe");
        wait_until("the room still listens", || a.sink.count(&r) == expected).await;
    }
    if h.streams_are_listened() {
        assert_eq!(a.broker.stats().streams, 1);
        a.broker.unsubscribe(&r).await.expect("unsubscribe");
        assert_eq!(a.broker.stats().streams, 0);
    }
    stop(nodes).await;
}
