use super::*;
use herald_core::{HistoryPolicy, RoomName, Tenant};
use serde_json::value::RawValue;

#[derive(Default)]
struct Collect(Mutex<Vec<Arc<Publication>>>);

impl PublicationSink for Collect {
    fn deliver(&self, publication: Arc<Publication>) -> Writes {
        self.0.lock().push(publication);
        Writes::none()
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
            max_bytes: 0,
        },
        trace: None,
        critical: false,
        conflation_key: None,
    }
}

/// A publish of `payload_bytes` of JSON string into `room`.
fn sized(room: RoomKey, size: usize, max_bytes: usize, payload_bytes: usize) -> PublishRequest {
    let mut req = request(room, size);
    req.history.max_bytes = max_bytes;
    req.data = RawValue::from_string(format!("\"{}\"", "x".repeat(payload_bytes))).expect("raw");
    req
}

async fn offsets(broker: &MemoryBroker, r: &RoomKey, since: u64) -> (Vec<u64>, bool) {
    let page = broker.history(r, since, 10_000).await.expect("history");
    let offsets = page
        .publications
        .iter()
        .map(|p| p.position.offset)
        .collect();
    (offsets, page.complete)
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

/// Offsets and completeness of a read of `limit` events after `since`.
async fn page(broker: &MemoryBroker, r: &RoomKey, since: u64, limit: usize) -> (Vec<u64>, bool) {
    let page = broker.history(r, since, limit).await.expect("history");
    let offsets = page
        .publications
        .iter()
        .map(|p| p.position.offset)
        .collect();
    (offsets, page.complete)
}

#[tokio::test]
async fn reads_find_the_first_event_after_since_at_every_edge() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "edges");
    assert_eq!(page(&broker, &r, 0, 10).await, (vec![], true), "no stream");
    for _ in 0..10 {
        broker
            .publish(request(r.clone(), 5))
            .await
            .expect("publish");
    }
    // 6..=10 are stored.
    let all = vec![6, 7, 8, 9, 10];
    assert_eq!(page(&broker, &r, 0, 10).await, (all.clone(), false));
    assert_eq!(page(&broker, &r, 4, 10).await, (all.clone(), false));
    assert_eq!(page(&broker, &r, 5, 10).await, (all, true));
    assert_eq!(page(&broker, &r, 6, 10).await, (vec![7, 8, 9, 10], true));
    assert_eq!(page(&broker, &r, 7, 2).await, (vec![8, 9], false), "cut");
    assert_eq!(page(&broker, &r, 9, 10).await, (vec![10], true));
    assert_eq!(
        page(&broker, &r, 10, 10).await,
        (vec![], true),
        "at the head"
    );
    assert_eq!(page(&broker, &r, 11, 10).await, (vec![], false), "beyond");
    assert_eq!(page(&broker, &r, u64::MAX, 10).await, (vec![], false));
}

#[tokio::test]
async fn reads_across_an_event_that_was_not_stored_report_the_hole() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "hole");
    for size in [10, 10, 10, 0, 10, 10] {
        broker
            .publish(request(r.clone(), size))
            .await
            .expect("publish");
    }
    // 1, 2, 3, 5 and 6 are stored: 4 went out with a history size of 0.
    assert_eq!(page(&broker, &r, 0, 10).await, (vec![1, 2, 3, 5, 6], false));
    assert_eq!(page(&broker, &r, 2, 10).await, (vec![3, 5, 6], false));
    assert_eq!(page(&broker, &r, 3, 10).await, (vec![5, 6], false));
    assert_eq!(page(&broker, &r, 4, 10).await, (vec![5, 6], true));
    assert_eq!(page(&broker, &r, 5, 10).await, (vec![6], true));
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

#[tokio::test]
async fn reads_of_unknown_rooms_create_nothing_and_agree_with_the_first_publish() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let told = broker.position(&room(None, "p0")).await.expect("pos");
    for i in 0..100 {
        let r = room(None, &format!("p{i}"));
        let pos = broker.position(&r).await.expect("pos");
        assert_eq!(pos.offset, 0);
        let page = broker.history(&r, 0, 10).await.expect("history");
        assert!(page.complete && page.publications.is_empty());
        assert_eq!(page.position, pos);
    }
    assert_eq!(broker.stats().streams, 0, "reads created streams");
    // A reader told (epoch, 0) sees the room's first event in that epoch.
    let first = broker
        .publish(request(room(None, "p0"), 10))
        .await
        .expect("publish");
    assert_eq!(first.position.epoch, told.epoch);
    assert_eq!(first.position.offset, 1);
}

#[tokio::test]
async fn sweep_forgets_streams_without_history_or_members_with_a_new_epoch() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "quiet");
    let first = broker
        .publish(request(r.clone(), 0))
        .await
        .expect("publish");
    let kept = room(None, "joined");
    broker.subscribe(&kept).await.expect("subscribe");
    assert_eq!(broker.stats().streams, 2);
    broker.sweep();
    assert_eq!(broker.stats().streams, 1, "the member's room stays");
    // The room's next stream cannot reuse the old stream's positions.
    let again = broker
        .publish(request(r.clone(), 0))
        .await
        .expect("publish");
    assert_eq!(again.position.offset, 1);
    assert_ne!(again.position.epoch, first.position.epoch);
    // The last member leaving a room with nothing to replay forgets it.
    broker.unsubscribe(&kept).await.expect("unsubscribe");
    broker.sweep();
    assert_eq!(broker.stats().streams, 0);
}

