//! The registry's key-value buckets, their keys, and the two operations
//! the key-value API lacks: listing the entries under a filter (with their
//! values) and deleting a key without leaving a delete marker behind.
//!
//! Deletes go through the stream's purge with a subject filter: a key-value
//! `delete` leaves a marker message per key forever (history 1 keeps the
//! marker), which would grow the bucket by one message per connection ever
//! seen. A purge bounded by a sequence doubles as a compare-and-delete: it
//! removes the key only while its revision is at most the one read, and its
//! `purged` count tells whether this call removed anything (so a
//! `member_left` goes out once, whoever else purges the same key).

use super::nats_error;
use crate::names::{room_token, token, Names};
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{Config, Store};
use async_nats::jetstream::stream::StorageType;
use async_nats::jetstream::Context;
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{BrokerError, RoomKey, Tenant};
use std::time::Duration;

/// The header carrying a key-value operation (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";

/// The three buckets of the registry.
pub(super) struct Buckets {
    /// `<prefix>-registry`: users, connections, presence, node markers.
    pub(super) registry: Store,
    /// `<prefix>-nodes`: one key per live node, expiring when not renewed.
    pub(super) nodes: Store,
    /// `<prefix>-reapers`: who cleans up after a dead node (expiring).
    pub(super) reapers: Store,
}

/// What the buckets are made with.
pub(super) struct BucketSpec {
    pub(super) replicas: usize,
    /// A node key lives this long without a heartbeat.
    pub(super) node_life: Duration,
    /// A reaper's claim lives this long.
    pub(super) claim_life: Duration,
}

impl Buckets {
    /// Opens the buckets, creating those that do not exist.
    pub(super) async fn ensure(
        js: &Context,
        names: &Names,
        spec: &BucketSpec,
    ) -> Result<Self, BrokerError> {
        let config = |what: &str, life: Duration| Config {
            bucket: names.bucket(what),
            description: format!("herald cluster registry: {what}"),
            history: 1,
            max_age: life,
            storage: StorageType::File,
            num_replicas: spec.replicas.max(1),
            ..Config::default()
        };
        Ok(Self {
            registry: bucket(js, config("registry", Duration::ZERO)).await?,
            nodes: bucket(js, config("nodes", spec.node_life)).await?,
            reapers: bucket(js, config("reapers", spec.claim_life)).await?,
        })
    }
}

/// Opens a bucket, or creates it ([`crate::kv::open_or_create`]). A bucket
/// that exists is used as it is (another node may have made it with
/// another heartbeat: the first one made wins, and a mismatch is logged).
async fn bucket(js: &Context, config: Config) -> Result<Store, BrokerError> {
    let store = crate::kv::open_or_create(js, &config)
        .await
        .map_err(|e| nats_error("a bucket", e))?;
    let age = store.stream.cached_info().config.max_age;
    if age != config.max_age {
        tracing::warn!(
            bucket = %config.bucket,
            existing = ?age,
            wanted = ?config.max_age,
            "registry bucket made with another broker.node_heartbeat; using it as it is"
        );
    }
    Ok(store)
}

/// One entry of a listing.
pub(super) struct Listed {
    /// The key, without the bucket's prefix.
    pub(super) key: String,
    /// Its value.
    pub(super) value: Bytes,
    /// Its revision (the stream sequence).
    pub(super) revision: u64,
}

/// Every live entry whose key matches `filter` (key-value wildcards), with
/// its value: an ordered consumer delivering the last message per key,
/// read until nothing is pending. Each message must come within `wait`.
pub(super) async fn list(
    client: &Client,
    store: &Store,
    filter: &str,
    wait: Duration,
) -> Result<Vec<Listed>, BrokerError> {
    crate::commands::REGISTRY_LIST
        .time(list_untimed(client, store, filter, wait))
        .await
}

async fn list_untimed(
    client: &Client,
    store: &Store,
    filter: &str,
    wait: Duration,
) -> Result<Vec<Listed>, BrokerError> {
    let consumer = store
        .stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("herald registry listing".into()),
            filter_subject: format!("{}{filter}", store.prefix),
            replay_policy: ReplayPolicy::Instant,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| nats_error("listing keys", e))?;
    let name = consumer.cached_info().name.clone();
    let listed = if consumer.cached_info().num_pending == 0 {
        Ok(Vec::new())
    } else {
        read_listing(store, consumer, wait).await
    };
    // The server keeps an ephemeral push consumer whose subscriber went
    // away (measured on 2.9: hundreds after a few seconds of reaper
    // rounds), so each listing deletes its own.
    if let Err(e) = store.stream.delete_consumer(&name).await {
        tracing::debug!(error = %e, "deleting a listing consumer failed");
    }
    listed
}

