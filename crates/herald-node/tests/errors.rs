//! Broker failures reach clients as a generic message per code: the
//! engine's own text (hosts, Redis replies) stays in the node's log; and a
//! failure changes nothing the client did not ask to change.

use async_trait::async_trait;
use herald_broker_memory::MemoryBroker;
use herald_core::broker::{BrokerStats, HistoryPage};
use herald_core::{
    Broker, BrokerError, HistoryPolicy, Identity, Namespaces, PublicationSink, PublishOutcome,
    PublishRequest, RoomKey, RoomName, Tenant, TokenVerifier, VerifyError,
};
use herald_node::{Limits, Node, NodeSettings, OpenOptions, Outbound, Session, Transport};
use herald_protocol::StreamPosition;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Events a `chat` room keeps.
const HISTORY: usize = 5000;

/// What the failing broker says; no client may see it.
const INTERNAL: &str = "IO Error: connection refused (redis-internal.example:6379)";

struct AnyToken;

#[async_trait]
impl TokenVerifier for AnyToken {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        Ok(Identity::new(token))
    }
}

/// The memory engine with its subscriptions failing as an unreachable
/// Redis's do.
struct Down {
    inner: MemoryBroker,
}

#[async_trait]
impl Broker for Down {
    fn kind(&self) -> &'static str {
        "down"
    }

    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        self.inner.publish(request).await
    }

    async fn subscribe(&self, _room: &RoomKey) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable(INTERNAL.into()))
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
        self.inner.history(room, since, limit).await
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }
}

#[tokio::test]
async fn a_join_the_broker_fails_answers_without_the_engine_text() {
    let mut namespaces = Namespaces::shipped();
    namespaces.insert(
        "chat",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            ..Default::default()
        },
    );
    let node = Node::new(
        NodeSettings {
            node_id: "n1".into(),
            access_proxy: None,
            limits: Limits::default(),
            namespaces,
            hooks: herald_core::HookSet::empty(),
        },
        Arc::new(AnyToken),
        |sink: Arc<dyn PublicationSink>| -> Arc<dyn Broker> {
            Arc::new(Down {
                inner: MemoryBroker::new(sink),
            })
        },
    );
    let mut session = node
        .open_session(Identity::new("u1"), &Transport::SSE, OpenOptions::default())
        .await
        .expect("admitted");
    session
        .handle_text(&json!({"type": "join_room", "id": 7, "room": "chat:1"}).to_string())
        .await;
    let frames = drain(&session).await;
    let error = frames
        .iter()
        .find(|f| f["type"] == "error" && f["id"] == 7)
        .unwrap_or_else(|| panic!("no error answering the join: {frames:?}"));
    assert_eq!(error["code"], "unavailable");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(!message.contains("redis-internal"), "{message}");
    assert_eq!(message, herald_node::BROKER_UNAVAILABLE_MESSAGE);
}

/// Every JSON frame queued for `session` so far.
async fn drain(session: &Session) -> Vec<Value> {
    let conn = session.connection();
    let mut batch = Vec::new();
    let mut frames: Vec<Value> = Vec::new();
    while !conn.queue.is_empty() {
        conn.queue.next_batch(&mut batch).await;
        frames.extend(batch.drain(..).filter_map(|o| match o {
            Outbound::Frame { bytes, .. } => serde_json::from_slice(&bytes).ok(),
            Outbound::Ping | Outbound::Raw(_) => None,
        }));
    }
    frames
}

/// The memory engine whose reads (`position`, `history`) fail on demand;
/// a failing read first publishes `during-read` into the room, as if an
/// event arrived while the join waited on the broker.
struct FailingReads {
    inner: MemoryBroker,
    fail: AtomicBool,
}

impl FailingReads {
    async fn fail_read(&self, room: &RoomKey) -> BrokerError {
        let event = PublishRequest {
            room: room.clone(),
            event: "during-read".into(),
            data: serde_json::value::to_raw_value(&json!({})).expect("raw"),
            from: None,
            exclude_connection: None,
            idempotency_key: None,
            history: HistoryPolicy {
                size: HISTORY,
                ttl: Duration::from_secs(3600),
                max_bytes: 0,
            },
            trace: None,
            critical: false,
            conflation_key: None,
        };
        if let Err(e) = self.inner.publish(event).await {
            return e;
        }
        BrokerError::Unavailable(INTERNAL.into())
    }
}

