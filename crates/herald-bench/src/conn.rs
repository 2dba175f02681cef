//! One simulated client: connects, joins its rooms, receives and accounts
//! events, optionally sends messages, and on a drop (storm, churn, server
//! close) reconnects with exponential backoff and full jitter, resuming each
//! room with `join_room` + `since`.

use crate::client::{Frame, Stamp};
use crate::metrics::{now_us, OffsetTracker};
use crate::run::Shared;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Reconnect backoff: base and cap (full jitter: sleep uniform(0, min(cap, base·2^n))).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Most connect attempts one client makes over a run.
const MAX_ATTEMPTS: u32 = 50;

/// What one client does.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Connection number (user id and source address derive from it).
    pub index: u64,
    /// Rooms joined after connecting.
    pub rooms: Vec<String>,
    /// `send_message` into the first room every this often.
    pub send_every: Option<Duration>,
    /// Payload bytes of sent messages.
    pub payload: usize,
    /// Reconnect (and resume) when dropped.
    pub reconnect: bool,
    /// Mean time between voluntary reconnects (soak churn).
    pub churn_every: Option<Duration>,
}

impl ConnSpec {
    /// A client that joins `room` and only listens: no sending, no
    /// reconnecting, no churn. Scenarios adjust the rest with struct update.
    pub fn listener(index: u64, room: String) -> Self {
        Self {
            index,
            rooms: vec![room],
            send_every: None,
            payload: 0,
            reconnect: false,
            churn_every: None,
        }
    }
}

/// One room as a client saw it.
#[derive(Debug, Clone)]
pub struct RoomSeen {
    /// Room name.
    pub room: String,
    /// Offsets seen.
    pub tracker: OffsetTracker,
}

/// What one client reports at the end.
#[derive(Debug, Default)]
pub struct ConnReport {
    /// Rooms and offsets seen.
    pub rooms: Vec<RoomSeen>,
    /// Room and highest offset acknowledged for this client's sends.
    pub acked: Option<(String, u64)>,
    /// Ever connected.
    pub connected: bool,
}

enum Exit {
    Stop,
    Reconnect,
}

struct State {
    rooms: BTreeMap<String, (String, OffsetTracker)>,
    /// Replayed events still expected per room (not latency samples).
    replay_left: BTreeMap<String, u64>,
    /// Highest offset acknowledged for `send_message` (into rooms[0]).
    ack_max: u64,
    /// Joins awaiting `room_joined`.
    pending_joins: usize,
    /// This session started after a storm drop and has not rejoined yet.
    rejoin_pending: bool,
    seq: u64,
}

