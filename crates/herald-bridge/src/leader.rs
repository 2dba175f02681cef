//! Which node reads an ordered NATS bridge: the holder of a lock in the
//! key-value bucket `<prefix>-bridge-leaders` on the bridge's NATS server,
//! one key per bridge. The bucket's `max_age` is the lock's life
//! (`bridge.nats_leader_ttl`): `create` takes a free key, its holder
//! renews it with `update` at the revision it holds (every third of the
//! life), and a dead holder's key ages out, so another node takes it within
//! about 1.3 lives.
//!
//! A holder that cannot renew stops when its lock may have expired
//! (measured from before its last successful write, with a tenth of margin).

use async_nats::jetstream::kv::{Config, Store};
use async_nats::jetstream::stream::StorageType;
use async_nats::jetstream::{self, Context};
use async_nats::Client;
use herald_engine_kit::backoff::Backoff;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Until when this node may act as the leader (`None`: it is not).
pub(crate) type Lease = watch::Receiver<Option<Instant>>;

/// Whether this node may bridge now.
pub(crate) fn leading(lease: &Lease) -> bool {
    lease.borrow().is_some_and(|until| Instant::now() < until)
}

/// One bridge's lock.
pub(crate) struct NatsLock {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    /// The bridge's label (letters, digits, `-`, `_`: a valid key).
    pub(crate) key: String,
    pub(crate) node_id: String,
    pub(crate) ttl: Duration,
    pub(crate) command_timeout: Duration,
}

impl NatsLock {
    /// Holds or waits for the lock until cancelled, telling `lease` until
    /// when this node leads; releases it on the way out.
    pub(crate) async fn run(
        self,
        lease: watch::Sender<Option<Instant>>,
        cancel: CancellationToken,
    ) {
        let mut js = jetstream::new(self.client.clone());
        js.set_timeout(self.command_timeout);
        let bucket_name = format!("{}-bridge-leaders", self.prefix);
        let mut store: Option<Store> = None;
        let mut held: Option<u64> = None;
        let mut backoff = Backoff::default();
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let kv = match &store {
                Some(kv) => kv.clone(),
                None => match bucket(&js, &bucket_name, self.ttl).await {
                    Ok(kv) => {
                        backoff.reset();
                        store = Some(kv.clone());
                        kv
                    }
                    Err(e) => {
                        // Also what a server without JetStream answers.
                        tracing::warn!(bucket = %bucket_name, bridge = %self.key, error = %e,
                            "bridge: no leader lock bucket: an ordered NATS bridge needs JetStream on the \
                             bridges' NATS server (or set `ordered = false` on it); retrying");
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let value = bytes::Bytes::from(self.node_id.clone());
            let answer = match held {
                Some(revision) => kv
                    .update(&self.key, value, revision)
                    .await
                    .map(Some)
                    .or_else(|e| match e.kind() {
                        async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                        _ => Err(e.to_string()),
                    }),
                None => kv
                    .create(&self.key, value)
                    .await
                    .map(Some)
                    .or_else(|e| match e.kind() {
                        async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => Ok(None),
                        _ => Err(e.to_string()),
                    }),
            };
            match answer {
                Ok(Some(revision)) => {
                    if held.is_none() {
                        info!(node = %self.node_id, bridge = %self.key, "bridge: this node now reads the bridge (leader)");
                    }
                    held = Some(revision);
                    let _ = lease.send(Some(started + self.ttl * 9 / 10));
                }
                Ok(None) => {
                    if held.is_some() {
                        info!(node = %self.node_id, bridge = %self.key, "bridge: another node leads the bridge");
                    }
                    held = None;
                    let _ = lease.send(None);
                }
                Err(e) => {
                    // The bucket may be gone (a server restarted without
                    // its store): open it again next time. The lease lapses
                    // by itself.
                    tracing::debug!(bridge = %self.key, error = %e, "bridge: leader lock not written");
                    store = None;
                }
            }
        }
        let _ = lease.send(None);
        if let (Some(revision), Some(kv)) = (held, store) {
            // Hand over now rather than after the lock's life.
            let release = kv.purge_expect_revision(&self.key, Some(revision));
            let _ = tokio::time::timeout(self.command_timeout, release).await;
        }
    }
}

/// Opens the leaders' bucket, or creates it
/// ([`herald_broker_nats::kv::open_or_create`]). A bucket that exists is
/// used as it is (the first node's TTL wins).
async fn bucket(js: &Context, name: &str, ttl: Duration) -> Result<Store, String> {
    let config = Config {
        bucket: name.to_owned(),
        description: "herald bridge leader locks".into(),
        history: 1,
        max_age: ttl,
        storage: StorageType::File,
        ..Config::default()
    };
    herald_broker_nats::kv::open_or_create(js, &config)
        .await
        .map_err(|e| e.to_string())
}
