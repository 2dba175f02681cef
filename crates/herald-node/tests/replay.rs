//! Paced replay driven directly (issue #12): a recovering join larger than
//! the send queue is fed as the queue drains, live events published at any
//! point of it follow with no gap and no duplicate, and the buffer that
//! holds them meanwhile stays bounded.

use async_trait::async_trait;
use herald_broker_memory::MemoryBroker;
use herald_core::broker::{BrokerStats, HistoryPage};
use herald_core::{
    Broker, BrokerError, Identity, Namespaces, PublicationSink, PublishOutcome, PublishRequest,
    RoomKey, Tenant, TokenVerifier, VerifyError,
};
use herald_node::{
    Limits, Node, NodeSettings, OpenOptions, Outbound, PublishInput, Session, Transport,
};
use herald_protocol::{CloseCode, StreamPosition};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

struct AnyToken;

#[async_trait]
impl TokenVerifier for AnyToken {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        Ok(Identity::new(token))
    }
}

/// A node whose `stream` namespace keeps 5000 events, with a send queue of
/// 8 frames.
fn node() -> Node {
    node_with(|sink| Arc::new(MemoryBroker::new(sink)))
}

/// [`node`] on the broker `make`.
fn node_with(make: impl FnOnce(Arc<dyn PublicationSink>) -> Arc<dyn Broker>) -> Node {
    let mut namespaces = Namespaces::shipped();
    namespaces.insert(
        "stream",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            history_size: 5000,
            history_ttl: Duration::from_secs(3600),
            // Room for all 5,000 (the default 1 MiB budget keeps ~2,000).
            history_max_bytes: Some(8 << 20),
            ..Default::default()
        },
    );
    // The same with presence on.
    namespaces.insert(
        "lobby",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            presence: true,
            history_size: 5000,
            history_ttl: Duration::from_secs(3600),
            // Room for all 5,000 (the default 1 MiB budget keeps ~2,000).
            history_max_bytes: Some(8 << 20),
            ..Default::default()
        },
    );
    // A long history, for gaps of many pages.
    namespaces.insert(
        "long",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            history_size: 50_000,
            history_ttl: Duration::from_secs(3600),
            history_max_bytes: Some(64 << 20),
            ..Default::default()
        },
    );
    // History just over one page, to trim it under a replay.
    namespaces.insert(
        "short",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            history_size: 1001,
            history_ttl: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    Node::new(
        NodeSettings {
            node_id: "n1".into(),
            access_proxy: None,
            limits: Limits {
                send_queue_messages: 8,
                ..Limits::default()
            },
            namespaces,
            hooks: herald_core::HookSet::empty(),
        },
        Arc::new(AnyToken),
        make,
    )
}

/// The memory engine, whose history reads skip the event at `hole` as
/// Redis does an entry that expired or cannot be decoded: the page stays
/// full (the next entry takes its place) and is reported incomplete.
struct Holey {
    inner: MemoryBroker,
    hole: u64,
}

#[async_trait]
impl Broker for Holey {
    fn kind(&self) -> &'static str {
        "holey"
    }

    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        self.inner.publish(request).await
    }

    async fn subscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        self.inner.subscribe(room).await
    }

    async fn unsubscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        self.inner.unsubscribe(room).await
    }

    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError> {
        self.inner.position(room).await
    }

    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let mut page = self.inner.history(room, since, limit + 1).await?;
        let before = page.publications.len();
        page.publications.retain(|p| p.position.offset != self.hole);
        let skipped = page.publications.len() != before;
        let cut = page.publications.len() > limit;
        page.publications.truncate(limit);
        page.complete &= !skipped && !cut;
        Ok(page)
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }
}

fn holey_node(hole: u64) -> Node {
    node_with(|sink| {
        Arc::new(Holey {
            inner: MemoryBroker::new(sink),
            hole,
        })
    })
}

async fn publish(node: &Node, n: u64) -> StreamPosition {
    publish_to(node, "stream:1", n).await
}

async fn publish_to(node: &Node, room: &str, n: u64) -> StreamPosition {
    node.publish(PublishInput {
        tenant: Tenant::default_tenant(),
        room: room.into(),
        event: "e".into(),
        data: serde_json::value::to_raw_value(&json!({ "n": n })).expect("raw"),
        idempotency_key: None,
        exclude_connection: None,
        critical: false,
        conflation_key: None,
    })
    .await
    .expect("publish")
    .position
}

/// A session without a socket writer: the test drains its queue, as the
/// SSE stream does.
async fn open(node: &Node) -> Session {
    node.open_session(
        Identity::new("reader"),
        &Transport::SSE,
        OpenOptions::default(),
    )
    .await
    .expect("admitted")
}

