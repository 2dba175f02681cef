//! The webhook outbox and the registry's transitions on one nats-server:
//! one lease holder reads the outbox in order and never again what it
//! acked; `user.*` and `room.*` fire once per cluster-wide transition; a
//! dead node's connections are closed, left and taken offline by the
//! reaper, once.

mod cluster_common;

use cluster_common::{acme, clients, eventually, now_ms, prefix, NatsBackend, TestNode, HEARTBEAT};
use herald_broker_nats::{NatsCluster, NatsOutbox, NatsSettings};
use herald_core::{Cluster, HookEvent, HookSet, Outbox, PerUserPolicy};
use herald_testkit::conformance::cluster::{ClusterBackend, FakeNode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn settings(h: &NatsBackend, p: &str, id: &str) -> NatsSettings {
    cluster_common::settings(&h.server.url(), p, id)
}

/// An outbox whose lease task runs until `cancel`.
async fn outbox(
    h: &NatsBackend,
    p: &str,
    id: &str,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Arc<NatsOutbox> {
    let s = settings(h, p, id);
    let outbox = NatsOutbox::new(clients(&s).await, &s, Duration::from_secs(3600));
    outbox.spawn(cancel.clone(), tasks);
    outbox
}

/// A registry node emitting every kind into an outbox that never takes
/// the lease (the test's reader does).
async fn hooked(h: &NatsBackend, p: &str, id: &str) -> TestNode {
    node_with(h, p, id, HookSet::all()).await
}

/// A registry node emitting `hooks` into an outbox whose lease task does
/// not run.
async fn node_with(h: &NatsBackend, p: &str, id: &str, hooks: HookSet) -> TestNode {
    let s = settings(h, p, id);
    let c = clients(&s).await;
    let outbox = NatsOutbox::new(c.clone(), &s, Duration::from_secs(3600));
    let node = TestNode {
        id: id.into(),
        cluster: NatsCluster::with_hooks(c, &s, hooks, Some(outbox)),
        fake: FakeNode::new(id),
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
    };
    NatsBackend::spawn(
        &node.cluster,
        node.fake.clone(),
        node.cancel.clone(),
        &node.tasks,
    );
    node
}

/// Takes batches from `outbox` (which must hold the lease), acks them and
/// keeps every event, until `done` holds for what was read or `within`.
async fn read_until(
    outbox: &NatsOutbox,
    max: usize,
    seen: &mut Vec<Value>,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if done(seen) {
            return true;
        }
        // NATS may be coming back (a test's outage): try again.
        let Ok(batch) = outbox.next_batch(max, Duration::from_millis(200)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for e in &batch {
            seen.push(serde_json::from_slice(&e.body).expect("event JSON"));
        }
        outbox.ack(&batch).await.expect("ack");
    }
    done(seen)
}

/// [`read_until`] in batches of 100, failing the test when `done` does
/// not hold within `within`.
async fn expect_events(
    reader: &NatsOutbox,
    seen: &mut Vec<Value>,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) {
    let ok = read_until(reader, 100, seen, within, done).await;
    assert!(ok, "{seen:?}");
}

fn count(seen: &[Value], kind: &str, key: &str, value: &str) -> usize {
    seen.iter()
        .filter(|e| e["type"] == kind && e[key] == value)
        .count()
}

#[tokio::test]
async fn one_holder_reads_the_outbox_in_order_and_never_again_what_it_acked() {
    let h = NatsBackend::start();
    let p = prefix("outbox");
    let (cancel_a, tasks_a) = (CancellationToken::new(), TaskTracker::new());
    let (cancel_b, tasks_b) = (CancellationToken::new(), TaskTracker::new());
    let a = outbox(&h, &p, "a", &cancel_a, &tasks_a).await;
    let b = outbox(&h, &p, "b", &cancel_b, &tasks_b).await;
    let events: Vec<HookEvent> = (0..40)
        .map(|i| HookEvent::user_online(&acme(), &format!("u{i}")))
        .collect();
    for chunk in events.chunks(8) {
        b.append(chunk).await.expect("append");
    }
    // An id appended again is stored once.
    b.append(&events[..3]).await.expect("append again");

    // Exactly one of them gets batches.
    let mut seen = Vec::new();
    let mut rounds = 0;
    let (holder, other, cancel_holder, tasks_holder) = loop {
        rounds += 1;
        assert!(rounds < 50, "nobody took the lease");
        let (x, y) = tokio::join!(
            a.next_batch(10, Duration::from_millis(200)),
            b.next_batch(10, Duration::from_millis(200))
        );
        let (x, y) = (x.expect("a"), y.expect("b"));
        assert!(x.is_empty() || y.is_empty(), "two holders at once");
        let (first, found) = if !x.is_empty() {
            (x, (a.clone(), b.clone(), cancel_a.clone(), tasks_a.clone()))
        } else if !y.is_empty() {
            (y, (b.clone(), a.clone(), cancel_b.clone(), tasks_b.clone()))
        } else {
            continue;
        };
        for e in &first {
            seen.push(serde_json::from_slice::<Value>(&e.body).expect("event JSON"));
        }
        found.0.ack(&first).await.expect("ack");
        break found;
    };
    // The holder delivers half, acks it, and goes away.
    assert!(
        read_until(&holder, 5, &mut seen, Duration::from_secs(10), |s| s.len()
            >= 20)
        .await
    );
    cancel_holder.cancel();
    tasks_holder.close();
    tasks_holder.wait().await;
    let acked = seen.len();

    // The other takes over from the cursor: the rest, in order, nothing twice.
    assert!(
        read_until(&other, 5, &mut seen, Duration::from_secs(15), |s| s.len()
            >= 40)
        .await
    );
    let ids: Vec<&str> = seen
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    let want: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids, want,
        "every event once, in order (holder acked {acked})"
    );
    assert!(seen.len() > acked, "the second holder read nothing");
    // The backlog figures follow the lease rounds.
    assert!(
        eventually(Duration::from_secs(5), || async {
            other.backlog() == Some(0) && holder.backlog().is_none()
        })
        .await,
        "backlog {:?}, the old holder's {:?}",
        other.backlog(),
        holder.backlog()
    );
    cancel_a.cancel();
    cancel_b.cancel();
}

#[tokio::test]
async fn transitions_fire_once_per_cluster_and_a_dead_nodes_connections_are_reaped_with_their_events(
) {
    let h = NatsBackend::start();
    let p = prefix("transitions");
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let reader = outbox(&h, &p, "reader", &cancel, &tasks).await;
    let a = hooked(&h, &p, "a").await;
    let b = hooked(&h, &p, "b").await;
    let c = hooked(&h, &p, "c").await;
    let mut seen = Vec::new();

    // u1 on two nodes: online once; offline once, after the last.
    let a1 = a.record("a1", "u1", now_ms());
    let b1 = b.record("b1", "u1", now_ms());
    a.connect(&a1, PerUserPolicy::EvictOldest, 5)
        .await
        .expect("a1");
    b.connect(&b1, PerUserPolicy::EvictOldest, 5)
        .await
        .expect("b1");
    a.cluster.remove(&a1).await.expect("remove a1");
    b.cluster.remove(&b1).await.expect("remove b1");
    expect_events(&reader, &mut seen, Duration::from_secs(10), |s| {
        count(s, "user.offline", "user_id", "u1") >= 1
    })
    .await;

    // lobby:1 has members on a and c; solo:1 only on c. c dies.
    let a2 = a.admit_in_room("a2", "u2", "lobby:1").await;
    let c1 = c.admit_in_room("c1", "u3", "lobby:1").await;
    let mut c2 = c.record("c2", "u3", now_ms());
    c.connect(&c2, PerUserPolicy::EvictOldest, 5)
        .await
        .expect("c2");
    c2.rooms.push("solo:1".into());
    c.cluster
        .joined(&cluster_common::room("solo:1"), &c2, false)
        .await
        .expect("join solo");
    c.stop().await;
    expect_events(&reader, &mut seen, Duration::from_secs(15), |s| {
        count(s, "user.offline", "user_id", "u3") >= 1
            && count(s, "room.vacated", "room", "solo:1") >= 1
    })
    .await;
    let closed: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "connection.closed")
        .collect();
    assert_eq!(closed.len(), 2, "{closed:?}");
    for e in &closed {
        assert_eq!(e["code"], 1006);
        assert_eq!(e["reason"], "node_lost");
        assert_eq!(e["node_id"], "c");
    }
    assert_eq!(count(&seen, "member.left", "connection_id", "c1"), 1);
    assert_eq!(count(&seen, "member.left", "connection_id", "c2"), 1);

    // The last member of lobby:1 leaves.
    a.cluster.remove(&a2).await.expect("remove a2");
    expect_events(&reader, &mut seen, Duration::from_secs(10), |s| {
        count(s, "room.vacated", "room", "lobby:1") >= 1
    })
    .await;
    // Let any duplicate show up before counting.
    read_until(&reader, 100, &mut seen, HEARTBEAT * 4, |_| false).await;
    for user in ["u1", "u2", "u3"] {
        assert_eq!(
            count(&seen, "user.online", "user_id", user),
            1,
            "{user}: {seen:?}"
        );
        assert_eq!(
            count(&seen, "user.offline", "user_id", user),
            1,
            "{user}: {seen:?}"
        );
    }
    for room in ["lobby:1", "solo:1"] {
        assert_eq!(
            count(&seen, "room.occupied", "room", room),
            1,
            "{room}: {seen:?}"
        );
        assert_eq!(
            count(&seen, "room.vacated", "room", room),
            1,
            "{room}: {seen:?}"
        );
    }
    let mut ids: Vec<&str> = seen.iter().filter_map(|e| e["id"].as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event went out twice");
    // The registry keeps nothing of the rooms.
    drop(c1);
    a.stop().await;
    b.stop().await;
    cancel.cancel();
}

#[tokio::test]
async fn without_webhooks_the_registry_writes_no_events() {
    let h = NatsBackend::start();
    let p = prefix("nohooks");
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let reader = outbox(&h, &p, "reader", &cancel, &tasks).await;
    let node = node_with(&h, &p, "a", HookSet::empty()).await;
    let rec = node.admit_in_room("a1", "u1", "lobby:1").await;
    node.cluster.remove(&rec).await.expect("remove");
    let mut seen = Vec::new();
    let quiet = !read_until(&reader, 100, &mut seen, Duration::from_secs(1), |s| {
        !s.is_empty()
    })
    .await;
    assert!(quiet, "{seen:?}");
    assert!(
        eventually(Duration::from_secs(2), || async {
            node.cluster
                .user_connections(&acme(), "u1")
                .await
                .is_ok_and(|l| l.is_empty())
        })
        .await
    );
    node.stop().await;
    cancel.cancel();
}

#[tokio::test]
async fn an_event_left_in_a_users_key_by_a_node_that_died_is_published_by_the_reaper() {
    let h = NatsBackend::start();
    let p = prefix("pending");
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let reader = outbox(&h, &p, "reader", &cancel, &tasks).await;
    let a = hooked(&h, &p, "a").await;
    // c never beats: once its admission's node key expires it is dead.
    let s = settings(&h, &p, "c");
    let cc = clients(&s).await;
    let c = NatsCluster::with_hooks(
        cc.clone(),
        &s,
        HookSet::all(),
        Some(NatsOutbox::new(cc, &s, Duration::from_secs(3600))),
    );
    let rec = herald_testkit::conformance::cluster::record("c", "c1", "u9", now_ms());
    c.admit(&rec, PerUserPolicy::EvictOldest, 5)
        .await
        .expect("admit");

    // c died right after the write that took u9 offline, before its
    // publish: the key holds the event, the record is still there.
    let store = cluster_common::Store::connect(&h.server.url(), &p).await;
    let kv = store
        .js
        .get_key_value(store.names.bucket("registry"))
        .await
        .expect("registry");
    let key = format!("u.{}", store.names.user_key(&acme(), "u9"));
    let entry = kv.entry(key.as_str()).await.expect("read").expect("u9");
    let mut offline = HookEvent::user_offline(&acme(), "u9");
    offline.id = "pending-offline".into();
    let doc = serde_json::json!({"conns": {}, "pending": [offline]});
    kv.update(
        &key,
        serde_json::to_vec(&doc).expect("json").into(),
        entry.revision,
    )
    .await
    .expect("rewrite");

    let mut seen = Vec::new();
    expect_events(&reader, &mut seen, Duration::from_secs(10), |s| {
        count(s, "user.offline", "user_id", "u9") >= 1
            && count(s, "connection.closed", "connection_id", "c1") >= 1
    })
    .await;
    read_until(&reader, 100, &mut seen, HEARTBEAT * 4, |_| false).await;
    let offline: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "user.offline")
        .collect();
    assert_eq!(offline.len(), 1, "{seen:?}");
    assert_eq!(offline[0]["id"], "pending-offline");
    assert_eq!(count(&seen, "user.online", "user_id", "u9"), 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            store.user(&acme(), "u9").await == Value::Null
        })
        .await,
        "the user's key went once its event was out"
    );
    a.stop().await;
    cancel.cancel();
}

