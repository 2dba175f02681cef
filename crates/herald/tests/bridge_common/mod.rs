//! What the bridge tests share: a NATS client with the `JOBS` stream a
//! team's services would already have, and the subscriptions a server
//! holds (core NATS and pub/sub keep nothing for a subscriber not there
//! yet, so tests wait for the bridges' subscriptions before publishing).

use crate::common::TestNode;
use async_nats::jetstream;
use herald_testkit::NatsServer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The longest wait for anything a bridge test expects.
pub const WAIT: Duration = Duration::from_secs(15);

/// A NATS client and JetStream context, with the `JOBS` stream the
/// durable mapping reads (a team's existing stream).
pub async fn nats_with_jobs_stream(nats: &NatsServer) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "JOBS".into(),
        subjects: vec!["jobs.*.done".into()],
        ..Default::default()
    })
    .await
    .expect("create the JOBS stream");
    (client, js)
}

/// Subscriptions on `subject` the server holds (from `/subsz`).
pub fn nats_subscriptions(nats: &NatsServer, subject: &str) -> usize {
    let Some(body) = nats.monitor("/subsz?subs=1&limit=1000") else {
        return 0;
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["subscriptions_list"]
        .as_array()
        .map(|subs| subs.iter().filter(|s| s["subject"] == subject).count())
        .unwrap_or(0)
}

/// The samples of `name` in a node's `/metrics`, by their labels.
// Each test binary compiles this module; not every one reads metrics.
#[allow(dead_code)]
pub async fn samples(node: &TestNode, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (_, text) = node.get("/metrics").await;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        if let Ok(v) = value.trim().parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}
