//! A user's key (`u.<tenant>.<user>`): their connections and exclusive
//! lock holder, changed only by compare-and-set on the key's revision. Two
//! nodes admitting at once both read revision N; one writes N+1, the
//! other's write is refused and it decides again on what is now there, so
//! the per-user policy holds cluster-wide.

use super::store::{purge, Buckets};
use super::transitions::PendingDoc;
use super::{json_error, nats_error, NatsCluster};
use async_nats::jetstream::kv::UpdateErrorKind;
use bytes::Bytes;
use herald_core::{BrokerError, ConnectionRef, HookEvent, PerUserPolicy, Tenant};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Attempts of one compare-and-set before giving up (each failed one means
/// another node changed the key meanwhile, so this bounds contention, not
/// time: every attempt is bounded by the command timeout).
pub(super) const CAS_ATTEMPTS: usize = 64;

/// A user's key: their connections and exclusive lock holder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct UserDoc {
    /// Connection id → where and since when.
    #[serde(default)]
    pub(super) conns: BTreeMap<String, UserConn>,
    /// The connection holding the user's `exclusive` session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) lock: Option<String>,
    /// Webhook events of this key's transitions not yet published (see
    /// `transitions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) pending: Vec<HookEvent>,
}

impl PendingDoc for UserDoc {
    fn pending(&mut self) -> &mut Vec<HookEvent> {
        &mut self.pending
    }

    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.lock.is_none() && self.pending.is_empty()
    }
}

/// One connection in its user's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UserConn {
    /// Node holding it.
    pub(super) node: String,
    /// When it connected (ms), for `evict_oldest`.
    pub(super) at: u64,
}

/// What a change to a user's key decided.
pub(super) enum Change<T> {
    /// Write the changed document, then answer `T`.
    Write(T),
    /// Leave the key as it is and answer `T`.
    Keep(T),
}

impl NatsCluster {
    /// Applies `change` to a user's key by compare-and-set, reading it again
    /// and deciding again after every conflict.
    ///
    /// The first attempt may skip the read: it starts from the document
    /// this node last wrote (kept while the user has connections here), or,
    /// with `absent_likely`, from an absent key. A wrong guess costs one
    /// refused write; a guess that says "nothing to change" is read again
    /// before it is believed.
    ///
    /// A change that gives the user their first connection, or takes their
    /// last, writes `user.online` / `user.offline` into the key with it (when
    /// enabled); events pending in the key are then published (see
    /// `transitions`). A failed publish does not fail the change: the
    /// events stay in the key, and [`NatsCluster::user_unflushed`] says so.
    pub(super) async fn update_user<T>(
        &self,
        b: &Buckets,
        tenant: &Tenant,
        user: &str,
        absent_likely: bool,
        mut change: impl FnMut(&mut UserDoc) -> Change<T>,
    ) -> Result<T, BrokerError> {
        let key_string = self.keys.user(tenant, user);
        let key = key_string.as_str();
        let (answer, pending) = self
            .cas_user(b, key, tenant, user, absent_likely, &mut change)
            .await?;
        if !pending.is_empty() {
            // Kept in the key on failure; the caller carries on.
            let _ = self.flush_user(b, tenant, user, &pending).await;
        }
        Ok(answer)
    }

    /// The compare-and-set loop of [`NatsCluster::update_user`]: the answer
    /// and the events pending in the key as left.
    async fn cas_user<T>(
        &self,
        b: &Buckets,
        key: &str,
        tenant: &Tenant,
        user: &str,
        absent_likely: bool,
        change: &mut impl FnMut(&mut UserDoc) -> Change<T>,
    ) -> Result<(T, Vec<HookEvent>), BrokerError> {
        let hint = self.hints.lock().get(key).cloned();
        let mut guess = match hint {
            Some((doc, rev)) => Some((doc, Some(rev))),
            None if absent_likely => Some((UserDoc::default(), None)),
            None => None,
        };
        for _ in 0..CAS_ATTEMPTS {
            let (mut doc, revision, guessed) = match guess.take() {
                Some((doc, rev)) => (doc, rev, true),
                None => {
                    let (doc, rev) = self.read_doc::<UserDoc>(b, key).await?;
                    (doc, rev, false)
                }
            };
            let had = !doc.conns.is_empty();
            let answer = match change(&mut doc) {
                Change::Keep(_) if guessed => continue,
                Change::Keep(answer) => return Ok((answer, doc.pending)),
                Change::Write(answer) => answer,
            };
            let has = !doc.conns.is_empty();
            if had != has {
                if let Some(event) = self.user_event(tenant, user, has) {
                    doc.pending.push(event);
                }
            }
            let written = if doc.is_empty() {
                match revision {
                    None => Some(None),
                    Some(rev) => (purge(&b.registry, key, Some(rev)).await? > 0).then_some(None),
                }
            } else {
                let value = Bytes::from(serde_json::to_vec(&doc).map_err(json_error)?);
                // Revision 0 expects no message under the key: a create
                // (without `create`'s extra read for delete markers, which
                // this registry never writes).
                match b.registry.update(key, value, revision.unwrap_or(0)).await {
                    Ok(rev) => Some(Some(rev)),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                    Err(e) => {
                        self.hints.lock().remove(key);
                        return Err(nats_error("writing a user", e));
                    }
                }
            };
            match written {
                Some(rev) => {
                    let pending = doc.pending.clone();
                    self.remember(key, doc, rev);
                    return Ok((answer, pending));
                }
                None => {
                    self.hints.lock().remove(key);
                }
            }
        }
        self.hints.lock().remove(key);
        Err(BrokerError::Unavailable(format!(
            "registry key {key}: still changing after {CAS_ATTEMPTS} attempts"
        )))
    }

