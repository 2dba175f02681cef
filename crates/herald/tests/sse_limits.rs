//! SSE streams and the limits that protect a node (issue #12): a reader cut
//! as a slow consumer gives back its socket, its node connection slot and
//! its per-user slot; opening streams is rate limited per user.

mod common;

use common::cluster::connections;
use common::sse::{bearer, open_sse, stuck_sse, FEED};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reader_cut_as_slow_consumer_frees_its_slots_and_socket() {
    // One connection per node and per user: a slot kept by the cut stream
    // refuses the next open.
    let node = TestNode::start(&format!(
        "{FEED}\n[limits]\nmax_connections = 1\nmax_connections_per_user = 1\nsend_queue_messages = 16\n"
    ))
    .await;
    let token = node.user_token("stuck");
    let mut stuck = stuck_sse(&node, &format!("?rooms=feed:1&token={token}")).await;
    let listed = connections(&node, "stuck").await.expect("connections");
    assert_eq!(listed.len(), 1, "the stuck stream is open: {listed:?}");

    // Fill the kernel buffers, then the send queue, until the node cuts
    // the stream and forgets the connection.
    let payload = "x".repeat(32 * 1024);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    loop {
        for _ in 0..10 {
            node.publish("feed:1", "fill", json!({ "p": payload }))
                .await;
            published += 1;
        }
        let open = connections(&node, "stuck").await.expect("connections");
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still listed after {published} events of 32 KiB: {open:?}\n{}",
            node.log()
        );
        if published > 400 {
            // Enough to overflow; now only the grace period is left.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The same user opens again, under both limits of 1: the node slot and
    // the per-user slot are free.
    let fresh = loop {
        match open_sse(
            &node,
            "?rooms=feed:1",
            &[("Authorization", &bearer(&token))],
        )
        .await
        {
            Ok(s) => break s,
            Err((status, body)) => assert!(
                Instant::now() < deadline,
                "a new stream for the same user is still refused: {status} {body}\n{}",
                node.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(fresh);

    // And the cut socket was closed: once read, it ends.
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the cut stream's socket is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_opens_count_against_a_per_user_rate_limit() {
    let node = TestNode::start(&format!(
        "{FEED}\n[limits]\nmessages_per_second = 1\nburst = 3\n"
    ))
    .await;
    let token = node.user_token("opener");
    let auth = bearer(&token);
    let headers = [("Authorization", auth.as_str())];
    let mut refused = None;
    // The burst of 3 opens, then a refusal well before one a second refills.
    for i in 0..5 {
        match open_sse(&node, "?rooms=feed:1", &headers).await {
            Ok(s) => drop(s),
            Err(r) => {
                refused = Some((i, r));
                break;
            }
        }
    }
    let Some((i, (status, body))) = refused else {
        panic!("5 streams opened back to back with burst = 3");
    };
    assert!(i >= 3, "refused after only {i} opens: {status} {body}");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // Another user has a budget of its own.
    let other = bearer(&node.user_token("someone-else"));
    let s = open_sse(&node, "?rooms=feed:1", &[("Authorization", &other)])
        .await
        .map_err(|(s, b)| format!("{s} {b}"))
        .expect("another user opens");
    drop(s);

    // The budget refills: the user opens again within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open_sse(&node, "?rooms=feed:1", &headers).await {
            Ok(_) => break,
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err((s, b)) => panic!("open after the refill: {s} {b}"),
        }
    }
}
