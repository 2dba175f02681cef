//! The registry of local connections and per-user admission.

use crate::conn::Connection;
use crate::limits::{Limits, PerUserPolicy};
use herald_core::Tenant;
use herald_protocol::CloseCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a connection was refused, or who it displaced.
#[derive(Debug)]
pub enum Admission {
    /// Admitted; these older connections must be closed with 4010.
    Admitted(Vec<Arc<Connection>>),
    /// Refused: the user is at `max_connections_per_user` under `reject`.
    TooManyForUser,
}

type UserKey = (Tenant, Arc<str>);

/// Every admitted connection of this node, by id and by user.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Arc<str>, Arc<Connection>>,
    by_user: HashMap<UserKey, Vec<Arc<Connection>>>,
}

impl Registry {
    /// Whether a connection of `user` would be refused now (checked before
    /// a WebSocket upgrade so the refusal can be an HTTP 429).
    pub(crate) fn would_refuse(&self, tenant: &Tenant, user: &str, limits: &Limits) -> bool {
        if limits.per_user_policy != PerUserPolicy::Reject {
            return false;
        }
        let inner = self.inner.lock();
        let key = (tenant.clone(), Arc::from(user));
        inner
            .by_user
            .get(&key)
            .is_some_and(|v| v.len() >= limits.max_connections_per_user)
    }

    /// Admits `conn` under the per-user policy, atomically with the count.
    pub(crate) fn admit(&self, conn: &Arc<Connection>, limits: &Limits) -> Admission {
        let mut inner = self.inner.lock();
        let key = (conn.tenant.clone(), conn.user_id.clone());
        let existing = inner.by_user.entry(key).or_default();
        let max = limits.max_connections_per_user.max(1);
        let victims: Vec<Arc<Connection>> = match limits.per_user_policy {
            PerUserPolicy::Reject if existing.len() >= max => return Admission::TooManyForUser,
            PerUserPolicy::Reject => Vec::new(),
            PerUserPolicy::EvictOldest => {
                let excess = (existing.len() + 1).saturating_sub(max);
                existing.drain(..excess).collect()
            }
            PerUserPolicy::Exclusive => std::mem::take(existing),
        };
        existing.push(conn.clone());
        for v in &victims {
            inner.by_id.remove(&v.id);
        }
        inner.by_id.insert(conn.id.clone(), conn.clone());
        Admission::Admitted(victims)
    }

    /// Adds `conn` without applying a policy (in a cluster, the cluster
    /// registry applies it).
    pub(crate) fn insert(&self, conn: &Arc<Connection>) {
        let mut inner = self.inner.lock();
        let key = (conn.tenant.clone(), conn.user_id.clone());
        inner.by_user.entry(key).or_default().push(conn.clone());
        inner.by_id.insert(conn.id.clone(), conn.clone());
    }

    /// The connection `id`, if it is here.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Connection>> {
        self.inner.lock().by_id.get(id).cloned()
    }

    /// Forgets `conn` (idempotent).
    pub(crate) fn remove(&self, conn: &Arc<Connection>) {
        let mut inner = self.inner.lock();
        if inner
            .by_id
            .get(&conn.id)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            inner.by_id.remove(&conn.id);
        }
        let key = (conn.tenant.clone(), conn.user_id.clone());
        if let Some(list) = inner.by_user.get_mut(&key) {
            list.retain(|c| !Arc::ptr_eq(c, conn));
            if list.is_empty() {
                inner.by_user.remove(&key);
            }
        }
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }

    /// Distinct users with a connection.
    pub(crate) fn users(&self) -> usize {
        self.inner.lock().by_user.len()
    }

    /// The connections of `user`.
    pub(crate) fn of_user(&self, tenant: &Tenant, user: &str) -> Vec<Arc<Connection>> {
        let inner = self.inner.lock();
        inner
            .by_user
            .get(&(tenant.clone(), Arc::from(user)))
            .cloned()
            .unwrap_or_default()
    }

    /// Every connection (a snapshot).
    pub(crate) fn all(&self) -> Vec<Arc<Connection>> {
        self.inner.lock().by_id.values().cloned().collect()
    }
}

/// Closes connections displaced by a newer session.
pub(crate) fn evict(victims: &[Arc<Connection>]) {
    for v in victims {
        v.close(CloseCode::SessionReplaced);
    }
}
