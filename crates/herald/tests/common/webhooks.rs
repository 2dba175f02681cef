//! Webhooks on a three-node cluster of `herald serve` processes with the
//! test backend as the receiver: the helpers and scenarios shared by
//! `webhooks_cluster` (Redis) and `webhooks_cluster_nats` (NATS). The
//! scenarios take the engine's server; only finding the dispatch lease's
//! holder differs per engine.

use super::cluster::*;
use super::{Backend, WsClient};
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// The cluster engine's server a scenario runs on.
#[derive(Clone, Copy)]
pub enum EngineServer<'a> {
    /// The Redis engine.
    Redis(&'a RedisServer),
    /// The NATS engine.
    Nats(&'a NatsServer),
}

impl EngineServer<'_> {
    /// The URL the nodes connect to (its scheme picks the engine).
    pub fn url(&self) -> String {
        match self {
            Self::Redis(redis) => redis.url(),
            Self::Nats(nats) => nats.url(),
        }
    }

    /// Which node (index) holds the webhook dispatch lease, read from the
    /// engine's lease key (docs/architecture.md, "Webhooks on Redis" and
    /// "Webhooks on NATS").
    pub async fn lease_holder(&self, c: &TestCluster) -> usize {
        match *self {
            Self::Redis(redis) => redis_lease_holder(redis, c).await,
            Self::Nats(nats) => nats_lease_holder(nats, c).await,
        }
    }
}

async fn redis_lease_holder(redis: &RedisServer, c: &TestCluster) -> usize {
    let key = &format!("{}:{{hooks}}:lease", c.prefix());
    eventually(
        "a node holds the lease",
        Duration::from_secs(10),
        || async move {
            let holder = redis.cli(&["GET", key]);
            (0..c.nodes().len())
                .find(|i| holder.trim().starts_with(&format!("{}/", c.id(*i))))
                .ok_or(holder)
        },
    )
    .await
}

async fn nats_lease_holder(nats: &NatsServer, c: &TestCluster) -> usize {
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let bucket = format!("{}-hooks-lease", c.prefix());
    let (js, bucket) = (&js, &bucket);
    eventually(
        "a node holds the lease",
        Duration::from_secs(10),
        || async move {
            let kv = js.get_key_value(bucket).await.map_err(|e| e.to_string())?;
            let entry = kv.get("holder").await.map_err(|e| e.to_string())?;
            let value: Value = entry
                .and_then(|v| serde_json::from_slice(&v).ok())
                .ok_or("no holder")?;
            (0..c.nodes().len())
                .find(|i| value["node"] == c.id(*i))
                .ok_or(value.to_string())
        },
    )
    .await
}

/// Longest wait for the receiver to have seen what it should.
pub const DELIVERY: Duration = Duration::from_secs(20);

/// The `[webhooks]` config section that posts to `backend`, plus `extra` keys.
pub fn webhooks_config(backend: &Backend, extra: &str) -> String {
    format!(
        r#"
[webhooks]
url = "{}"
secret = "{}"
{extra}
"#,
        backend.url("/webhooks"),
        Backend::SECRET
    )
}

/// The events the receiver accepted, each id once (at least once delivery
/// may repeat a batch), in first-arrival order.
pub async fn unique_events(backend: &Backend) -> Vec<Value> {
    let mut seen = HashSet::new();
    backend
        .webhook_events()
        .await
        .into_iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// How many `events` of type `kind` have `field` equal to `value`.
pub fn count(events: &[Value], kind: &str, field: &str, value: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && e[field] == value)
        .count()
}

/// A connected user: its socket, connection id and user id.
pub struct Conn {
    /// The socket.
    pub ws: WsClient,
    /// Its connection id.
    pub id: String,
    /// The user it authenticated as.
    pub user: String,
}

