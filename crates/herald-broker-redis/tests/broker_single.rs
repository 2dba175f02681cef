//! The Redis broker against one real redis-server: two brokers ("nodes")
//! share it, as two Herald nodes would. The engine-agnostic scenarios come
//! from the conformance suite (herald-testkit's `conformance`), run through
//! the Redis engine's factory; the rest check Redis specifics.

mod broker_support;

use broker_support::{prefix, redis_engine, request, room, wait_until, Node, MINUTE};
use herald_broker_redis::keys::Keys;
use herald_core::Broker;
use herald_testkit::conformance::scenarios;
use herald_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_are_shared_and_each_node_gets_every_publication_once_in_order() {
    let server = RedisServer::start();
    scenarios::shared_offsets_and_ordered_delivery(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribed_rooms_get_nothing() {
    let server = RedisServer::start();
    scenarios::unsubscribed_rooms_get_nothing(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_positions_and_epochs() {
    let server = RedisServer::start();
    scenarios::history_and_positions(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys() {
    let server = RedisServer::start();
    scenarios::idempotency(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_reaches_other_nodes_only() {
    let server = RedisServer::start();
    scenarios::presence_reaches_other_nodes(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_races_never_leave_a_room_deaf() {
    let server = RedisServer::start();
    scenarios::subscribe_races(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_are_counted() {
    let server = RedisServer::start();
    scenarios::subscriptions_are_counted(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_announce_is_not_echoed() {
    let server = RedisServer::start();
    scenarios::presence_announce(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_of_unknown_rooms_answer_offset_zero() {
    let server = RedisServer::start();
    scenarios::reads_of_unknown_rooms_create_nothing(&redis_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_byte_budget_through_the_engine() {
    let server = RedisServer::start();
    scenarios::room_byte_budget_trims_oldest(&redis_engine(&server.url())).await;
}

fn numsub(server: &RedisServer, channel: &str) -> u64 {
    let out = server.cli(&["PUBSUB", "SHARDNUMSUB", channel]);
    let count = out.lines().last().unwrap_or_default().trim();
    count.parse().expect("a subscriber count")
}

/// The server's side of the counted subscription: one channel subscription
/// while the count is above zero, none after, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_channel_is_subscribed_exactly_while_counted() {
    let server = RedisServer::start();
    let prefix = prefix("numsub");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let r = room("n:1");
    let channel = Keys::new(&prefix).room_channel(&r);
    assert_eq!(numsub(&server, &channel), 0);
    a.broker.subscribe(&r).await.expect("subscribe");
    assert_eq!(numsub(&server, &channel), 1, "live when subscribe returns");
    for _ in 0..25 {
        let (u, s) = (a.broker.clone(), a.broker.clone());
        let (r1, r2) = (r.clone(), r.clone());
        let left = tokio::spawn(async move { u.unsubscribe(&r1).await });
        let joined = tokio::spawn(async move { s.subscribe(&r2).await });
        left.await.expect("task").expect("unsubscribe");
        joined.await.expect("task").expect("subscribe");
        assert_eq!(numsub(&server, &channel), 1, "count 1: subscribed");
    }
    a.broker.unsubscribe(&r).await.expect("unsubscribe");
    // SUNSUBSCRIBE has no reply to wait for (fred answers it when written).
    wait_until("count 0: unsubscribed", || numsub(&server, &channel) == 0).await;
    a.stop().await;
}

/// Keys expire: the stream with its ttl, the meta hash at least an hour
/// after the last publish (a quiet room later starts a new epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_expire_after_the_last_publish() {
    let server = RedisServer::start();
    let prefix = prefix("expiry");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let r = room("x:1");
    a.broker
        .publish(request(&r, 5, MINUTE))
        .await
        .expect("publish");
    let keys = Keys::new(&prefix);
    let pttl = |key: String| -> i64 { server.cli(&["PTTL", &key]).trim().parse().expect("a ttl") };
    let stream = pttl(keys.room_stream(&r));
    assert!(stream > 50_000 && stream <= 60_000, "stream ttl {stream}");
    let meta = pttl(keys.room_meta(&r));
    assert!(meta > 3_500_000 && meta <= 3_600_000, "meta ttl {meta}");
    server.cli(&["DEL", &keys.room_meta(&r)]);
    let out = a
        .broker
        .publish(request(&r, 5, MINUTE))
        .await
        .expect("publish");
    assert_eq!(out.position.offset, 1, "a lost meta starts a new epoch");
    let page = a.broker.history(&r, 0, 10).await.expect("history");
    assert_eq!(
        page.publications.len(),
        1,
        "the old epoch's entries are gone"
    );
    a.stop().await;
}

/// Scripts go by hash; the source is sent once per server that lacks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripts_run_by_hash() {
    let server = RedisServer::start();
    let a = Node::start(&server.url(), &prefix("sha"), "a").await;
    let r = room("s:1");
    for _ in 0..3 {
        a.broker
            .publish(request(&r, 5, MINUTE))
            .await
            .expect("publish");
    }
    let stats = server.cli(&["INFO", "commandstats"]);
    let calls = |command: &str| -> u64 {
        let line = stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
            .unwrap_or_default();
        let field = |name: &str| -> u64 {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map_or(0, |v| v.trim().parse().expect("a count"))
        };
        field("calls") - field("rejected_calls") - field("failed_calls")
    };
    // The publish script and the engine epoch's (checked once here).
    assert_eq!(calls("eval"), 2, "each source went once:\n{stats}");
    assert_eq!(calls("evalsha"), 2, "then the hash:\n{stats}");
    a.stop().await;
}

/// A publication whose predecessors never came over the channel makes the
/// reader fill the gap from the stream first; what history lacks is
/// skipped (and counted as missed). The gap is made by hand: entries and
/// offsets written straight into the room's keys, announced nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gaps_are_filled_from_history_before_the_next_publication() {
    let server = RedisServer::start();
    let prefix = prefix("gap");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let b = Node::start(&server.url(), &prefix, "b").await;
    let r = room("g:1");
    b.broker.subscribe(&r).await.expect("subscribe");
    let first = a
        .broker
        .publish(request(&r, 100, MINUTE))
        .await
        .expect("publish");
    wait_until("b gets offset 1", || b.sink.count(&r) == 1).await;
    let keys = Keys::new(&prefix);
    let entry = |offset: u64| {
        let message = format!(
            r#"p{{"o":{offset},"e":"{}","t":"","r":"g:1","n":"silent","d":{{"n":{offset}}},"ts":1,"id":"s{offset}","nd":"cli"}}"#,
            first.position.epoch
        );
        let id = format!("0-{offset}");
        let out = server.cli(&[
            "XADD",
            &keys.room_stream(&r),
            &id,
            "m",
            &message,
            "x",
            "99999999999999",
        ]);
        assert_eq!(out.trim(), id);
    };
    entry(2);
    entry(3);
    // Offset 4 is assigned but stored nowhere.
    server.cli(&["HINCRBY", &keys.room_meta(&r), "offset", "3"]);
    let next = a
        .broker
        .publish(request(&r, 100, MINUTE))
        .await
        .expect("publish");
    assert_eq!(next.position.offset, 5);
    wait_until("b gets offset 5", || b.sink.offsets(&r).last() == Some(&5)).await;
    assert_eq!(b.sink.offsets(&r), vec![1, 2, 3, 5]);
    {
        let pubs = b.sink.publications.lock();
        assert_eq!(pubs[1].event, "silent");
        assert_eq!(pubs[2].data.get(), r#"{"n":3}"#);
    }
    a.stop().await;
    b.stop().await;
}

/// Reads of rooms without a stream write nothing: a client reading many
/// new rooms cannot fill Redis with keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_of_unknown_rooms_create_no_keys() {
    let server = RedisServer::start();
    let prefix = prefix("readonly");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let keys = Keys::new(&prefix);
    for i in 0..20 {
        let r = room(&format!("ro:{i}"));
        let position = a.broker.position(&r).await.expect("position");
        assert_eq!(position.offset, 0);
        let page = a.broker.history(&r, 0, 10).await.expect("history");
        assert!(page.complete && page.publications.is_empty());
        assert_eq!(page.position, position);
        for key in [keys.room_meta(&r), keys.room_stream(&r)] {
            assert_eq!(server.cli(&["EXISTS", &key]).trim(), "0", "{key}");
        }
    }
    a.stop().await;
}

/// Each room's history is held to `history.max_bytes` by the publish
/// script, oldest entries first, and a resume from a trimmed offset is
/// reported incomplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_room_byte_budget_trims_oldest_entries() {
    let server = RedisServer::start();
    let prefix = prefix("bytes");
    let a = Node::start(&server.url(), &prefix, "a").await;
    let r = room("b:1");
    let data = format!("\"{}\"", "x".repeat(1000));
    for _ in 0..20 {
        let mut req = broker_support::request_with(&r, &data, 1000, MINUTE);
        req.history.max_bytes = 10_000;
        a.broker.publish(req).await.expect("publish");
    }
    let page = a.broker.history(&r, 0, 100).await.expect("history");
    let offsets: Vec<u64> = page
        .publications
        .iter()
        .map(|p| p.position.offset)
        .collect();
    assert!(!page.complete, "the oldest entries were trimmed");
    assert!(!offsets.is_empty() && offsets.len() < 20, "{offsets:?}");
    assert_eq!(offsets.last(), Some(&20), "the newest are kept");
    let resumed = a
        .broker
        .history(&r, offsets[0] - 1, 100)
        .await
        .expect("history");
    assert!(
        resumed.complete,
        "nothing missing after the oldest kept one"
    );
    let keys = Keys::new(&prefix);
    let held: usize = server
        .cli(&["HGET", &keys.room_meta(&r), "bytes"])
        .trim()
        .parse()
        .expect("a byte count");
    assert!(held > 0 && held <= 10_000, "{held}");
    let trimmed = a.broker.stats().trimmed;
    assert_eq!(
        trimmed.room_bytes as usize,
        20 - offsets.len(),
        "{trimmed:?}"
    );
    a.stop().await;
}