#[async_trait]
impl Broker for FailingReads {
    fn kind(&self) -> &'static str {
        "failing-reads"
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
        if self.fail.load(Ordering::SeqCst) {
            return Err(self.fail_read(room).await);
        }
        self.inner.position(room).await
    }

    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(self.fail_read(room).await);
        }
        self.inner.history(room, since, limit).await
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }
}

/// A node whose `chat` rooms anyone joins, with presence and history, over
/// [`FailingReads`].
fn failing_reads_node() -> (Node, Arc<FailingReads>) {
    let mut namespaces = Namespaces::shipped();
    namespaces.insert(
        "chat",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            presence: true,
            history_size: HISTORY,
            history_ttl: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    let broker: Arc<std::sync::OnceLock<Arc<FailingReads>>> = Arc::default();
    let slot = broker.clone();
    let node = Node::new(
        NodeSettings {
            node_id: "n1".into(),
            access_proxy: None,
            limits: Limits::default(),
            namespaces,
            hooks: herald_core::HookSet::empty(),
        },
        Arc::new(AnyToken),
        move |sink: Arc<dyn PublicationSink>| -> Arc<dyn Broker> {
            let b = Arc::new(FailingReads {
                inner: MemoryBroker::new(sink),
                fail: AtomicBool::new(false),
            });
            let _ = slot.set(b.clone());
            b
        },
    );
    let broker = broker.get().expect("broker built").clone();
    (node, broker)
}

async fn publish(node: &Node, room: &str, event: &str) -> u64 {
    node.publish(herald_node::PublishInput {
        tenant: Tenant::default_tenant(),
        room: room.into(),
        event: event.into(),
        data: serde_json::value::to_raw_value(&json!({})).expect("raw"),
        idempotency_key: None,
        exclude_connection: None,
        critical: false,
        conflation_key: None,
    })
    .await
    .expect("publish")
    .position
    .offset
}

/// The offsets of `room`'s events among `frames`.
fn offsets(frames: &[Value], room: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "event" && f["room"] == room)
        .filter_map(|f| f["offset"].as_u64())
        .collect()
}

/// A rejoin (`join_room` with `since` on a joined room) whose history read
/// fails answers the error and changes nothing: the member stays live with
/// no gap (the event published while the read failed comes next), nobody
/// is told it left, and it is still listed in the room.
#[tokio::test]
async fn a_failed_rejoin_keeps_the_live_membership() {
    let (node, broker) = failing_reads_node();
    let mut a = node
        .open_session(Identity::new("a"), &Transport::SSE, OpenOptions::default())
        .await
        .expect("admitted");
    let mut b = node
        .open_session(Identity::new("b"), &Transport::SSE, OpenOptions::default())
        .await
        .expect("admitted");
    a.handle_text(&json!({"type": "join_room", "id": 1, "room": "chat:1"}).to_string())
        .await;
    b.handle_text(&json!({"type": "join_room", "id": 1, "room": "chat:1"}).to_string())
        .await;
    let joined = drain(&a).await;
    let epoch = joined
        .iter()
        .find(|f| f["type"] == "room_joined")
        .and_then(|f| f["epoch"].as_str())
        .unwrap_or_else(|| panic!("no room_joined: {joined:?}"))
        .to_owned();
    drain(&b).await;
    assert_eq!(publish(&node, "chat:1", "first").await, 1);
    assert_eq!(offsets(&drain(&a).await, "chat:1"), vec![1]);
    drain(&b).await;

    broker.fail.store(true, Ordering::SeqCst);
    let rejoin = json!({"type": "join_room", "id": 9, "room": "chat:1",
        "since": {"epoch": epoch, "offset": 1}});
    a.handle_text(&rejoin.to_string()).await;
    broker.fail.store(false, Ordering::SeqCst);
    assert_eq!(publish(&node, "chat:1", "after").await, 3);

    let seen = drain(&a).await;
    let error = seen
        .iter()
        .find(|f| f["type"] == "error" && f["id"] == 9)
        .unwrap_or_else(|| panic!("no error answering the rejoin: {seen:?}"));
    assert_eq!(error["code"], "unavailable");
    assert!(
        !seen.iter().any(|f| f["type"] == "room_left"),
        "the rejoin failed, the member did not leave: {seen:?}"
    );
    assert_eq!(offsets(&seen, "chat:1"), vec![2, 3], "{seen:?}");
    let others = drain(&b).await;
    assert!(
        !others.iter().any(|f| f["type"] == "member_left"),
        "{others:?}"
    );
    assert_eq!(offsets(&others, "chat:1"), vec![2, 3]);
    let key = RoomKey::new(
        Tenant::default_tenant(),
        RoomName::parse("chat:1").expect("room"),
    );
    let members = node.presence(&key).await.expect("presence");
    let id = a.connection().id.to_string();
    assert!(members.iter().any(|m| m.connection_id == id), "{members:?}");
    // Still joined as far as the node is concerned: leaving works.
    a.handle_text(&json!({"type": "leave_room", "id": 10, "room": "chat:1"}).to_string())
        .await;
    let left = drain(&a).await;
    assert!(
        left.iter()
            .any(|f| f["type"] == "room_left" && f["id"] == 10),
        "{left:?}"
    );
}

