//! A broadcast whose publish fails part way (issue #13) answers the error
//! with the rooms already published and those not published, so nothing
//! already delivered is lost to the caller.

mod common;

use common::cluster::*;
use common::*;
use herald_testkit::RedisServer;
use serde_json::json;

#[tokio::test]
async fn a_broadcast_that_fails_part_way_returns_what_was_published() {
    let redis = RedisServer::start();
    let c = TestCluster::start(1, &redis.url(), "").await;
    let node = c.node(0);
    // Room `chat:b` exists, then its keys are made strings, so the publish
    // script fails on it (WRONGTYPE) while `chat:a` publishes as usual.
    node.publish("chat:b", "e", json!(0)).await;
    let pattern = format!("{}:room:*chat:b*", c.prefix());
    let keys = redis.cli(&["--scan", "--pattern", &pattern]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(!keys.is_empty(), "no keys under {pattern}");
    for key in keys {
        redis.cli(&["DEL", key]);
        redis.cli(&["SET", key, "not a room"]);
    }
    let (status, body) = node
        .api(
            "POST",
            "/api/v1/broadcast",
            Some(ADMIN_KEY),
            Some(json!({"rooms": ["chat:a", "chat:b", "chat:c"], "event": "e", "data": 1})),
        )
        .await;
    assert!(status >= 500, "{status} {body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{body}");
    assert_eq!(results[0]["room"], "chat:a", "{body}");
    assert_eq!(results[0]["offset"], 1, "{body}");
    assert_eq!(body["unpublished"], json!(["chat:b", "chat:c"]), "{body}");
    // The engine's text (WRONGTYPE ...) is not in the answer.
    assert!(!body.to_string().contains("WRONGTYPE"), "{body}");
}
