//! Isolation under concurrency: 50 users, 50 concurrent publishers, each
//! user receiving exactly their own `user:` events, in order (issue #2).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_receive_only_their_own_events_under_concurrent_publishing() {
    const USERS: usize = 50;
    const PER_USER: usize = 20;
    let node = TestNode::start("").await;
    let mut clients = Vec::new();
    for n in 0..USERS {
        let (c, auth) = node.connect_user(&format!("user{n}")).await;
        assert_eq!(auth["user_id"], format!("user{n}"));
        clients.push(c);
    }
    // Every user starts reading before anything is published.
    let mut readers = Vec::new();
    for (n, mut c) in clients.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let evs = c
                .collect_type("event", PER_USER, Duration::from_secs(60))
                .await;
            // Anything more would be a leak: it would come before the
            // sentinel published once every publisher is done.
            let next = c.expect_next_type("event").await;
            (n, evs, next)
        }));
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(USERS));
    let mut publishers = Vec::new();
    for n in 0..USERS {
        let url = node.url();
        let barrier = barrier.clone();
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            barrier.wait().await;
            for seq in 0..PER_USER {
                let r = http
                    .post(format!("{url}/api/v1/publish"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"room": format!("user:user{n}"), "event": "mine", "data": {"owner": n, "seq": seq}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(r.status().as_u16(), 200, "publish for user{n}");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    for n in 0..USERS {
        node.publish(&format!("user:user{n}"), "sentinel", json!({}))
            .await;
    }
    for r in readers {
        let (n, evs, extra) = r.await.expect("reader");
        let room = format!("user:user{n}");
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e["room"], room.as_str(), "user{n} got a foreign event: {e}");
            assert_eq!(e["data"]["owner"], n, "user{n} got a foreign payload: {e}");
            assert_eq!(e["data"]["seq"], i, "user{n} order: {e}");
            assert_eq!(e["offset"], i + 1, "user{n} offsets: {e}");
        }
        assert_eq!(
            (&extra["room"], &extra["event"]),
            (&json!(room), &json!("sentinel")),
            "user{n} received an extra event: {extra}"
        );
    }
}
