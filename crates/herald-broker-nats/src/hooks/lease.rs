//! The dispatch lease: which node sends the cluster's webhooks.
//!
//! One key (`holder`) in the bucket `<prefix>-hooks-lease` (history 1,
//! `max_age` [`LEASE_TTL`]): `{"node", "cursor"}`. A node takes it with a
//! create (revision 0: only when nobody holds it, or the holder's key
//! expired), renews it every [`RENEW_EVERY`] by an update on the revision it
//! last wrote, and moves the cursor (the stream sequence of the last
//! delivered event) the same way, so a node that lost the lease can neither
//! renew it nor move the cursor. The holder trusts its lease only for
//! [`TRUST_FOR`] after the start of its last successful write, less than
//! the key's life on the server: once a renewal is late it stops handing
//! out batches before anyone else can take over.

use super::{hooks_error, NatsOutbox};
use async_nats::jetstream::kv::{self, Store, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use herald_core::BrokerError;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the lease key lives on the server without a renewal.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the holder renews (and a waiting node tries to take it).
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long the holder trusts a renewal: a margin below [`LEASE_TTL`] for
/// the request's own time and for clock rates.
const TRUST_FOR: Duration = Duration::from_millis(3_500);
/// The lease's key.
const KEY: &str = "holder";

/// The lease key's value.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    node: String,
    /// Stream sequence of the last event delivered (or dropped).
    cursor: u64,
}

/// The lease as this node holds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    /// The key's revision this node last wrote.
    pub(super) revision: u64,
    /// The cursor it wrote.
    pub(super) cursor: u64,
    /// When the write that produced `revision` was sent.
    pub(super) since: Instant,
}

impl Held {
    /// Whether the lease can still be trusted.
    pub(super) fn fresh(&self) -> bool {
        self.since.elapsed() < TRUST_FOR
    }
}

impl NatsOutbox {
    /// The lease bucket's settings.
    fn lease_config(&self) -> kv::Config {
        kv::Config {
            bucket: self.names.bucket("hooks-lease"),
            description: "Herald's webhook dispatch lease".into(),
            history: 1,
            max_age: LEASE_TTL,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..kv::Config::default()
        }
    }

    /// The lease bucket, opened (or made) on first use.
    async fn lease_store(&self) -> Result<Store, BrokerError> {
        if let Some(store) = self.lease_kv.lock().clone() {
            return Ok(store);
        }
        let store = crate::kv::open_or_create(&self.clients.jetstream, &self.lease_config())
            .await
            .map_err(|e| hooks_error("the lease bucket", e))?;
        *self.lease_kv.lock() = Some(store.clone());
        Ok(store)
    }

    /// The lease, if this node holds it and may trust it.
    pub(super) fn held(&self) -> Option<Held> {
        self.lease.lock().filter(Held::fresh)
    }