/// A measurement, not run by default (`cargo test -p herald-broker-nats
/// --release --test hooks_cluster -- --ignored --nocapture`): appends
/// 20,000 events in appends of 100, then reads and acks them in batches of
/// 500, and prints both rates; checks every event comes back once, in order.
#[tokio::test]
#[ignore]
async fn outbox_throughput() {
    let h = NatsBackend::start();
    let p = prefix("throughput");
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let reader = outbox(&h, &p, "reader", &cancel, &tasks).await;
    let events: Vec<HookEvent> = (0..20_000)
        .map(|i| HookEvent::user_online(&acme(), &format!("user-{i}")))
        .collect();
    let started = std::time::Instant::now();
    for chunk in events.chunks(100) {
        reader.append(chunk).await.expect("append");
    }
    let appended = started.elapsed();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    assert!(
        read_until(&reader, 500, &mut seen, Duration::from_secs(120), |s| {
            s.len() >= events.len()
        })
        .await
    );
    let read = started.elapsed();
    assert!(seen
        .iter()
        .zip(&events)
        .all(|(s, e)| s["id"] == e.id.as_str()));
    println!(
        "append: {:.0} events/s; read + ack: {:.0} events/s",
        events.len() as f64 / appended.as_secs_f64(),
        events.len() as f64 / read.as_secs_f64()
    );
    cancel.cancel();
}