/// Connects `user` to node `node` and joins `rooms`.
pub async fn connect(c: &TestCluster, node: usize, user: &str, rooms: &[&str]) -> Conn {
    let (mut ws, auth) = c.node(node).connect_user(user).await;
    for room in rooms {
        ws.join(room).await;
    }
    Conn {
        ws,
        id: auth["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_owned(),
        user: user.to_owned(),
    }
}

/// Checks what must hold of everything received once every connection in
/// `users` is gone: one `online` and one `offline` per user, every opened
/// connection closed, per room alternating `occupied`/`vacated` ending
/// vacated, per member `joined` before `left`, every signature good.
pub fn check_everything_went_away(events: &[Value], users: &[String]) -> Result<(), String> {
    for u in users {
        let (on, off) = (
            count(events, "user.online", "user_id", u),
            count(events, "user.offline", "user_id", u),
        );
        if (on, off) != (1, 1) {
            return Err(format!("user {u}: {on} online, {off} offline"));
        }
    }
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    for e in events.iter().filter(|e| e["type"] == "connection.opened") {
        let conn = e["connection_id"].as_str().unwrap_or_default();
        if !ids.contains(format!("{conn}.closed").as_str()) {
            return Err(format!("connection {conn} opened, never closed"));
        }
    }
    let mut rooms: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut members: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for e in events {
        let (kind, room) = (
            e["type"].as_str().unwrap_or_default(),
            e["room"].as_str().unwrap_or_default(),
        );
        match kind {
            "room.occupied" | "room.vacated" => rooms.entry(room).or_default().push(kind),
            "member.joined" | "member.left" => {
                let conn = e["connection_id"].as_str().unwrap_or_default();
                members.entry((room, conn)).or_default().push(kind);
            }
            _ => {}
        }
        if e["_signature_ok"] != true {
            return Err(format!("bad signature on {e}"));
        }
    }
    for (room, seq) in &rooms {
        let alternating = seq.iter().enumerate().all(|(i, k)| {
            *k == if i % 2 == 0 {
                "room.occupied"
            } else {
                "room.vacated"
            }
        });
        if !alternating || seq.len() % 2 != 0 {
            return Err(format!("room {room}: {seq:?}"));
        }
    }
    for ((room, conn), seq) in &members {
        // The node's `member.joined` may die with it (SIGKILL); a
        // `member.left` is always there, after the join when both are.
        if !(seq == &["member.joined", "member.left"] || seq == &["member.left"]) {
            return Err(format!("member {conn} of {room}: {seq:?}"));
        }
    }
    Ok(())
}

/// Twelve users `<prefix>-<i>` each connect to one of the nodes other
/// than `holder` (alternately), join `room` and go; their ids.
async fn come_and_go_elsewhere(
    c: &TestCluster,
    holder: usize,
    prefix: &str,
    room: &str,
) -> Vec<String> {
    let others: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let mut users = Vec::new();
    for i in 0..12 {
        let user = format!("{prefix}-{i}");
        let conn = connect(c, others[i % 2], &user, &[room]).await;
        conn.ws.close().await;
        users.push(user);
    }
    users
}

/// Everything the receiver accepted, once it has one `user.offline` for
/// each of `users`.
async fn all_offline(backend: &Backend, users: &[String], what: &str) -> Vec<Value> {
    eventually(what, DELIVERY, || async move {
        let events = unique_events(backend).await;
        let done = users
            .iter()
            .all(|u| count(&events, "user.offline", "user_id", u) == 1);
        done.then_some(events).ok_or("not yet".to_owned())
    })
    .await
}

/// Users come and go across nodes while node 0 is SIGKILLed: the receiver
/// still sees every connection closed (node 0's by the reaper), one
/// `user.online` and one `user.offline` per user, each room's transitions
/// once and each member's `member.joined` before its `member.left`.
pub async fn sigkilled_node_loses_no_event(engine: EngineServer<'_>) {
    let backend = &Backend::start().await;
    let c = TestCluster::start_process(3, &engine.url(), &webhooks_config(backend, "")).await;

    // n1's connections die with it: `lost-*` only there (offline through
    // the reaper), `span` there and on n2 (stays online), `chat:n1` only
    // there (vacated through the reaper). `gone` leaves before the kill.
    let mut conns = Vec::new();
    for u in ["lost-1", "lost-2"] {
        conns.push(connect(&c, 0, u, &["chat:all", "chat:n1"]).await);
    }
    let span_n1 = connect(&c, 0, "span", &["chat:all", "chat:n1"]).await;
    conns.push(connect(&c, 1, "span", &["chat:all"]).await);
    conns.push(connect(&c, 1, "stay-1", &["chat:all"]).await);
    conns.push(connect(&c, 2, "stay-2", &["chat:all"]).await);
    let mut gone = connect(&c, 0, "gone", &["chat:all"]).await;
    let left = gone
        .ws
        .request(json!({"type": "leave_room", "room": "chat:all"}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    gone.ws.close().await;

    // Users come and go on the survivors while n1 dies.
    let churn = async {
        for i in 0..6 {
            let conn = connect(&c, 1 + i % 2, &format!("churn-{i}"), &["chat:all"]).await;
            conn.ws.close().await;
        }
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.kill(0);
    };
    tokio::join!(churn, kill);
    drop(span_n1);

    // The reaper reports n1's users; then everyone else leaves.
    eventually("the reaper reports lost users", DELIVERY, || async move {
        let events = unique_events(backend).await;
        let off = ["lost-1", "lost-2"]
            .iter()
            .map(|u| count(&events, "user.offline", "user_id", u))
            .sum::<usize>();
        (off == 2)
            .then_some(())
            .ok_or(format!("{off} of 2 offline"))
    })
    .await;
    let users: Vec<String> = conns
        .iter()
        .map(|c| c.user.clone())
        .chain(["gone".to_owned()])
        .chain((0..6).map(|i| format!("churn-{i}")))
        .collect();
    let ids: Vec<String> = conns.iter().map(|c| c.id.clone()).collect();
    for conn in conns {
        conn.ws.close().await;
    }

    let (users, ids) = (&users, &ids);
    let events = eventually("every event arrives", DELIVERY, || async move {
        let events = unique_events(backend).await;
        let closed = ids
            .iter()
            .all(|id| events.iter().any(|e| e["id"] == format!("{id}.closed")));
        let vacated = count(&events, "room.vacated", "room", "chat:all") > 0;
        let done = closed
            && vacated
            && users
                .iter()
                .all(|u| count(&events, "user.offline", "user_id", u) > 0);
        done.then_some(events).ok_or("not yet".to_owned())
    })
    .await;
    // Complete: a user's `user.offline` is appended after every event of
    // its last connection (members left, closed, rooms vacated), and the
    // outbox is delivered in order.
    if let Err(e) = check_everything_went_away(&events, users) {
        panic!("{e}\nevents: {events:#?}\n{}", c.logs());
    }
    // n1's connections were reported by the reaper as lost.
    let lost: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "connection.closed" && e["node_id"] == c.id(0))
        .filter(|e| e["reason"] == "node_lost")
        .collect();
    assert!(lost.len() >= 3, "n1's three live connections: {lost:#?}");
    assert!(lost.iter().all(|e| e["code"] == 1006));
    assert_eq!(count(&events, "room.occupied", "room", "chat:n1"), 1);
    assert_eq!(count(&events, "room.vacated", "room", "chat:n1"), 1);
}

/// The receiver is away for 3 s while users come and go on the nodes not
/// sending webhooks: afterwards it gets everything, and it did refuse.
pub async fn receiver_away_gets_everything_after(
    engine: EngineServer<'_>,
    backend: &Backend,
    c: &TestCluster,
) {
    let until = super::now_ms() + 3_000;
    backend
        .configure(json!({"webhooks": {"mode": "fail_for", "until_ms": until}}))
        .await;
    let holder = engine.lease_holder(c).await;
    let users = come_and_go_elsewhere(c, holder, "away", "chat:away").await;
    let first = all_offline(backend, &users, "every event after the outage").await;
    check_everything_went_away(&first, &users).unwrap_or_else(|e| panic!("{e}: {first:#?}"));
    assert!(
        backend
            .webhook_posts()
            .await
            .iter()
            .any(|p| p["status"] == 500),
        "the receiver did refuse while away"
    );
}

/// A slow receiver keeps a backlog and the node sending webhooks is
/// SIGKILLed part-way through: another node takes the lease and delivers
/// the rest. Resets `backend` first.
pub async fn sender_sigkilled_mid_backlog_loses_nothing(
    engine: EngineServer<'_>,
    backend: &Backend,
    c: &TestCluster,
) {
    backend.reset().await;
    backend
        .configure(json!({"webhooks": {"mode": "slow", "delay_ms": 300}}))
        .await;
    let holder = engine.lease_holder(c).await;
    let later = come_and_go_elsewhere(c, holder, "backlog", "chat:backlog").await;
    eventually("a first part delivered", DELIVERY, || async move {
        let n = backend.webhook_events().await.len();
        (n >= 10).then_some(()).ok_or(format!("{n} events"))
    })
    .await;
    let before_kill = unique_events(backend).await.len();
    c.kill(holder);
    backend.configure(json!({"webhooks": {"mode": "ok"}})).await;
    let rest = all_offline(backend, &later, "the rest from another node").await;
    check_everything_went_away(&rest, &later)
        .unwrap_or_else(|e| panic!("{e}: {rest:#?}\n{}", c.logs()));
    // The successor sent the rest: more than the one batch that may have
    // been in flight when the sender died.
    assert!(
        rest.len() > before_kill + 5,
        "{before_kill} delivered before the kill, {} in all",
        rest.len()
    );
    let new_holder = engine.lease_holder(c).await;
    assert_ne!(new_holder, holder, "a survivor took the lease");
}