#[tokio::test]
async fn streams_with_history_go_once_their_ttl_passed() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "short");
    let mut req = request(r.clone(), 10);
    req.history.ttl = Duration::from_millis(50);
    let published = broker.publish(req).await.expect("publish");
    broker.sweep();
    assert_eq!(broker.stats().streams, 1, "history still live");
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.stats().streams > 0 {
        assert!(Instant::now() < deadline, "stream never swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
        broker.sweep();
    }
    assert_eq!(broker.stats().trimmed.ttl, 1);
    // Resuming from the forgotten stream is not a recovery.
    let page = broker
        .history(&r, published.position.offset, 10)
        .await
        .expect("history");
    assert_ne!(page.position.epoch, published.position.epoch);
}

#[tokio::test]
async fn room_byte_budget_trims_oldest_and_resume_sees_the_gap() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    let r = room(None, "big");
    for _ in 0..20 {
        broker
            .publish(sized(r.clone(), 1000, 10_000, 1000))
            .await
            .expect("publish");
    }
    let stats = broker.stats();
    assert!(stats.stored_bytes <= 10_000, "{stats:?}");
    assert!(
        stats.stored_events > 0 && stats.stored_events < 20,
        "{stats:?}"
    );
    assert_eq!(stats.trimmed.room_bytes as usize, 20 - stats.stored_events);
    assert_eq!(stats.trimmed.size, 0);
    let (kept, complete) = offsets(&broker, &r, 0).await;
    assert_eq!(kept.last(), Some(&20), "newest kept");
    assert!(!complete, "events 1.. were trimmed");
    let (_, complete) = offsets(&broker, &r, kept[0] - 1).await;
    assert!(
        complete,
        "from the oldest kept event on, nothing is missing"
    );
    // An event over the whole budget clears the room rather than leave a
    // gap behind the older ones.
    broker
        .publish(sized(r.clone(), 1000, 10_000, 20_000))
        .await
        .expect("publish");
    let (kept, complete) = offsets(&broker, &r, 20).await;
    assert!(kept.is_empty() && !complete);
    assert_eq!(broker.stats().stored_bytes, 0);
}

#[tokio::test]
async fn size_trims_are_counted() {
    let broker = MemoryBroker::new(Arc::new(Collect::default()));
    for _ in 0..5 {
        broker
            .publish(request(room(None, "s"), 2))
            .await
            .expect("publish");
    }
    assert_eq!(broker.stats().trimmed.size, 3);
}

#[tokio::test]
async fn node_budget_trims_the_oldest_events_of_any_room() {
    let budget = 40_000;
    let broker = MemoryBroker::new(Arc::new(Collect::default())).with_history_budget(budget);
    let rooms: Vec<RoomKey> = (0..30).map(|i| room(None, &format!("r{i}"))).collect();
    for r in &rooms {
        for _ in 0..3 {
            broker
                .publish(sized(r.clone(), 100, 1 << 20, 1000))
                .await
                .expect("publish");
        }
        let stats = broker.stats();
        assert!(stats.stored_bytes <= budget, "{stats:?}");
        assert_eq!(stats.stored_bytes, broker.acct.bytes());
    }
    let stats = broker.stats();
    assert!(stats.trimmed.total_bytes > 0, "{stats:?}");
    assert_eq!(stats.trimmed.room_bytes + stats.trimmed.size, 0);
    // The oldest room lost its events (and says so on resume); the newest
    // kept all of its own.
    let (first, complete) = offsets(&broker, &rooms[0], 0).await;
    assert!(first.is_empty() && !complete);
    let (last, complete) = offsets(&broker, &rooms[29], 0).await;
    assert_eq!(last, vec![1, 2, 3]);
    assert!(complete);
}

/// A sink whose socket writes publish into the room again, as a write that
/// wakes a publishing client could: they must run with the room's lock
/// released (the old engine ran them inside `deliver`, under the lock, where
/// this publish deadlocked on the room's mutex).
#[derive(Default)]
struct PublishOnWrite {
    broker: std::sync::OnceLock<std::sync::Weak<MemoryBroker>>,
    delivered: Mutex<Vec<u64>>,
    /// Whether a write found the room's lock held.
    locked_during_write: Arc<std::sync::atomic::AtomicBool>,
}

impl PublicationSink for PublishOnWrite {
    fn deliver(&self, publication: Arc<Publication>) -> Writes {
        self.delivered.lock().push(publication.position.offset);
        let Some(broker) = self.broker.get().and_then(std::sync::Weak::upgrade) else {
            return Writes::none();
        };
        let locked = self.locked_during_write.clone();
        let room = publication.room.clone();
        let again = publication.position.offset < 3;
        Writes::new(move || {
            let stream = broker.existing(&room).expect("the room's stream");
            let held = stream.try_lock().is_none();
            drop(stream);
            if held {
                locked.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            if again {
                let (outcome, writes) = broker.publish_locked(request(room, 10), None);
                outcome.expect("a publish from the write path");
                writes.run();
            }
        })
    }
}

#[test]
fn socket_writes_run_after_the_room_lock_is_released() {
    let sink = Arc::new(PublishOnWrite::default());
    let broker = Arc::new(MemoryBroker::new(sink.clone()));
    sink.broker.set(Arc::downgrade(&broker)).expect("set once");
    let r = room(None, "r");
    // On a thread, so a deadlock fails the test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let publisher = broker.clone();
    let room_key = r.clone();
    std::thread::spawn(move || {
        let (outcome, writes) = publisher.publish_locked(request(room_key, 10), None);
        writes.run();
        let _ = done_tx.send(outcome.map(|o| o.position.offset));
    });
    let first = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a publish from the sink's write path deadlocked on the room lock");
    assert_eq!(first.expect("publish"), 1);
    assert!(
        !sink
            .locked_during_write
            .load(std::sync::atomic::Ordering::SeqCst),
        "the sink's writes ran while the broker held the room's lock"
    );
    assert_eq!(*sink.delivered.lock(), vec![1, 2, 3]);
}