/// Runs one client until the run stops; bounded by the run's deadline and
/// [`MAX_ATTEMPTS`].
pub async fn run(spec: ConnSpec, sh: Arc<Shared>) -> ConnReport {
    // A peer speaks its own protocol: a listener in its one room.
    if let (Some(peer), Some(room)) = (sh.ctx.peer.clone(), spec.rooms.first()) {
        return crate::peers::listen(&peer, spec.index, room.clone(), sh).await;
    }
    let mut st = State {
        rooms: BTreeMap::new(),
        replay_left: BTreeMap::new(),
        ack_max: 0,
        pending_joins: 0,
        rejoin_pending: false,
        seq: 0,
    };
    let mut report = ConnReport::default();
    let mut stop = sh.stop.clone();
    let mut drops = sh.drops.clone();
    let mut failures_in_row = 0u32;
    for attempt in 0..MAX_ATTEMPTS {
        if *stop.borrow() || Instant::now() >= sh.deadline {
            break;
        }
        if attempt > 0 {
            // Full jitter: uniform(0, min(cap, base * 2^n)).
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << failures_in_row.min(10))
                .min(BACKOFF_CAP);
            let wait = rand::rng().random_range(Duration::ZERO..=ceiling);
            tokio::select! {
                _ = sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        let mut started = Instant::now();
        // The first connect goes to `--url`; reconnects to the reconnect
        // list when there is one (storm `--reconnect-url`).
        let target = if report.connected {
            sh.ctx.reconnect_target(spec.index, failures_in_row)
        } else {
            &sh.ctx.target
        };
        let ws = {
            // The initial ramp is paced by a semaphore; reconnects are not
            // (a storm is many clients returning at once).
            let _permit = if report.connected {
                None
            } else {
                let p = sh.connect_gate.clone().acquire_owned().await.ok();
                started = Instant::now();
                p
            };
            sh.ctx.connect_to(target, spec.index).await
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(reason) => {
                sh.count_failure(&reason);
                if report.connected {
                    sh.count_reconnect_failure(&reason);
                }
                failures_in_row += 1;
                if !spec.reconnect {
                    break;
                }
                continue;
            }
        };
        if report.connected {
            sh.count_reconnect(&target.http_base);
        }
        failures_in_row = 0;
        sh.connect_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        sh.connects.fetch_add(1, Ordering::Relaxed);
        sh.open.fetch_add(1, Ordering::Relaxed);
        report.connected = true;
        // Join (or resume) every room.
        st.pending_joins = spec.rooms.len();
        let mut ok = true;
        for (k, room) in spec.rooms.iter().enumerate() {
            let mut req = json!({"type": "join_room", "id": k, "room": room});
            if let Some((epoch, t)) = st.rooms.get(room) {
                req["since"] = json!({"epoch": epoch, "offset": t.last()});
            }
            if ws.send(Message::text(req.to_string())).await.is_err() {
                ok = false;
                break;
            }
        }
        let exit = if ok {
            session(&spec, &sh, &mut ws, &mut st, &mut stop, &mut drops).await
        } else {
            Exit::Reconnect
        };
        sh.open.fetch_sub(1, Ordering::Relaxed);
        match exit {
            Exit::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break;
            }
            Exit::Reconnect => {
                drop(ws); // abrupt, as a network cut would be
                if !spec.reconnect {
                    break;
                }
            }
        }
    }
    report.rooms = st
        .rooms
        .into_iter()
        .map(|(room, (_epoch, tracker))| RoomSeen { room, tracker })
        .collect();
    if st.ack_max > 0 {
        report.acked = Some((spec.rooms[0].clone(), st.ack_max));
    }
    report
}

async fn session(
    spec: &ConnSpec,
    sh: &Shared,
    ws: &mut crate::client::Ws,
    st: &mut State,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    drops: &mut tokio::sync::watch::Receiver<u32>,
) -> Exit {
    let first_send = spec
        .send_every
        .map(|d| Instant::now() + d.mul_f64(rand::rng().random_range(0.0..1.0)));
    let mut next_send = first_send.unwrap_or(sh.deadline);
    let churn_at = spec
        .churn_every
        .map(|d| Instant::now() + d.mul_f64(rand::rng().random_range(0.5..1.5)));
    drops.borrow_and_update();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => {
                        let code = c.map(|c| u16::from(c.code)).unwrap_or(0);
                        sh.count_failure(&format!("closed by server {code}"));
                        cut(sh, st);
                        return Exit::Reconnect;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        sh.count_failure("connection lost");
                        cut(sh, st);
                        return Exit::Reconnect;
                    }
                };
                handle(sh, st, &text);
            }
            _ = sleep_until(next_send), if spec.send_every.is_some() && st.pending_joins == 0 => {
                let Some(every) = spec.send_every else { continue };
                next_send += every;
                if next_send < Instant::now() {
                    next_send = Instant::now() + every; // fell behind: skip, do not burst
                }
                if !sh.send_enabled.load(Ordering::Relaxed) {
                    continue;
                }
                st.seq += 1;
                let data = crate::client::stamped_data(st.seq, spec.payload);
                let room = &spec.rooms[0];
                let frame = format!(
                    r#"{{"type":"send_message","id":{},"room":"{room}","data":{data}}}"#,
                    1_000_000 + st.seq
                );
                let sent = tokio::time::timeout(Duration::from_secs(5), ws.send(Message::text(frame))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Exit::Reconnect;
                }
                sh.sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = async { sleep_until(churn_at.unwrap_or(sh.deadline)).await }, if churn_at.is_some() => {
                sh.churned.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return Exit::Reconnect;
            }
            _ = drops.changed() => {
                cut(sh, st);
                return Exit::Reconnect;
            }
            _ = stop.changed() => return Exit::Stop,
            _ = sleep_until(sh.deadline) => return Exit::Stop,
        }
    }
}

