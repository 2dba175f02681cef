//! A node SIGKILLed under load, on any engine.

use super::*;
use crate::common::{Incoming, ADMIN_KEY, FRAME_WAIT};
use serde_json::{json, Value};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Slack on top of two heartbeat periods for the survivors' cleanup.
const REAP_SLACK: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Follow {
    name: String,
    offsets: Vec<u64>,
    reconnects: usize,
    /// `member_left` frames: connection id and when it arrived.
    left: Vec<(String, Instant)>,
    errors: Vec<String>,
    /// The connection it ended on, kept open for the checks after the run.
    ws: Option<WsClient>,
}

/// Reads `room` until offset `total`; when its socket dies, reconnects to
/// `fallback` and resumes with `since` from the last offset seen.
async fn follow(
    c: &TestCluster,
    name: String,
    mut ws: WsClient,
    room: &str,
    epoch: &str,
    total: u64,
    fallback: usize,
) -> Follow {
    let mut rep = Follow {
        name,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(50);
    loop {
        let last = rep.offsets.last().copied().unwrap_or(0);
        if last >= total {
            rep.ws = Some(ws);
            return rep;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv(left).await {
            Incoming::Json(v) if v["type"] == "event" => {
                if v["epoch"] != epoch {
                    rep.errors.push(format!("event of another epoch: {v}"));
                    return rep;
                }
                rep.offsets.push(offset_of(&v));
            }
            Incoming::Json(v) if v["type"] == "member_left" => {
                let id = v["connection_id"].as_str().unwrap_or_default().to_owned();
                rep.left.push((id, Instant::now()));
            }
            Incoming::Json(_) => {}
            Incoming::Timeout => {
                rep.errors.push(format!("stuck at offset {last}"));
                return rep;
            }
            _ended if rep.reconnects < 3 => {
                rep.reconnects += 1;
                ws = match reconnect(c.node(fallback), &rep.name).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        rep.errors.push(e);
                        return rep;
                    }
                };
                let j = join_since(&mut ws, room, epoch, last).await;
                if j["recovered"] != true || j["epoch"] != epoch {
                    rep.errors.push(format!("since {last} not recovered: {j}"));
                    return rep;
                }
            }
            other => {
                rep.errors.push(format!("lost again: {other:?}"));
                return rep;
            }
        }
    }
}

/// A node SIGKILLed while 2,000 events flow through another: its three
/// clients resume on a survivor and every client ends with exactly 1..N;
/// the survivors forget its connections, presence and figures within two
/// heartbeats (plus slack), and watchers hear each of its members leave
/// once. Needs `herald serve` processes.
pub async fn scenario_sigkill_under_load(url: &str) {
    const N: u64 = 2000;
    const KILL_AT: u64 = 600;
    let (publisher, victim, rescue) = (0usize, 1usize, 2usize);
    let c = TestCluster::start_process(3, url, "").await;
    let room = "live:k";
    let mut clients = Vec::new();
    let mut epoch = String::new();
    let mut dead_conns = Vec::new();
    // Three clients on the victim, two on the rescuer, one on the publisher.
    for (i, at) in [victim, victim, victim, rescue, rescue, publisher]
        .into_iter()
        .enumerate()
    {
        let name = format!("k-{i}");
        let (mut ws, auth) = c.node(at).connect_user(&name).await;
        epoch = epoch_of(&ws.join(room).await);
        if at == victim {
            dead_conns.push(auth["connection_id"].as_str().expect("id").to_owned());
        }
        clients.push((name, ws, at));
    }
    // Every member_joined has arrived before the run: each client is told
    // of each one that joined after it.
    let members = clients.len();
    for (i, (_, ws, _)) in clients.iter_mut().enumerate() {
        ws.collect_type("member_joined", members - 1 - i, FRAME_WAIT)
            .await;
    }
    let killed_at: Cell<Option<Instant>> = Cell::new(None);
    let (cr, ep, ka) = (&c, epoch.as_str(), &killed_at);
    let followers = clients
        .into_iter()
        .map(|(name, ws, _)| follow(cr, name, ws, room, ep, N, rescue));
    let publish = async move {
        for n in 1..=N {
            let a = cr
                .node(publisher)
                .publish(room, "tick", json!({"n": n}))
                .await;
            assert_eq!(offset_of(&a), n, "{a}");
            if n == KILL_AT {
                cr.kill(victim);
                ka.set(Some(Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    // Survivors forget the victim's connections, presence and figures.
    let dead = &dead_conns;
    let reaped = async move {
        while ka.get().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let within = (2 * HEARTBEAT + REAP_SLACK).saturating_sub(ka.get().expect("set").elapsed());
        for survivor in [publisher, rescue] {
            let node = cr.node(survivor);
            eventually("victim reaped", within, || async move {
                let members = presence(node, room).await?;
                if members.iter().any(|m| m.2 == cr.id(victim)) {
                    return Err(format!("presence {members:?}"));
                }
                for i in 0..3 {
                    let list = connections(node, &format!("k-{i}")).await?;
                    if list.iter().any(|e| e["node_id"] == cr.id(victim)) {
                        return Err(format!("connections of k-{i}: {list:?}"));
                    }
                }
                let (_, stats) = node
                    .api("GET", "/api/v1/stats", Some(ADMIN_KEY), None)
                    .await;
                let ids: Vec<&Value> = stats["nodes"]
                    .as_array()
                    .map(|a| a.iter().map(|n| &n["node_id"]).collect())
                    .unwrap_or_default();
                if ids.iter().any(|id| **id == cr.id(victim)) || ids.len() != 2 {
                    return Err(format!("stats {stats}"));
                }
                Ok(())
            })
            .await;
        }
        Instant::now()
    };
    let (reports, (), reaped_by) = tokio::time::timeout(
        Duration::from_secs(55),
        futures_util::future::join3(futures_util::future::join_all(followers), publish, reaped),
    )
    .await
    .expect("run within 55 s");
    let kill = killed_at.get().expect("victim killed");
    eprintln!("victim reaped {:?} after the kill", reaped_by - kill);
    let want: Vec<u64> = (1..=N).collect();
    for (i, r) in reports.iter().enumerate() {
        assert!(r.errors.is_empty(), "{}: {:?}", r.name, r.errors);
        assert_eq!(r.reconnects, usize::from(i < 3), "{}: reconnects", r.name);
        if r.offsets != want {
            let at = r.offsets.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "{}: {} offsets, first divergence at {at:?}",
                r.name,
                r.offsets.len()
            );
        }
        if i < 3 {
            continue;
        }
        // Watchers on survivors hear each dead member leave, once, in time.
        for id in dead {
            let seen: Vec<&Instant> = r
                .left
                .iter()
                .filter(|(c, _)| c == id)
                .map(|(_, t)| t)
                .collect();
            assert_eq!(
                seen.len(),
                1,
                "{}: member_left for {id}: {:?}",
                r.name,
                r.left
            );
            let after = seen[0].saturating_duration_since(kill);
            assert!(
                after <= 2 * HEARTBEAT + REAP_SLACK,
                "{}: member_left {after:?} after the kill",
                r.name
            );
        }
    }
    // The victim's users now hold exactly their one new connection, on the
    // rescuing node.
    for i in 0..3 {
        let list = connections(c.node(publisher), &format!("k-{i}"))
            .await
            .expect("connections");
        let nodes: Vec<&Value> = list.iter().map(|e| &e["node_id"]).collect();
        assert_eq!(nodes, vec![c.id(rescue)], "k-{i}: {list:?}");
    }
}