/// Takes what is queued now, as JSON frames.
async fn drain(session: &Session) -> Vec<Value> {
    let mut batch = Vec::new();
    let conn = session.connection();
    if !conn.queue.is_empty() {
        conn.queue.next_batch(&mut batch).await;
    }
    batch
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Frame { bytes, .. } => serde_json::from_slice(&bytes).ok(),
            Outbound::Ping | Outbound::Raw(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn a_replay_larger_than_the_queue_is_fed_and_live_events_follow_it() {
    replay_with_live_events(100, 30).await;
}

#[tokio::test]
async fn a_replay_over_several_pages_is_read_as_the_client_takes_it() {
    // 1000 stored events are read at a time.
    replay_with_live_events(2500, 30).await;
}

/// Resumes from 0 after `stored` events, publishing `live` more while the
/// replay runs (one per drained batch), and checks every offset arrives
/// once, in order, after `room_joined`.
async fn replay_with_live_events(stored: u64, live: u64) {
    let node = node();
    let mut epoch = String::new();
    for n in 1..=stored {
        epoch = publish(&node, n).await.epoch;
    }
    let mut s = open(&node).await;
    drain(&s).await; // authenticated
    let join = json!({"type": "join_room", "id": 1, "room": "stream:1",
        "since": {"epoch": epoch, "offset": 0}})
    .to_string();
    s.handle_text(&join).await;
    let mut offsets = Vec::new();
    let mut joined = None;
    let last = stored + live;
    let mut published = stored;
    // One live event per drained batch, while the replay is still queued
    // four frames at a time.
    for _ in 0..2 * last {
        for f in drain(&s).await {
            match f["type"].as_str() {
                Some("room_joined") => {
                    assert!(offsets.is_empty(), "room_joined after events: {f}");
                    joined = Some(f);
                }
                Some("event") => offsets.push(f["offset"].as_u64().expect("offset")),
                _ => panic!("unexpected frame {f}"),
            }
        }
        assert!(
            s.connection().queue.closing().is_none(),
            "cut during the replay"
        );
        if published < last {
            published += 1;
            publish(&node, published).await;
        }
        if let Some(read) = s.feed_replay() {
            let page = read.run().await;
            s.add_replay_page(page);
            s.feed_replay();
        }
        if offsets.last() == Some(&last) && s.connection().queue.is_empty() {
            break;
        }
    }
    let joined = joined.expect("room_joined");
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["replayed"], stored, "{joined}");
    assert_eq!(offsets.len() as u64, last, "events received");
    assert_eq!(offsets, (1..=last).collect::<Vec<u64>>());
    // Live from here on.
    publish(&node, last + 1).await;
    let f = drain(&s).await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["offset"], last + 1, "{f:?}");
}

#[tokio::test]
async fn live_events_buffered_during_a_stalled_replay_are_bounded() {
    let node = node();
    let mut epoch = String::new();
    for n in 1..=20 {
        epoch = publish(&node, n).await.epoch;
    }
    let mut s = open(&node).await;
    drain(&s).await;
    s.join_room("stream:1", Some(StreamPosition::new(epoch, 0)))
        .await
        .expect("joined");
    // The reader never drains: the replay stalls, and the room's live
    // events pile up in the join buffer until it overflows (1024).
    for n in 21..=21 + 1024 {
        publish(&node, n).await;
    }
    assert_eq!(
        s.connection().queue.closing(),
        Some(CloseCode::SlowConsumer),
        "an overflowing join buffer cuts the connection"
    );
    assert!(
        s.feed_replay().is_none(),
        "a cut connection's replay is dropped"
    );
}

#[tokio::test]
async fn history_trimmed_past_a_replay_under_way_cuts_it_cleanly() {
    let node = node();
    let mut epoch = String::new();
    for n in 1..=1001 {
        epoch = publish_to(&node, "short:1", n).await.epoch;
    }
    let mut s = open(&node).await;
    drain(&s).await;
    s.join_room("short:1", Some(StreamPosition::new(epoch, 0)))
        .await
        .expect("joined");
    // The first page (1..=1000) is read; before the client takes it, the
    // room moves on by more than its history, so 1001 is gone.
    for n in 1002..=2020 {
        publish_to(&node, "short:1", n).await;
    }
    let mut offsets = Vec::new();
    for _ in 0..1000 {
        for f in drain(&s).await {
            if f["type"] == "event" {
                offsets.push(f["offset"].as_u64().expect("offset"));
            }
        }
        if s.connection().queue.closing().is_some() {
            break;
        }
        if let Some(read) = s.feed_replay() {
            let page = read.run().await;
            s.add_replay_page(page);
        }
    }
    assert_eq!(
        s.connection().queue.closing(),
        Some(CloseCode::SlowConsumer),
        "cut once the rest of the gap is gone"
    );
    // What was queued at the cut is dropped (a slow consumer's queue is),
    // so the client resumes from its last event and learns the rest is gone.
    let n = offsets.len() as u64;
    assert!(
        n > 900 && offsets == (1..=n).collect::<Vec<u64>>(),
        "a gap-free prefix of the first page before the cut: {n} events, last {:?}",
        offsets.last()
    );
}