/// A measurement, not run by default (as `outbox_throughput`): 300
/// admissions and removals of one-connection users, without webhooks and
/// with every kind on (each a `user.online` and a `user.offline`
/// transition); prints the time per admit + remove.
#[tokio::test]
#[ignore]
async fn transition_cost() {
    let h = NatsBackend::start();
    let p = prefix("cost");
    let s = settings(&h, &p, "a");
    let c = clients(&s).await;
    for hooks in [HookSet::empty(), HookSet::all()] {
        let outbox = NatsOutbox::new(c.clone(), &s, Duration::from_secs(3600));
        let cluster = NatsCluster::with_hooks(c.clone(), &s, hooks, Some(outbox));
        let started = std::time::Instant::now();
        for i in 0..300 {
            let rec = herald_testkit::conformance::cluster::record(
                "a",
                &format!("c{i}"),
                &format!("u{i}-{}", hooks.is_empty()),
                now_ms(),
            );
            let admitted = cluster.admit(&rec, PerUserPolicy::EvictOldest, 5).await;
            assert!(admitted.is_ok());
            cluster.remove(&rec).await.expect("remove");
        }
        println!(
            "webhooks {}: {:.2} ms per admit + remove",
            if hooks.is_empty() { "off" } else { "on" },
            started.elapsed().as_secs_f64() * 1000.0 / 300.0
        );
    }
}

#[tokio::test]
async fn with_nats_away_appends_answer_unavailable_and_what_was_stored_is_delivered_after() {
    let mut h = NatsBackend::start();
    let p = prefix("away");
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    let reader = outbox(&h, &p, "reader", &cancel, &tasks).await;
    let stored = HookEvent::user_online(&acme(), "before");
    reader
        .append(std::slice::from_ref(&stored))
        .await
        .expect("append");

    h.server.kill();
    let refused = reader
        .append(&[HookEvent::user_online(&acme(), "during")])
        .await;
    assert!(
        matches!(refused, Err(herald_core::BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    h.server.restart();

    // The stream kept what it had acked; the lease comes back.
    let mut seen = Vec::new();
    expect_events(&reader, &mut seen, Duration::from_secs(15), |s| {
        s.iter().any(|e| e["id"] == stored.id.as_str())
    })
    .await;
    cancel.cancel();
}
