//! Webhooks on a three-node NATS cluster (`herald serve` processes on one
//! nats-server, the test backend as the receiver): users come and go
//! across nodes while one node is SIGKILLed, and the receiver still sees
//! every connection closed, exactly one `user.online` and one
//! `user.offline` per user, each room's `room.occupied`/`room.vacated` once
//! per transition and each member's `member.joined` before its
//! `member.left`; and when the node sending webhooks is SIGKILLed with a
//! backlog, another takes the lease and delivers the rest.

mod common;

use common::cluster::*;
use common::{Backend, WsClient};
use herald_testkit::NatsServer;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// Longest wait for the receiver to have seen what it should.
const DELIVERY: Duration = Duration::from_secs(20);

fn webhooks_config(backend: &Backend, extra: &str) -> String {
    format!(
        "[webhooks]\nurl = \"{}\"\nsecret = \"{}\"\n{extra}\n",
        backend.url("/webhooks"),
        Backend::SECRET
    )
}

/// The events the receiver accepted, each id once (at-least-once delivery
/// may repeat a batch), in first-arrival order.
async fn unique_events(backend: &Backend) -> Vec<Value> {
    let mut seen = HashSet::new();
    backend
        .webhook_events()
        .await
        .into_iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn count(events: &[Value], kind: &str, field: &str, value: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && e[field] == value)
        .count()
}

/// Which node (index) holds the dispatch lease: the NATS engine's lease
/// key (docs/architecture.md, "Webhooks on NATS") names it.
async fn lease_holder(nats: &NatsServer, c: &TestCluster) -> usize {
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

/// A connected user: its socket and connection id.
struct Conn {
    ws: WsClient,
    id: String,
    user: String,
}

async fn connect(c: &TestCluster, node: usize, user: &str, rooms: &[&str]) -> Conn {
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

/// What must hold of everything received once every connection of
/// `users` is gone: one `online` and one `offline` per user, every opened
/// connection closed, per room alternating `occupied`/`vacated` ending
/// vacated, per member `joined` before `left`, every signature good.
fn check_everything_went_away(events: &[Value], users: &[String]) -> Result<(), String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_loses_no_event_and_transitions_fire_once_on_nats() {
    let nats = NatsServer::start();
    let backend = &Backend::start().await;
    let c = TestCluster::start_process(3, &nats.url(), &webhooks_config(backend, "")).await;

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
    let gone = connect(&c, 0, "gone", &["chat:all"]).await;
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

    eventually("the reaper reports lost users", DELIVERY, || async move {
        let events = unique_events(backend).await;
        let off: usize = ["lost-1", "lost-2"]
            .iter()
            .map(|u| count(&events, "user.offline", "user_id", u))
            .sum();
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
    if let Err(e) = check_everything_went_away(&events, users) {
        panic!("{e}\nevents: {events:#?}\n{}", c.logs());
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_sigkilled_with_a_backlog_loses_nothing_on_nats() {
    let nats = NatsServer::start();
    let backend = &Backend::start().await;
    let config = webhooks_config(backend, "batch_size = 5");
    let c = TestCluster::start_process(3, &nats.url(), &config).await;

    // A slow receiver keeps a backlog; its sender dies part-way through.
    backend
        .configure(json!({"webhooks": {"mode": "slow", "delay_ms": 300}}))
        .await;
    let holder = lease_holder(&nats, &c).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let mut users = Vec::new();
    for i in 0..12 {
        let user = format!("backlog-{i}");
        let conn = connect(&c, others[i % 2], &user, &["chat:backlog"]).await;
        conn.ws.close().await;
        users.push(user);
    }
    eventually("a first part delivered", DELIVERY, || async move {
        let n = backend.webhook_events().await.len();
        (n >= 10).then_some(()).ok_or(format!("{n} events"))
    })
    .await;
    c.kill(holder);
    backend.configure(json!({"webhooks": {"mode": "ok"}})).await;
    let users = &users;
    let events = eventually("the rest from another node", DELIVERY, || async move {
        let events = unique_events(backend).await;
        let done = users
            .iter()
            .all(|u| count(&events, "user.offline", "user_id", u) == 1);
        done.then_some(events).ok_or("not yet".to_owned())
    })
    .await;
    check_everything_went_away(&events, users)
        .unwrap_or_else(|e| panic!("{e}: {events:#?}\n{}", c.logs()));
    let new_holder = lease_holder(&nats, &c).await;
    assert_ne!(new_holder, holder, "a survivor took the lease");
}
