//! Webhooks on Redis: the outbox (lease, cursor, order) and the cluster-wide
//! transitions the registry reports, on one redis-server with registries of
//! several nodes.

mod cluster_common;

use cluster_common::HEARTBEAT;
use herald_broker_redis::keys::Keys;
use herald_broker_redis::{RedisCluster, RedisHooks};
use herald_core::{
    Cluster, ClusterAdmission, ConnectionRecord, HookEvent, HookKind, HookSet, Outbox, OutboxEntry,
    PerUserPolicy,
};
use herald_testkit::conformance::cluster::{now_ms, prefix, record, room, FakeNode};
use herald_testkit::RedisServer;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One node's registry with its outbox.
struct Node {
    cluster: Arc<RedisCluster>,
    hooks: Arc<RedisHooks>,
    fake: Arc<FakeNode>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    async fn start(url: &str, prefix: &str, id: &str, set: HookSet) -> Node {
        Self::start_with(
            url,
            prefix,
            id,
            set,
            herald_broker_redis::hooks::MAX_LEN,
            true,
        )
        .await
    }

    /// A node whose outbox holds at most `max_len` events; with `spawn`
    /// false its tasks (heartbeat, lease) do not run.
    async fn start_with(
        url: &str,
        prefix: &str,
        id: &str,
        set: HookSet,
        max_len: u64,
        spawn: bool,
    ) -> Node {
        let (settings, clients) = cluster_common::connect(url, prefix, id).await;
        let hooks = RedisHooks::bounded(clients.clone(), &settings, set, max_len);
        let cluster = RedisCluster::with_hooks(clients, &settings, Some(hooks.clone()));
        let node = Node {
            cluster,
            hooks,
            fake: FakeNode::new(id),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        if spawn {
            node.cluster
                .spawn(node.fake.clone(), node.cancel.clone(), &node.tasks);
            node.hooks.spawn(node.cancel.clone(), &node.tasks);
        }
        node
    }

    /// Stops its tasks as a crash would (no `leave`; the lease is given
    /// up, as on shutdown).
    async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Admits `conn` of `user` and holds it.
    async fn connect(&self, conn: &str, user: &str) -> ConnectionRecord {
        let rec = record(&self.fake.id, conn, user, now_ms());
        self.fake.hold(&rec, &[]);
        let admitted = self
            .cluster
            .admit(&rec, PerUserPolicy::EvictOldest, 10)
            .await
            .expect("admit");
        assert_eq!(admitted, ClusterAdmission::Admitted(Vec::new()));
        rec
    }

    /// Joins `rec` to `name` (no presence), as the node does.
    async fn join(&self, rec: &mut ConnectionRecord, name: &str) {
        rec.rooms.push(name.into());
        self.cluster
            .joined(&room(name), rec, false)
            .await
            .expect("join");
        let rooms: Vec<(&str, bool)> = rec.rooms.iter().map(|r| (r.as_str(), false)).collect();
        self.fake.hold(rec, &rooms);
    }

    async fn leave(&self, rec: &mut ConnectionRecord, name: &str) {
        rec.rooms.retain(|r| r != name);
        self.cluster
            .left(&room(name), rec, false)
            .await
            .expect("leave");
    }

    /// The outbox's next batch: at most `max` events, waiting up to `wait`.
    async fn next(&self, max: usize, wait: Duration) -> Vec<OutboxEntry> {
        self.hooks.next_batch(max, wait).await.expect("next_batch")
    }

    async fn remove(&self, rec: &ConnectionRecord) {
        self.fake
            .conns
            .lock()
            .retain(|(r, _)| r.connection_id != rec.connection_id);
        self.cluster.remove(rec).await.expect("remove");
    }
}

/// Reads and acks the outbox through whichever of `nodes` holds the lease
/// until `done` holds for everything read so far (or 10 s pass).
async fn drain(nodes: &[&Node], mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        for n in nodes {
            let batch = n.next(100, Duration::from_millis(20)).await;
            for e in &batch {
                seen.push(serde_json::from_slice::<Value>(&e.body).expect("event JSON"));
            }
            n.hooks.ack(&batch).await.expect("ack");
        }
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "outbox did not deliver what was expected; got {seen:#?}"
        );
    }
}

/// What a user's first connection joining a room, then leaving it and
/// going, reports.
const ONE_USER_IN_ONE_ROOM: [&str; 4] = [
    "user.online",
    "room.occupied",
    "room.vacated",
    "user.offline",
];

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn transitions_fire_once_for_the_whole_cluster() {
    let redis = RedisServer::start();
    transitions_once(&redis.url()).await;
}

/// Every webhook script stays in the `{hooks}` slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_and_the_outbox_work_on_a_redis_cluster() {
    let redis = herald_testkit::RedisCluster::start();
    transitions_once(&redis.url()).await;
}