async fn read_listing(
    store: &Store,
    consumer: async_nats::jetstream::consumer::Consumer<OrderedConfig>,
    wait: Duration,
) -> Result<Vec<Listed>, BrokerError> {
    let mut out = Vec::new();
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats_error("listing keys", e))?;
    loop {
        let message = match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(nats_error("listing keys", e)),
            Ok(None) => return Err(nats_error("listing keys", "the listing ended early")),
            Err(_) => return Err(nats_error("listing keys", "timed out")),
        };
        let info = message.info().map_err(|e| nats_error("listing keys", e))?;
        let (revision, pending) = (info.stream_sequence, info.pending);
        let removed = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if !removed {
            if let Some(key) = message.subject.as_str().strip_prefix(&store.prefix) {
                out.push(Listed {
                    key: key.to_owned(),
                    value: message.payload.clone(),
                    revision,
                });
            }
        }
        if pending == 0 {
            return Ok(out);
        }
    }
}

/// Deletes `key` without a marker; with `up_to`, only while its revision is
/// at most that. Returns how many messages went (0: it was not there, or
/// was rewritten since).
pub(super) async fn purge(
    store: &Store,
    key: &str,
    up_to: Option<u64>,
) -> Result<u64, BrokerError> {
    let purge = store
        .stream
        .purge()
        .filter(format!("{}{key}", store.prefix));
    let reply = crate::commands::REGISTRY_PURGE
        .time(async move {
            match up_to {
                // `sequence` purges what is below it.
                Some(rev) => purge.sequence(rev + 1).await,
                None => purge.await,
            }
        })
        .await;
    reply
        .map(|r| r.purged)
        .map_err(|e| nats_error("deleting a key", e))
}

/// The registry's keys (documented in `docs/architecture.md`, "The NATS
/// cluster registry").
pub(super) struct Keys {
    names: Names,
}

impl Keys {
    pub(super) fn new(names: Names) -> Self {
        Self { names }
    }

    /// A user's connections and exclusive lock: `u.<tenant>.<user>`.
    pub(super) fn user(&self, tenant: &Tenant, user: &str) -> String {
        format!("u.{}", self.names.user_key(tenant, user))
    }

    /// A connection's record: `c.<node>.<connection>`.
    pub(super) fn conn(&self, node: &str, conn: &str) -> String {
        format!("c.{}.{}", token(node), token(conn))
    }

    /// Every connection record of a node.
    pub(super) fn node_conns(&self, node: &str) -> String {
        format!("c.{}.*", token(node))
    }

    /// A presence entry: `p.<room>.<node>.<connection>`.
    pub(super) fn member(&self, room: &RoomKey, node: &str, conn: &str) -> String {
        format!("p.{}.{}.{}", room_token(room), token(node), token(conn))
    }

    /// Every presence entry of a room.
    pub(super) fn room_members(&self, room: &RoomKey) -> String {
        format!("p.{}.*.*", room_token(room))
    }

    /// Every presence entry held by a node.
    pub(super) fn node_members(&self, node: &str) -> String {
        format!("p.*.{}.*", token(node))
    }

    /// A room's key (the nodes with members, for webhooks):
    /// `r.<room>`.
    pub(super) fn room(&self, room: &RoomKey) -> String {
        format!("r.{}", room_token(room))
    }

    /// Every room's key.
    pub(super) fn all_rooms(&self) -> &'static str {
        "r.*"
    }

    /// The marker of a node that has (or had) entries: `m.<node>`.
    pub(super) fn enlisted(&self, node: &str) -> String {
        format!("m.{}", token(node))
    }

    /// Every node marker.
    pub(super) fn all_enlisted(&self) -> &'static str {
        "m.*"
    }

    /// A node's key in the nodes bucket, and its claim in the reapers one.
    pub(super) fn node(&self, node: &str) -> String {
        token(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::RoomName;

    #[test]
    fn keys_are_dotted_tokens_and_filters_select_them() {
        let keys = Keys::new(Names::new("my.app"));
        let room = RoomKey::new(
            Tenant::from_option(Some("acme")),
            RoomName::parse("chat:1").expect("room"),
        );
        let member = keys.member(&room, "node.1", "conn 1");
        let parts: Vec<&str> = member.split('.').collect();
        assert_eq!(parts.len(), 4, "{member}");
        assert_eq!(parts[0], "p");
        assert!(parts[1..].iter().all(|p| p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')));
        // The room's filter and the node's filter both select it.
        let matches = |filter: &str| {
            let f: Vec<&str> = filter.split('.').collect();
            f.len() == parts.len() && f.iter().zip(&parts).all(|(f, p)| *f == "*" || f == p)
        };
        assert!(matches(&keys.room_members(&room)));
        assert!(matches(&keys.node_members("node.1")));
        assert!(!matches(&keys.node_members("node.2")));
        let conn = keys.conn("node.1", "conn 1");
        assert_eq!(conn.split('.').count(), 3);
        assert!(keys
            .node_conns("node.1")
            .starts_with(&conn[..conn.rfind('.').unwrap_or(0)]));
        assert_eq!(
            keys.enlisted("node.1"),
            format!("m.{}", keys.node("node.1"))
        );
    }
}