    /// Keeps what this node wrote to a user's key as the next write's
    /// guess, while the user has connections here (so the hints stay as
    /// many as the node's users).
    fn remember(&self, key: &str, doc: UserDoc, revision: Option<u64>) {
        let mut hints = self.hints.lock();
        match revision {
            Some(rev) if doc.conns.values().any(|c| c.node == self.node_id) => {
                hints.insert(key.to_owned(), (doc, rev));
            }
            _ => {
                hints.remove(key);
            }
        }
    }
}

/// The per-user policy applied to a user's document: `None` when refused,
/// else the connections displaced (removed from the document).
pub(super) fn admit_into(
    doc: &mut UserDoc,
    id: &str,
    entry: &UserConn,
    policy: PerUserPolicy,
    max: usize,
) -> Change<Option<Vec<ConnectionRef>>> {
    let mut displaced = Vec::new();
    let others = doc.conns.keys().filter(|k| k.as_str() != id).count();
    match policy {
        PerUserPolicy::Reject => {
            if others >= max {
                return Change::Keep(None);
            }
        }
        PerUserPolicy::EvictOldest => {
            let excess = (others + 1).saturating_sub(max);
            if excess > 0 {
                let mut list: Vec<(u64, String)> = doc
                    .conns
                    .iter()
                    .filter(|(k, _)| k.as_str() != id)
                    .map(|(k, c)| (c.at, k.clone()))
                    .collect();
                list.sort();
                for (_, victim) in list.into_iter().take(excess) {
                    if let Some(c) = doc.conns.remove(&victim) {
                        displaced.push(ConnectionRef {
                            node_id: c.node,
                            connection_id: victim,
                        });
                    }
                }
            }
        }
        PerUserPolicy::Exclusive => {
            let victims: Vec<String> = doc
                .conns
                .keys()
                .filter(|k| k.as_str() != id)
                .cloned()
                .collect();
            for victim in victims {
                if let Some(c) = doc.conns.remove(&victim) {
                    displaced.push(ConnectionRef {
                        node_id: c.node,
                        connection_id: victim,
                    });
                }
            }
            if let Some(prev) = doc.lock.replace(id.to_owned()) {
                // A lock holder without a record: its node is unknown, so
                // the close goes to every node.
                if prev != id && !displaced.iter().any(|d| d.connection_id == prev) {
                    displaced.push(ConnectionRef {
                        node_id: String::new(),
                        connection_id: prev,
                    });
                }
            }
        }
    }
    doc.conns.insert(id.to_owned(), entry.clone());
    Change::Write(Some(displaced))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(entries: &[(&str, &str, u64)]) -> UserDoc {
        UserDoc {
            conns: entries
                .iter()
                .map(|(id, node, at)| {
                    (
                        (*id).to_owned(),
                        UserConn {
                            node: (*node).to_owned(),
                            at: *at,
                        },
                    )
                })
                .collect(),
            lock: None,
            pending: Vec::new(),
        }
    }

    fn conn(node: &str, at: u64) -> UserConn {
        UserConn {
            node: node.into(),
            at,
        }
    }

    #[test]
    fn reject_refuses_at_the_limit_and_readmits_the_same_id() {
        let mut d = doc(&[("a", "n1", 1), ("b", "n2", 2)]);
        assert!(matches!(
            admit_into(&mut d, "c", &conn("n1", 3), PerUserPolicy::Reject, 2),
            Change::Keep(None)
        ));
        assert!(matches!(
            admit_into(&mut d, "b", &conn("n2", 2), PerUserPolicy::Reject, 2),
            Change::Write(Some(v)) if v.is_empty()
        ));
    }

    #[test]
    fn evict_oldest_takes_the_oldest_and_exclusive_takes_all_and_the_lock() {
        let mut d = doc(&[("a", "n1", 5), ("b", "n2", 1), ("c", "n1", 3)]);
        let Change::Write(Some(gone)) =
            admit_into(&mut d, "d", &conn("n2", 9), PerUserPolicy::EvictOldest, 3)
        else {
            panic!("admitted");
        };
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].node_id.as_str(), gone[0].connection_id.as_str()),
            ("n2", "b")
        );
        assert_eq!(d.conns.len(), 3);

        let mut d = doc(&[("a", "n1", 5)]);
        d.lock = Some("ghost".into());
        let Change::Write(Some(gone)) =
            admit_into(&mut d, "x", &conn("n2", 9), PerUserPolicy::Exclusive, 10)
        else {
            panic!("admitted");
        };
        let ids: Vec<(&str, &str)> = gone
            .iter()
            .map(|g| (g.node_id.as_str(), g.connection_id.as_str()))
            .collect();
        assert_eq!(ids, [("n1", "a"), ("", "ghost")]);
        assert_eq!(d.lock.as_deref(), Some("x"));
        assert_eq!(d.conns.len(), 1);
    }
}