async fn transitions_once(url: &str) {
    let p = prefix("hooks-transitions");
    let a = Node::start(url, &p, "a", HookSet::all()).await;
    let b = Node::start(url, &p, "b", HookSet::all()).await;

    let mut c1 = a.connect("c1", "u").await;
    let mut c2 = b.connect("c2", "u").await;
    a.join(&mut c1, "chat:1").await;
    b.join(&mut c2, "chat:1").await;
    a.leave(&mut c1, "chat:1").await;
    a.remove(&c1).await;
    b.remove(&c2).await;

    let events = drain(&[&a, &b], |seen| !of_type(seen, "user.offline").is_empty()).await;
    assert_eq!(types(&events), ONE_USER_IN_ONE_ROOM, "{events:#?}");
    assert_eq!(events[0]["tenant"], "acme");
    assert_eq!(events[0]["user_id"], "u");
    assert_eq!(events[1]["room"], "chat:1");
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_dead_nodes_connections_are_reported_once_by_the_reaper() {
    let redis = RedisServer::start();
    let p = prefix("hooks-reaper");
    let a = Node::start(&redis.url(), &p, "a", HookSet::all()).await;
    let b = Node::start(&redis.url(), &p, "b", HookSet::all()).await;
    let c = Node::start(&redis.url(), &p, "c", HookSet::all()).await;

    let mut c1 = a.connect("c1", "alone").await;
    let mut c2 = a.connect("c2", "both").await;
    let mut c3 = b.connect("c3", "both").await;
    a.join(&mut c1, "chat:r").await;
    a.join(&mut c2, "chat:r").await;
    b.join(&mut c3, "chat:r").await;
    a.join(&mut c1, "chat:solo").await;
    let before = drain(&[&a, &b, &c], |seen| seen.len() >= 4).await;
    assert_eq!(
        types(&before),
        [
            "user.online",
            "user.online",
            "room.occupied",
            "room.occupied"
        ]
    );

    // Two survivors race to reap it; each record is reported once.
    a.stop().await;
    let reaped = drain(&[&b, &c], |seen| {
        of_type(seen, "connection.closed").len() >= 2 && !of_type(seen, "user.offline").is_empty()
    })
    .await;
    // Let a second reaper round (if any) show itself.
    tokio::time::sleep(HEARTBEAT * 3).await;
    let extra = drain(&[&b, &c], |_| true).await;
    assert!(extra.is_empty(), "reported twice: {extra:#?}");

    let closed = of_type(&reaped, "connection.closed");
    let mut closed_ids: Vec<&str> = closed.iter().filter_map(|e| e["id"].as_str()).collect();
    closed_ids.sort();
    assert_eq!(closed_ids, ["c1.closed", "c2.closed"], "{reaped:#?}");
    assert!(closed
        .iter()
        .all(|e| e["code"] == 1006 && e["reason"] == "node_lost" && e["node_id"] == "a"));
    let left = of_type(&reaped, "member.left");
    assert_eq!(left.len(), 3, "c1 in two rooms, c2 in one: {reaped:#?}");
    let offline = of_type(&reaped, "user.offline");
    assert_eq!(offline.len(), 1, "{reaped:#?}");
    assert_eq!(offline[0]["user_id"], "alone");
    let vacated = of_type(&reaped, "room.vacated");
    assert_eq!(vacated.len(), 1, "chat:r keeps c3: {reaped:#?}");
    assert_eq!(vacated[0]["room"], "chat:solo");
    // Per room: the member leaves before the room is vacated.
    let pos = |pred: &dyn Fn(&Value) -> bool| reaped.iter().position(pred).expect("present");
    assert!(
        pos(&|e| e["type"] == "member.left" && e["room"] == "chat:solo")
            < pos(&|e| e["type"] == "room.vacated")
    );

    b.remove(&c3).await;
    let last = drain(&[&b, &c], |seen| seen.len() >= 2).await;
    assert_eq!(types(&last), ["room.vacated", "user.offline"], "{last:#?}");
    b.stop().await;
    c.stop().await;
}

/// Only `message.sent`: the kind the outbox tests append by hand.
fn messages_only() -> HookSet {
    [HookKind::MessageSent].into_iter().collect()
}

fn event(n: u64) -> HookEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("n".into(), n.into());
    HookEvent::new(HookKind::MessageSent, fields)
}

/// The node whose token the lease names.
async fn holder<'a>(redis: &RedisServer, p: &str, nodes: &[&'a Node]) -> &'a Node {
    let key = Keys::new(p).hooks_lease();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lease = redis.cli(&["GET", &key]);
        if let Some(n) = nodes
            .iter()
            .find(|n| lease.trim().starts_with(&format!("{}/", n.fake.id)))
        {
            return n;
        }
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn n_of(e: &OutboxEntry) -> u64 {
    serde_json::from_slice::<Value>(&e.body).expect("json")["n"]
        .as_u64()
        .expect("n")
}