#[tokio::test]
async fn a_resume_from_beyond_the_head_is_not_recovered() {
    let node = node();
    let epoch = publish(&node, 1).await.epoch;
    let mut s = open(&node).await;
    drain(&s).await;
    for offset in [2, u64::MAX] {
        s.join_room("stream:1", Some(StreamPosition::new(epoch.clone(), offset)))
            .await
            .expect("joined");
        let f = drain(&s).await;
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0]["recovered"], false, "since {offset}: {f:?}");
        assert_eq!(f[0]["offset"], 1, "{f:?}");
    }
}

#[tokio::test]
async fn a_full_first_page_with_a_hole_is_not_recovered() {
    // 500 is skipped by the read: the first page is 1..=1001 without it,
    // full and starting right after `since`.
    let node = holey_node(500);
    let mut epoch = String::new();
    for n in 1..=2500 {
        epoch = publish(&node, n).await.epoch;
    }
    let mut s = open(&node).await;
    drain(&s).await;
    s.join_room("stream:1", Some(StreamPosition::new(epoch, 0)))
        .await
        .expect("joined");
    let f = drain(&s).await;
    assert_eq!(f.len(), 1, "room_joined only, no replay: {:?}", f.get(1));
    assert_eq!(f[0]["type"], "room_joined", "{}", f[0]);
    assert_eq!(f[0]["recovered"], false, "{}", f[0]);
    assert_eq!(f[0]["offset"], 2500, "{}", f[0]);
    assert!(s.feed_replay().is_none(), "nothing to replay");
}

#[tokio::test]
async fn a_later_page_with_a_hole_cuts_the_replay_before_it() {
    // The first page (1..=1000) is whole; the second skips 1500.
    let node = holey_node(1500);
    let mut epoch = String::new();
    for n in 1..=2500 {
        epoch = publish(&node, n).await.epoch;
    }
    let mut s = open(&node).await;
    drain(&s).await;
    s.join_room("stream:1", Some(StreamPosition::new(epoch, 0)))
        .await
        .expect("joined");
    let mut offsets = Vec::new();
    let mut joined = None;
    for _ in 0..2000 {
        for f in drain(&s).await {
            match f["type"].as_str() {
                Some("room_joined") => joined = Some(f),
                Some("event") => offsets.push(f["offset"].as_u64().expect("offset")),
                _ => panic!("unexpected frame {f}"),
            }
        }
        if s.connection().queue.closing().is_some() {
            break;
        }
        if let Some(read) = s.feed_replay() {
            let page = read.run().await;
            s.add_replay_page(page);
        }
    }
    let joined = joined.expect("room_joined");
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(
        s.connection().queue.closing(),
        Some(CloseCode::SlowConsumer),
        "cut at the hole, as for a trimmed history"
    );
    let n = offsets.len() as u64;
    assert!(
        n < 1500 && offsets == (1..=n).collect::<Vec<u64>>(),
        "a gap-free prefix before the hole: {n} events, last {:?}",
        offsets.last()
    );
}

#[tokio::test]
async fn rejoining_during_a_replay_still_announces_the_member() {
    let node = node();
    let mut epoch = String::new();
    for n in 1..=100 {
        epoch = publish_to(&node, "lobby:1", n).await.epoch;
    }
    let mut watcher = open(&node).await;
    drain(&watcher).await;
    watcher.join_room("lobby:1", None).await.expect("joined");
    drain(&watcher).await;
    let mut s = open(&node).await;
    drain(&s).await;
    s.join_room("lobby:1", Some(StreamPosition::new(epoch, 0)))
        .await
        .expect("joined");
    // The replay runs (the reader has not drained): not announced yet.
    assert!(drain(&watcher).await.is_empty());
    // Joining again supersedes the replay, and owes its announcement.
    s.join_room("lobby:1", None).await.expect("rejoined");
    let id = s.connection().id.to_string();
    let f = drain(&watcher).await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["type"], "member_joined", "{f:?}");
    assert_eq!(f[0]["connection_id"], id.as_str(), "{f:?}");
    s.handle_text(r#"{"type":"leave_room","room":"lobby:1"}"#)
        .await;
    let f = drain(&watcher).await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["type"], "member_left", "{f:?}");
}

