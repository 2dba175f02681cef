use super::*;
use herald_core::{HistoryPolicy, RoomName, Tenant};
use serde_json::value::RawValue;

#[derive(Default)]
struct Collect(Mutex<Vec<Arc<Publication>>>);

impl PublicationSink for Collect {
    fn deliver(&self, publication: Arc<Publication>) {
        self.0.lock().push(publication);
    }
}

fn room(tenant: Option<&str>, name: &str) -> RoomKey {
    RoomKey::new(
        Tenant::from_option(tenant),
        RoomName::parse(name).expect("room"),
    )
}

fn request(room: RoomKey, size: usize) -> PublishRequest {
    PublishRequest {
        room,
        event: "e".into(),
        data: RawValue::from_string("{}".into()).expect("raw"),
        from: None,
        exclude_connection: None,
        idempotency_key: None,
        history: HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        },
    }
}

#[tokio::test]
async fn offsets_count_per_room_and_tenant() {
    let sink = Arc::new(Collect::default());
    let broker = MemoryBroker::new(sink.clone());
    for _ in 0..3 {
        broker
            .publish(request(room(None, "a"), 0))
            .await
            .expect("publish");
    }
    let b = broker
        .publish(request(room(None, "b"), 0))
        .await
        .expect("publish");
    let t = broker
        .publish(request(room(Some("t"), "a"), 0))
        .await
        .expect("publish");
    assert_eq!(b.position.offset, 1);
    assert_eq!(t.position.offset, 1);
    let pos = broker.position(&room(None, "a")).await.expect("position");
    assert_eq!(pos.offset, 3);
    let offsets: Vec<u64> = sink.0.lock().iter().map(|p| p.position.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3, 1, 1]);
}

#[tokio::test]
async fn idempotency_returns_first_outcome_and_delivers_once() {
    let sink = Arc::new(Collect::default());
    let broker = MemoryBroker::new(sink.clone());
    let mut req = request(room(None, "a"), 0);
    req.idempotency_key = Some("k".into());
    let first = broker.publish(req.clone()).await.expect("publish");
    let again = broker.publish(req.clone()).await.expect("publish");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.position, again.position);
    assert_eq!(sink.0.lock().len(), 1);
    let mut elsewhere = req.clone();
    elsewhere.room = room(None, "b");
    let conflict = broker.publish(elsewhere).await;
    assert!(
        matches!(conflict, Err(BrokerError::IdempotencyConflict { ref room }) if room == "a"),
        "{conflict:?}"
    );
    req.room = room(Some("other"), "a");
    let other = broker.publish(req).await.expect("publish");
    assert!(!other.duplicate, "keys are per tenant");
}

#[tokio::test]
async fn history_is_bounded_and_reports_completeness() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "h");
    for _ in 0..5 {
        broker
            .publish(request(r.clone(), 3))
            .await
            .expect("publish");
    }
    let page = broker.history(&r, 2, 100).await.expect("history");
    let offsets: Vec<u64> = page
        .publications
        .iter()
        .map(|p| p.position.offset)
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    assert!(page.complete);
    let page = broker.history(&r, 1, 100).await.expect("history");
    assert!(!page.complete, "offset 2 was trimmed");
    let page = broker.history(&r, 5, 100).await.expect("history");
    assert!(page.complete && page.publications.is_empty());
    let stats = broker.stats();
    assert_eq!(stats.stored_events, 3);
    assert!(stats.stored_bytes > 0);
}

#[tokio::test]
async fn streams_get_distinct_epochs() {
    let a = MemoryBroker::new(Arc::new(Collect::default()));
    let b = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "x");
    let pa = a.position(&r).await.expect("pos");
    let pb = b.position(&r).await.expect("pos");
    assert_ne!(pa.epoch, pb.epoch);
    assert_eq!(pa.offset, 0);
}