#[tokio::test]
async fn only_the_lease_holder_reads_and_its_successor_resumes_after_the_cursor() {
    let redis = RedisServer::start();
    let p = prefix("hooks-lease");
    let set = messages_only();
    let a = Node::start(&redis.url(), &p, "a", set).await;
    let b = Node::start(&redis.url(), &p, "b", set).await;
    let events: Vec<HookEvent> = (0..10).map(event).collect();
    a.hooks.append(&events[..6]).await.expect("append");
    b.hooks.append(&events[6..]).await.expect("append");

    let first = holder(&redis, &p, &[&a, &b]).await;
    let second = if std::ptr::eq(first, &a) { &b } else { &a };
    let none = second.next(100, Duration::from_millis(200)).await;
    assert!(none.is_empty(), "a node without the lease read {none:?}");
    let batch = first.next(4, Duration::from_secs(5)).await;
    assert_eq!(batch.iter().map(n_of).collect::<Vec<_>>(), [0, 1, 2, 3]);
    first.hooks.ack(&batch).await.expect("ack");
    // Acknowledging an older batch again moves nothing back.
    first.hooks.ack(&batch[..1]).await.expect("ack");
    // Read but not acked: the successor sends these again.
    let unacked = first.next(2, Duration::from_secs(5)).await;
    assert_eq!(unacked.iter().map(n_of).collect::<Vec<_>>(), [4, 5]);

    first.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rest = loop {
        let rest = second.next(100, Duration::from_millis(200)).await;
        if !rest.is_empty() {
            break rest;
        }
        assert!(Instant::now() < deadline, "the lease was not taken over");
    };
    assert_eq!(
        rest.iter().map(n_of).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8, 9]
    );
    second.hooks.ack(&rest).await.expect("ack");
    // Everything acknowledged is trimmed.
    let stream = Keys::new(&p).hooks_stream();
    assert_eq!(redis.cli(&["XLEN", &stream]).trim(), "0");
    second.stop().await;
}

#[tokio::test]
async fn a_deposed_holders_ack_moves_nothing() {
    let redis = RedisServer::start();
    let p = prefix("hooks-deposed");
    let set = messages_only();
    let a = Node::start(&redis.url(), &p, "a", set).await;
    a.hooks.append(&[event(1), event(2)]).await.expect("append");
    holder(&redis, &p, &[&a]).await;
    let batch = a.next(10, Duration::from_secs(5)).await;
    assert_eq!(batch.len(), 2);
    // Another process took the lease meanwhile (this one was paused past
    // its TTL).
    let keys = Keys::new(&p);
    redis.cli(&["SET", &keys.hooks_lease(), "b/other", "PX", "60000"]);
    a.hooks.ack(&batch).await.expect("ack");
    assert_eq!(redis.cli(&["EXISTS", &keys.hooks_cursor()]).trim(), "0");
    assert_eq!(redis.cli(&["XLEN", &keys.hooks_stream()]).trim(), "2");
    let none = a.next(10, Duration::from_millis(200)).await;
    assert!(none.is_empty(), "a deposed holder read {none:?}");
    a.stop().await;
}

#[tokio::test]
async fn user_kinds_alone_keep_no_room_set() {
    let redis = RedisServer::start();
    let p = prefix("hooks-users-only");
    let set: HookSet = [HookKind::UserOnline, HookKind::UserOffline]
        .into_iter()
        .collect();
    let a = Node::start(&redis.url(), &p, "a", set).await;
    let mut c1 = a.connect("c1", "u").await;
    a.join(&mut c1, "chat:1").await;
    let pattern = format!("{}:room:*", Keys::new(&p).hooks_stream());
    assert_eq!(redis.cli(&["KEYS", &pattern]).trim(), "");
    a.remove(&c1).await;
    let events = drain(&[&a], |seen| seen.len() >= 2).await;
    assert_eq!(types(&events), ["user.online", "user.offline"]);
    a.stop().await;
}