    /// Takes or renews the lease once; whether this node holds it after.
    pub(super) async fn renew(&self) -> Result<bool, BrokerError> {
        let store = self.lease_store().await?;
        // One write of the key at a time: a renewal and a cursor move on
        // the same revision would refuse each other.
        let _one = self.lease_write.lock().await;
        let held = *self.lease.lock();
        let started = Instant::now();
        let result = match held {
            Some(h) => {
                let value = self.lease_value(h.cursor)?;
                store
                    .update(KEY, value, h.revision)
                    .await
                    .map(|rev| (rev, h.cursor))
            }
            None => {
                // The cursor survives a holder's death only in the stream
                // (acked events are purged): the next event to send is
                // the stream's first.
                let cursor = self.first_sequence().await?.saturating_sub(1);
                let value = self.lease_value(cursor)?;
                match store.update(KEY, value, 0).await {
                    Ok(rev) => Ok((rev, cursor)),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        match self.own_lease(&store).await {
                            Some(adopted) => Ok(adopted),
                            None => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok((revision, cursor)) => {
                if held.is_none() {
                    tracing::info!("took the webhook dispatch lease");
                    // Whatever was handed out before goes out again.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    crate::hooks::metrics::lease_held(true);
                }
                *self.lease.lock() = Some(Held {
                    revision,
                    cursor,
                    since: started,
                });
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                if held.is_some() {
                    tracing::info!("lost the webhook dispatch lease");
                    crate::hooks::metrics::lease_lost();
                    crate::hooks::metrics::lease_held(false);
                }
                *self.lease.lock() = None;
                Ok(false)
            }
            Err(e) => {
                // Unknown outcome: kept while it can be trusted, so a slow
                // answer does not stop the holder at once.
                self.drop_stale();
                Err(hooks_error("renewing the dispatch lease", e))
            }
        }
    }

    /// Moves the cursor to `cursor` (an update on the lease's revision);
    /// whether this node still held the lease.
    pub(super) async fn advance(&self, cursor: u64) -> Result<bool, BrokerError> {
        let _one = self.lease_write.lock().await;
        let Some(held) = self.held() else {
            return Ok(false);
        };
        if cursor <= held.cursor {
            return Ok(true);
        }
        let store = self.lease_store().await?;
        let started = Instant::now();
        match store
            .update(KEY, self.lease_value(cursor)?, held.revision)
            .await
        {
            Ok(revision) => {
                *self.lease.lock() = Some(Held {
                    revision,
                    cursor,
                    since: started,
                });
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::info!("lost the webhook dispatch lease");
                crate::hooks::metrics::lease_lost();
                crate::hooks::metrics::lease_held(false);
                *self.lease.lock() = None;
                Ok(false)
            }
            Err(e) => Err(hooks_error("moving the webhook cursor", e)),
        }
    }

    /// The lease key's revision and cursor when it names this node (a
    /// write whose answer was lost, or this node's previous process).
    async fn own_lease(&self, store: &Store) -> Option<(u64, u64)> {
        let entry = store.entry(KEY).await.ok()??;
        let value: LeaseValue = serde_json::from_slice(&entry.value).ok()?;
        (value.node == self.node_id).then_some((entry.revision, value.cursor))
    }

    fn lease_value(&self, cursor: u64) -> Result<Bytes, BrokerError> {
        serde_json::to_vec(&LeaseValue {
            node: self.node_id.clone(),
            cursor,
        })
        .map(Bytes::from)
        .map_err(|e| BrokerError::Internal(format!("webhook lease JSON: {e}")))
    }

    /// Forgets a lease that can no longer be trusted.
    fn drop_stale(&self) {
        let mut lease = self.lease.lock();
        if lease.is_some_and(|h| !h.fresh()) {
            *lease = None;
            crate::hooks::metrics::lease_held(false);
        }
    }

    /// Gives the lease back (on shutdown) so another node takes over at
    /// once rather than after [`LEASE_TTL`].
    async fn release(&self) {
        let Some(held) = self.lease.lock().take() else {
            return;
        };
        crate::hooks::metrics::lease_held(false);
        let Some(store) = self.lease_kv.lock().clone() else {
            return;
        };
        // A purge bounded by the revision: only the key this node wrote.
        let purge = store
            .stream
            .purge()
            .filter(format!("{}{KEY}", store.prefix))
            .sequence(held.revision + 1);
        match tokio::time::timeout(self.command_timeout, purge).await {
            Ok(Ok(_)) => tracing::info!("gave the webhook dispatch lease back"),
            Ok(Err(e)) => tracing::debug!(error = %e, "giving the dispatch lease back failed"),
            Err(_) => tracing::debug!("giving the dispatch lease back timed out"),
        }
    }

    /// Takes the lease when it is free and renews it while held, until
    /// `cancel`; then gives it back.
    pub(super) async fn lease_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut failing = false;
        loop {
            if self.clients.is_connected() {
                let renew = tokio::time::timeout(self.command_timeout, self.renew());
                match renew.await {
                    Ok(Ok(_)) => failing = false,
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!(error = %e, "webhook dispatch lease");
                        }
                        failing = true;
                        // The bucket may be gone (NATS lost its store).
                        *self.lease_kv.lock() = None;
                    }
                    Err(_) => {
                        self.drop_stale();
                    }
                }
            } else {
                self.drop_stale();
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
        }
        self.release().await;
    }
}
