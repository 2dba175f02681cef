//! An SSE stream refused because the node cannot reach its cluster
//! registry answers 503 `unavailable`, as `/ws` does, not the per-user
//! limit's 429 (issue #13).

mod common;

use common::cluster::*;
use common::sse::open_sse;
use herald_testkit::RedisServer;
use std::process::Command;

/// Resumes a paused redis-server however the test ends.
struct Paused(String);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_open_during_a_registry_outage_is_503_unavailable() {
    let redis = RedisServer::start();
    // Heartbeats far apart keep the node ready while Redis is paused, so
    // the open reaches the registry and times out there.
    let c = TestCluster::start(
        1,
        &redis.url(),
        "[broker]\ncommand_timeout = \"300ms\"\nnode_heartbeat = \"60s\"\n",
    )
    .await;
    let node = c.node(0);
    let token = node.user_token("ann");
    let info = redis.cli(&["INFO", "server"]);
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_owned())
        .expect("redis process_id");
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP")
        .success());
    let _paused = Paused(pid);
    match open_sse(node, &format!("?token={token}"), &[]).await {
        Ok(_) => panic!("a stream opened while the registry was unreachable"),
        Err((status, body)) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
        }
    }
}