#[tokio::test]
async fn a_full_outbox_drops_its_oldest_and_the_holder_takes_the_count() {
    let redis = RedisServer::start();
    let p = prefix("hooks-full");
    let set = messages_only();
    let writer = Node::start_with(&redis.url(), &p, "w", set, 5, false).await;
    let events: Vec<HookEvent> = (0..8).map(event).collect();
    writer.hooks.append(&events).await.expect("append");
    let keys = Keys::new(&p);
    assert_eq!(redis.cli(&["XLEN", &keys.hooks_stream()]).trim(), "5");
    assert_eq!(redis.cli(&["GET", &keys.hooks_trimmed()]).trim(), "3");

    let reader = Node::start_with(&redis.url(), &p, "r", set, 5, true).await;
    let batch = reader.next(10, Duration::from_secs(5)).await;
    assert_eq!(batch.iter().map(n_of).collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
    // The holder took the count (and reported it as dropped).
    assert_eq!(redis.cli(&["EXISTS", &keys.hooks_trimmed()]).trim(), "0");
    reader.stop().await;
}

#[tokio::test]
async fn with_webhooks_off_the_registry_writes_no_webhook_key() {
    let redis = RedisServer::start();
    let p = prefix("hooks-off");
    let a = Node::start(&redis.url(), &p, "a", HookSet::empty()).await;
    let mut c1 = a.connect("c1", "u").await;
    a.join(&mut c1, "chat:1").await;
    a.leave(&mut c1, "chat:1").await;
    a.remove(&c1).await;
    let pattern = format!("{}*", Keys::new(&p).hooks_stream());
    assert_eq!(redis.cli(&["KEYS", &pattern]).trim(), "");
    a.stop().await;
}

/// Redis restarted empty: the heartbeat writes the connections back into
/// the sets (reporting the transitions that makes), so the removal that
/// follows still reports `user.offline` and `room.vacated`.
#[tokio::test]
async fn after_a_store_loss_the_sets_come_back_and_offline_still_fires() {
    let mut redis = RedisServer::start();
    let p = prefix("hooks-store-loss");
    let a = Node::start(&redis.url(), &p, "a", HookSet::all()).await;
    let mut c1 = a.connect("c1", "u").await;
    a.join(&mut c1, "chat:1").await;
    drain(&[&a], |seen| seen.len() >= 2).await;

    redis.restart();
    let user_set = Keys::new(&p).hooks_user(&herald_testkit::conformance::cluster::acme(), "u");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["SISMEMBER", &user_set, "c1"]).trim() != "1" {
        assert!(
            Instant::now() < deadline,
            "the connection was not written back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.remove(&c1).await;
    let events = drain(&[&a], |seen| {
        !of_type(seen, "user.offline").is_empty() && !of_type(seen, "room.vacated").is_empty()
    })
    .await;
    assert_eq!(types(&events), ONE_USER_IN_ONE_ROOM, "{events:#?}");
    a.stop().await;
}

/// Volume: 100,000 events appended by two nodes' writers (100 per call,
/// as the node's writer batches) come out of the outbox once each, in
/// each writer's order, through 1,000-event batches. Prints the rates;
/// run with `cargo test -p herald-broker-redis --test hooks -- --ignored
/// --nocapture outbox_volume` (Redis does the work: a debug build measures
/// the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run on demand"]
async fn outbox_volume() {
    const EVENTS: u64 = 100_000;
    let redis = RedisServer::start();
    let p = prefix("hooks-volume");
    let set = messages_only();
    let a = Node::start(&redis.url(), &p, "a", set).await;
    let b = Node::start(&redis.url(), &p, "b", set).await;
    let started = Instant::now();
    let write = |n: &'static str, node: &Node| {
        let hooks = node.hooks.clone();
        async move {
            for chunk in (0..EVENTS / 2).collect::<Vec<_>>().chunks(100) {
                let events: Vec<HookEvent> = chunk
                    .iter()
                    .map(|i| {
                        let mut e = event(*i);
                        e.fields.insert("writer".into(), n.into());
                        e
                    })
                    .collect();
                hooks.append(&events).await.expect("append");
            }
        }
    };
    tokio::join!(write("a", &a), write("b", &b));
    let appended = started.elapsed();
    let holder = holder(&redis, &p, &[&a, &b]).await;
    let started = Instant::now();
    let mut next = std::collections::HashMap::from([("a", 0u64), ("b", 0u64)]);
    let mut read = 0;
    while read < EVENTS {
        let batch = holder.next(1000, Duration::from_secs(2)).await;
        assert!(!batch.is_empty(), "outbox ran dry after {read}");
        for e in &batch {
            let v: Value = serde_json::from_slice(&e.body).expect("json");
            let writer = if v["writer"] == "a" { "a" } else { "b" };
            let want = next.get_mut(writer).expect("writer");
            assert_eq!(v["n"].as_u64(), Some(*want), "order of writer {writer}");
            *want += 1;
        }
        read += batch.len() as u64;
        holder.hooks.ack(&batch).await.expect("ack");
    }
    let drained = started.elapsed();
    println!(
        "appended {EVENTS} events in {appended:?} ({:.0}/s); read and acked in {drained:?} ({:.0}/s)",
        EVENTS as f64 / appended.as_secs_f64(),
        EVENTS as f64 / drained.as_secs_f64()
    );
    a.stop().await;
    b.stop().await;
}
