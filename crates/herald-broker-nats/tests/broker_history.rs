//! History read back from the stream: the room's size, ttl and byte budget
//! (as of its last message) applied on read, and reads that write nothing.

mod broker_support;

use broker_support::{prefix, request, request_with, room, Node, MINUTE};
use herald_core::Broker;
use herald_testkit::NatsServer;
use std::time::Duration;

fn offsets(page: &herald_core::HistoryPage) -> Vec<u64> {
    page.publications
        .iter()
        .map(|p| p.position.offset)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn size_ttl_and_bytes_apply_on_read() {
    let server = NatsServer::start();
    let a = Node::start(&server.url(), &prefix("history"), "a").await;

    // Size: the last 3 of 10.
    let r = room("h:size");
    for _ in 0..10 {
        a.broker
            .publish(request(&r, 3, MINUTE))
            .await
            .expect("publish");
    }
    let page = a.broker.history(&r, 0, 100).await.expect("history");
    assert_eq!(offsets(&page), vec![8, 9, 10]);
    assert!(!page.complete);
    let page = a.broker.history(&r, 8, 100).await.expect("history");
    assert_eq!(offsets(&page), vec![9, 10]);
    assert!(page.complete);
    let page = a.broker.history(&r, 0, 2).await.expect("history");
    assert_eq!(offsets(&page), vec![8, 9], "the limit takes the oldest");
    // The last message's policy rules: a larger size shows more again.
    a.broker
        .publish(request(&r, 6, MINUTE))
        .await
        .expect("publish");
    let page = a.broker.history(&r, 0, 100).await.expect("history");
    assert_eq!(offsets(&page), vec![6, 7, 8, 9, 10, 11]);

    // Size 0: offsets count, nothing is kept.
    let r0 = room("h:none");
    a.broker
        .publish(request(&r0, 0, MINUTE))
        .await
        .expect("publish");
    let page = a.broker.history(&r0, 0, 100).await.expect("history");
    assert_eq!(page.position.offset, 1);
    assert!(page.publications.is_empty() && !page.complete);

    // Ttl: each event leaves history when its own ttl ends.
    let rt = room("h:ttl");
    a.broker
        .publish(request(&rt, 10, Duration::from_millis(300)))
        .await
        .expect("publish");
    a.broker
        .publish(request(&rt, 10, MINUTE))
        .await
        .expect("publish");
    let page = a.broker.history(&rt, 0, 100).await.expect("history");
    assert_eq!(offsets(&page), vec![1, 2]);
    let broker = a.broker.clone();
    let expired = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = expired.clone();
    let reader = tokio::spawn(async move {
        loop {
            let page = broker.history(&rt, 0, 100).await.expect("history");
            if page.publications.len() == 1 {
                *seen.lock() = offsets(&page);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the first event expires")
        .expect("task");
    assert_eq!(*expired.lock(), vec![2]);

    // Bytes: the newest events within the budget, contiguous.
    let rb = room("h:bytes");
    let data = format!("\"{}\"", "x".repeat(400));
    for _ in 0..10 {
        let mut req = request_with(&rb, &data, 100, MINUTE);
        req.history.max_bytes = 2_000;
        a.broker.publish(req).await.expect("publish");
    }
    let page = a.broker.history(&rb, 0, 100).await.expect("history");
    let kept = offsets(&page);
    assert!(kept.len() >= 2 && kept.len() < 5, "{kept:?}");
    assert_eq!(kept.last(), Some(&10));
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    let trimmed = a.broker.stats().trimmed;
    assert_eq!(trimmed.room_bytes as usize, 10 - kept.len(), "{trimmed:?}");
    a.stop().await;
}

/// A long stream: the page's first event is found by a binary search over
/// stream sequences, with other rooms' messages in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_start_at_the_right_event_in_a_long_interleaved_stream() {
    let server = NatsServer::start();
    let a = Node::start(&server.url(), &prefix("long"), "a").await;
    let (r, other) = (room("l:1"), room("l:2"));
    for _ in 0..200 {
        a.broker
            .publish(request(&r, 1000, MINUTE))
            .await
            .expect("publish");
        a.broker
            .publish(request(&other, 1000, MINUTE))
            .await
            .expect("publish");
    }
    for since in [0, 1, 57, 150, 199] {
        let page = a.broker.history(&r, since, 5).await.expect("history");
        let want: Vec<u64> = (since + 1..=(since + 5).min(200)).collect();
        assert_eq!(offsets(&page), want, "since {since}");
        assert!(page.publications.iter().all(|p| p.room == r));
    }
    let page = a.broker.history(&r, 200, 5).await.expect("history");
    assert!(page.publications.is_empty() && page.complete);
    a.stop().await;
}