/// A member that leaves while its replay still runs was never announced
/// to the room's local members, so they are not told it left either.
#[tokio::test]
async fn leaving_during_a_replay_is_not_half_announced() {
    let node = node();
    let mut epoch = String::new();
    for n in 1..=100 {
        epoch = publish_to(&node, "lobby:2", n).await.epoch;
    }
    let mut watcher = open(&node).await;
    drain(&watcher).await;
    watcher.join_room("lobby:2", None).await.expect("joined");
    drain(&watcher).await;
    let mut s = open(&node).await;
    drain(&s).await;
    s.join_room("lobby:2", Some(StreamPosition::new(epoch, 0)))
        .await
        .expect("joined");
    assert!(drain(&watcher).await.is_empty(), "not announced yet");
    s.handle_text(r#"{"type":"leave_room","room":"lobby:2"}"#)
        .await;
    let f = drain(&watcher).await;
    assert!(
        f.is_empty(),
        "member_left for a member never announced: {f:?}"
    );
    // A member that was announced is told about when it leaves.
    let mut t = open(&node).await;
    drain(&t).await;
    t.join_room("lobby:2", None).await.expect("joined");
    assert_eq!(drain(&watcher).await[0]["type"], "member_joined");
    t.handle_text(r#"{"type":"leave_room","room":"lobby:2"}"#)
        .await;
    assert_eq!(drain(&watcher).await[0]["type"], "member_left");
}

#[tokio::test]
async fn rooms_resumed_together_all_move_on_and_a_busy_one_is_not_cut() {
    let node = node();
    // A gap far larger than the queue (8) and the join buffer (1024).
    let gap = 20_000;
    let mut epoch_a = String::new();
    for n in 1..=gap {
        epoch_a = publish_to(&node, "long:a", n).await.epoch;
    }
    let mut epoch_b = String::new();
    for n in 1..=10 {
        epoch_b = publish_to(&node, "stream:b", n).await.epoch;
    }
    let mut s = open(&node).await;
    drain(&s).await;
    // As an SSE resume over both rooms joins them.
    s.join_room("long:a", Some(StreamPosition::new(epoch_a, 0)))
        .await
        .expect("joined a");
    s.join_room("stream:b", Some(StreamPosition::new(epoch_b, 0)))
        .await
        .expect("joined b");
    // Room b gets far more live events than its join buffer holds while
    // a's gap is replayed: three per drained batch, more than half of what
    // the replay queues at a time (4), so b must not just take turns.
    let last_b = 10 + 4000;
    let mut published_b = 10;
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    let mut joined = Vec::new();
    for _ in 0..2 * (gap + last_b) {
        for f in drain(&s).await {
            let room = f["room"].as_str().expect("room").to_owned();
            match f["type"].as_str() {
                Some("room_joined") => {
                    assert!(!got.contains_key(&room), "room_joined after events: {f}");
                    assert_eq!(f["recovered"], true, "{f}");
                    joined.push(room);
                }
                Some("event") => got
                    .entry(room)
                    .or_default()
                    .push(f["offset"].as_u64().expect("offset")),
                _ => panic!("unexpected frame {f}"),
            }
        }
        assert_eq!(
            s.connection().queue.closing(),
            None,
            "cut after {:?} of a, {:?} of b",
            got.get("long:a").map(Vec::len),
            got.get("stream:b").map(Vec::len)
        );
        for _ in 0..3 {
            if published_b < last_b {
                published_b += 1;
                publish_to(&node, "stream:b", published_b).await;
            }
        }
        if let Some(read) = s.feed_replay() {
            let page = read.run().await;
            s.add_replay_page(page);
            s.feed_replay();
        }
        let done = |room: &str, last: u64| got.get(room).and_then(|o| o.last()) == Some(&last);
        if done("long:a", gap) && done("stream:b", last_b) && s.connection().queue.is_empty() {
            break;
        }
    }
    assert_eq!(joined, ["long:a", "stream:b"]);
    assert_eq!(got["long:a"], (1..=gap).collect::<Vec<u64>>(), "room a");
    assert_eq!(
        got["stream:b"],
        (1..=last_b).collect::<Vec<u64>>(),
        "room b"
    );
}
