//! The broker's core behaviour, run against one server and a Redis Cluster.

use super::{prefix, request, request_with, room, room_of, wait_until, Node, MINUTE};
use herald_core::{Broker, BrokerError, PresenceChange};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::task::JoinSet;

/// Two nodes publish concurrently to three rooms: offsets are shared and
/// gap-free, and each node's sink gets every publication once, in order.
pub async fn shared_offsets_and_ordered_delivery(url: &str) {
    let prefix = prefix("order");
    let a = Node::start(url, &prefix, "a").await;
    let b = Node::start(url, &prefix, "b").await;
    let rooms = [
        room("chat:1"),
        room_of(Some("acme"), "chat:1"),
        room("project:9"),
    ];
    for r in &rooms {
        a.broker.subscribe(r).await.expect("subscribe a");
        b.broker.subscribe(r).await.expect("subscribe b");
    }
    const EACH: u64 = 40;
    let mut tasks = JoinSet::new();
    for node in [&a, &b] {
        for r in &rooms {
            for _ in 0..EACH {
                let broker = node.broker.clone();
                // No history: only pub/sub can deliver these.
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
    let expected: Vec<u64> = (1..=2 * EACH).collect();
    for r in &rooms {
        let mut offsets: Vec<u64> = outcomes
            .iter()
            .filter(|(room, _)| room == r)
            .map(|(_, o)| o.position.offset)
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, expected, "offsets of {r} are shared and gap-free");
        let epochs: BTreeSet<&str> = outcomes
            .iter()
            .filter(|(room, _)| room == r)
            .map(|(_, o)| o.position.epoch.as_str())
            .collect();
        assert_eq!(epochs.len(), 1, "one epoch");
        for node in [&a, &b] {
            wait_until("every publication arrives", || {
                node.sink.count(r) >= expected.len()
            })
            .await;
            assert_eq!(node.sink.offsets(r), expected, "in order, once each");
        }
        let ids = |node: &Node| -> Vec<String> {
            let pubs = node.sink.publications.lock();
            pubs.iter()
                .filter(|p| &p.room == r)
                .map(|p| p.event_id.clone())
                .collect()
        };
        assert_eq!(ids(&a), ids(&b), "both nodes saw the same events");
    }
    a.stop().await;
    b.stop().await;
}

/// After the last unsubscribe a room is no longer delivered; subscriptions
/// are counted.
pub async fn unsubscribed_rooms_get_nothing(url: &str) {
    let prefix = prefix("unsub");
    let a = Node::start(url, &prefix, "a").await;
    let b = Node::start(url, &prefix, "b").await;
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
    publish(&marker).await.expect("publish marker");
    wait_until("a gets the marker", || a.sink.count(&marker) == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.sink.offsets(&r), vec![1, 2], "nothing after unsubscribe");
    assert_eq!(
        a.broker.stats().streams,
        1,
        "only the marker room is listened"
    );
    a.broker
        .unsubscribe(&r)
        .await
        .expect("an extra unsubscribe is harmless");
    a.broker.subscribe(&r).await.expect("subscribe anew");
    publish(&r).await.expect("publish");
    wait_until("a listens again", || a.sink.count(&r) == 3).await;
    assert_eq!(a.sink.offsets(&r), vec![1, 2, 6]);
    a.stop().await;
    b.stop().await;
}

/// Positions, epochs, trimming, expiry, `complete` and `limit`, as the
/// memory engine answers them.
pub async fn history_and_positions(url: &str) {
    let prefix = prefix("history");
    let a = Node::start(url, &prefix, "a").await;
    let b = Node::start(url, &prefix, "b").await;
    let r = room("h:1");
    let fresh = a.broker.position(&r).await.expect("position");
    assert_eq!(fresh.offset, 0);
    assert!(!fresh.epoch.is_empty());
    let other = b.broker.position(&r).await.expect("position");
    assert_eq!(other, fresh, "every node agrees on a new room's epoch");
    for i in 1..=5u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        let out = node.broker.publish(request(&r, 3, MINUTE)).await;
        let out = out.expect("publish");
        assert_eq!(
            (out.position.epoch.as_str(), out.position.offset),
            (fresh.epoch.as_str(), i)
        );
        assert!(!out.duplicate);
    }
    let offsets = |page: &herald_core::HistoryPage| -> Vec<u64> {
        page.publications
            .iter()
            .map(|p| p.position.offset)
            .collect()
    };
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
    assert!(
        a.broker
            .history(&none, 2, 10)
            .await
            .expect("history")
            .complete
    );

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
    a.stop().await;
    b.stop().await;
}

/// A repeated idempotency key answers the first outcome and delivers
/// nothing; the same key for another room of the tenant is a conflict.
pub async fn idempotency(url: &str) {
    let prefix = prefix("idem");
    let a = Node::start(url, &prefix, "a").await;
    let b = Node::start(url, &prefix, "b").await;
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
    a.stop().await;
    b.stop().await;
}

/// A presence change announced by one node reaches the others, not itself.
pub async fn presence_reaches_other_nodes(url: &str) {
    let prefix = prefix("presence");
    let a = Node::start(url, &prefix, "node-a").await;
    let b = Node::start(url, &prefix, "node-b").await;
    let r = room("p:1");
    a.broker.subscribe(&r).await.expect("subscribe");
    b.broker.subscribe(&r).await.expect("subscribe");
    let change = PresenceChange {
        room: r.clone(),
        joined: true,
        user_id: "u1".into(),
        connection_id: "c1".into(),
        node_id: "node-a".into(),
    };
    a.broker.announce(&change).await.expect("announce");
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
    a.stop().await;
    b.stop().await;
}

/// Concurrent subscribes each return only once the channel is live, and an
/// unsubscribe racing a subscribe never leaves the room deaf. Without
/// history, a publication sent before the subscription was live could not
/// be recovered, so every probe arriving proves it.
pub async fn subscribe_races(url: &str) {
    let prefix = prefix("race");
    let a = Node::start(url, &prefix, "a").await;
    let b = Node::start(url, &prefix, "b").await;
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
    assert_eq!(a.broker.stats().streams, 1);
    a.broker.unsubscribe(&r).await.expect("unsubscribe");
    assert_eq!(a.broker.stats().streams, 0);
    a.stop().await;
    b.stop().await;
}