/// Every frame of `session` until its replays are all queued and sent
/// (an SSE stream's loop: drain a batch, feed the replay).
async fn drain_with_replay(session: &mut Session) -> Vec<Value> {
    let mut frames = Vec::new();
    for _ in 0..1000 {
        let batch = drain(session).await;
        session.feed_replay_all().await;
        if batch.is_empty() && session.connection().queue.is_empty() {
            return frames;
        }
        frames.extend(batch);
    }
    panic!("the replay never ended");
}

/// A rejoin that fails while an earlier rejoin's replay is still being
/// fed leaves that replay going: the client gets the whole gap, then what
/// was published meanwhile, each event once and in order.
#[tokio::test]
async fn a_failed_rejoin_during_a_replay_lets_the_replay_go_on() {
    let (node, broker) = failing_reads_node();
    let mut a = node
        .open_session(Identity::new("a"), &Transport::SSE, OpenOptions::default())
        .await
        .expect("admitted");
    a.handle_text(&json!({"type": "join_room", "id": 1, "room": "chat:2"}).to_string())
        .await;
    let joined = drain(&a).await;
    let epoch = joined
        .iter()
        .find(|f| f["type"] == "room_joined")
        .and_then(|f| f["epoch"].as_str())
        .unwrap_or_else(|| panic!("no room_joined: {joined:?}"))
        .to_owned();
    // 1,500 events received live (drained as they come: the queue holds 1,024).
    for n in 1..=1500u64 {
        publish(&node, "chat:2", "live").await;
        if n % 100 == 0 {
            assert_eq!(offsets(&drain(&a).await, "chat:2").len(), 100);
        }
    }
    // A rejoin from offset 0: a replay longer than a page, fed as the queue drains.
    let since = json!({"epoch": epoch, "offset": 0});
    a.handle_text(
        &json!({"type": "join_room", "id": 2, "room": "chat:2", "since": since}).to_string(),
    )
    .await;
    broker.fail.store(true, Ordering::SeqCst);
    a.handle_text(
        &json!({"type": "join_room", "id": 3, "room": "chat:2", "since": since}).to_string(),
    )
    .await;
    broker.fail.store(false, Ordering::SeqCst);
    assert_eq!(publish(&node, "chat:2", "after").await, 1502);

    let seen = drain_with_replay(&mut a).await;
    assert!(
        seen.iter().any(|f| f["type"] == "error" && f["id"] == 3),
        "no error answering the failed rejoin"
    );
    let joins: Vec<&Value> = seen.iter().filter(|f| f["type"] == "room_joined").collect();
    assert_eq!(joins.len(), 1, "{joins:?}");
    assert_eq!(joins[0]["id"], 2);
    assert!(!seen.iter().any(|f| f["type"] == "room_left"));
    assert_eq!(a.connection().queue.closing(), None);
    assert_eq!(
        offsets(&seen, "chat:2"),
        (1..=1502).collect::<Vec<u64>>(),
        "the gap, then the event of the failed read, then the next"
    );
}