/// A session ended by a drop or by the server: once the storm is armed,
/// the client counts as cut until it is back in its rooms.
fn cut(sh: &Shared, st: &mut State) {
    if sh.cut_armed.load(Ordering::Relaxed) && !st.rejoin_pending {
        st.rejoin_pending = true;
        sh.note_cut();
    }
}

fn handle(sh: &Shared, st: &mut State, text: &str) {
    let Ok(f) = serde_json::from_str::<Frame>(text) else {
        sh.count_error("unparsable frame");
        return;
    };
    match f.kind.as_ref() {
        "event" | "message" => {
            let (Some(room), Some(offset)) = (f.room.as_deref(), f.offset) else {
                return;
            };
            let replay = match st.replay_left.get_mut(room) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
            if replay {
                sh.replayed.fetch_add(1, Ordering::Relaxed);
            } else if let Some(Ok(stamp)) = f.data.map(|d| serde_json::from_str::<Stamp>(d.get())) {
                sh.recorder.record(stamp.t, now_us());
            }
            if sh.ctx.check_agent(offset) && !f.data.is_some_and(|d| crate::agent::check(d.get())) {
                sh.count_error("bad agent event");
            }
            if let Some((_, t)) = st.rooms.get_mut(room) {
                t.see(offset);
            }
        }
        "room_joined" => {
            let (Some(room), Some(epoch), Some(offset)) = (f.room, f.epoch, f.offset) else {
                return;
            };
            st.pending_joins = st.pending_joins.saturating_sub(1);
            match st.rooms.get_mut(room.as_ref()) {
                Some((e, _)) if f.recovered == Some(true) && *e == epoch => {
                    st.replay_left
                        .insert(room.to_string(), f.replayed.unwrap_or(0));
                }
                Some((e, t)) => {
                    // Not recoverable: count what this client will never
                    // see, and keep what it saw before.
                    sh.recovered_false.fetch_add(1, Ordering::Relaxed);
                    let same_epoch = *e == epoch;
                    if same_epoch {
                        sh.unrecoverable
                            .fetch_add(offset.saturating_sub(t.last()), Ordering::Relaxed);
                    }
                    *e = epoch.to_string();
                    t.restart_at(offset, same_epoch);
                }
                None => {
                    st.rooms.insert(
                        room.to_string(),
                        (epoch.to_string(), OffsetTracker::starting_at(offset)),
                    );
                }
            }
            if st.pending_joins == 0 {
                sh.joined.fetch_add(1, Ordering::Relaxed);
                if st.rejoin_pending {
                    st.rejoin_pending = false;
                    sh.rejoined.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        "ack" => {
            sh.acks.fetch_add(1, Ordering::Relaxed);
            if let (Some(room_off), Some(id)) = (f.offset, f.id) {
                // Acks carry no room; the bench sends into rooms[0] only,
                // with ids from 1,000,000 (joins use small ids).
                if id >= 1_000_000 {
                    st.ack_max = st.ack_max.max(room_off);
                }
            }
        }
        "error" => {
            let code = f
                .code
                .as_ref()
                .and_then(|c| c.as_str())
                .unwrap_or("?")
                .to_string();
            sh.count_error(&format!("error frame {code}"));
        }
        "disconnect" => {
            sh.count_error(&format!("disconnect {}", f.reason.unwrap_or_default()));
        }
        _ => {}
    }
}
