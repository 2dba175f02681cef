//! The registry of local connections and per-user admission.

use crate::conn::Connection;
use crate::hooks::Emitter;
use crate::limits::{Limits, PerUserPolicy};
use herald_core::Tenant;
use herald_protocol::CloseCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Registry shards: a connect, a close or a housekeeping pass locks one at
/// a time, so they contend only when they meet on the same shard.
const SHARDS: usize = 32;

/// Every admitted connection of this node, by id and by user, sharded by
/// user: a user's connections share a shard, so the per-user policy is
/// applied under one lock.
pub(crate) struct Registry {
    shards: Box<[Mutex<Shard>]>,
    /// `user.online` / `user.offline`, emitted under the user's shard lock
    /// so they come in the order of the transitions.
    hooks: Emitter,
    /// Connections, kept with the shards (read without a lock).
    len: AtomicUsize,
    /// Distinct users, kept with the shards.
    users: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    by_id: HashMap<Arc<str>, Arc<Connection>>,
    /// Oldest first; at most `max_connections_per_user` long (the node's
    /// policy, or in a cluster the cluster's, holds it there).
    by_user: HashMap<UserKey, Vec<Arc<Connection>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hooks: Emitter::off(Arc::from("")),
            len: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
        }
    }
}

impl Registry {
    /// A registry emitting the user kinds `hooks` has.
    pub(crate) fn with_hooks(hooks: Emitter) -> Self {
        Self {
            hooks,
            ..Self::default()
        }
    }

    fn shard(&self, tenant: &Tenant, user: &str) -> &Mutex<Shard> {
        let mut h = std::hash::DefaultHasher::new();
        tenant.hash(&mut h);
        user.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Whether a connection of `user` would be refused now (checked before
    /// a WebSocket upgrade so the refusal can be an HTTP 429).
    pub(crate) fn would_refuse(&self, tenant: &Tenant, user: &str, limits: &Limits) -> bool {
        if limits.per_user_policy != PerUserPolicy::Reject {
            return false;
        }
        let shard = self.shard(tenant, user).lock();
        let key = (tenant.clone(), Arc::from(user));
        shard
            .by_user
            .get(&key)
            .is_some_and(|v| v.len() >= limits.max_connections_per_user)
    }

    /// Admits `conn` under the per-user policy, atomically with the count.
    pub(crate) fn admit(&self, conn: &Arc<Connection>, limits: &Limits) -> Admission {
        let mut shard = self.shard(&conn.tenant, &conn.user_id).lock();
        let key = (conn.tenant.clone(), conn.user_id.clone());
        let new_user = !shard.by_user.contains_key(&key);
        let existing = shard.by_user.entry(key).or_default();
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
        if new_user {
            self.users.fetch_add(1, Ordering::Relaxed);
            self.hooks.user_online(conn);
        }
        for v in &victims {
            if shard.by_id.remove(&v.id).is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if shard.by_id.insert(conn.id.clone(), conn.clone()).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Admission::Admitted(victims)
    }

    /// Adds `conn` without applying a policy (in a cluster, the cluster
    /// registry applies it).
    pub(crate) fn insert(&self, conn: &Arc<Connection>) {
        let mut shard = self.shard(&conn.tenant, &conn.user_id).lock();
        let key = (conn.tenant.clone(), conn.user_id.clone());
        let list = shard.by_user.entry(key).or_default();
        if list.is_empty() {
            self.users.fetch_add(1, Ordering::Relaxed);
            self.hooks.user_online(conn);
        }
        list.push(conn.clone());
        if shard.by_id.insert(conn.id.clone(), conn.clone()).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The connection `id`, if it is here. Ids say nothing of their user,
    /// so every shard is asked (one lock at a time); only the cluster's
    /// disconnect-by-id calls this.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Connection>> {
        self.shards
            .iter()
            .find_map(|shard| shard.lock().by_id.get(id).cloned())
    }

    /// Forgets `conn` (idempotent).
    pub(crate) fn remove(&self, conn: &Arc<Connection>) {
        let mut shard = self.shard(&conn.tenant, &conn.user_id).lock();
        if shard
            .by_id
            .get(&conn.id)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            shard.by_id.remove(&conn.id);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        let key = (conn.tenant.clone(), conn.user_id.clone());
        if let Some(list) = shard.by_user.get_mut(&key) {
            list.retain(|c| !Arc::ptr_eq(c, conn));
            if list.is_empty() {
                shard.by_user.remove(&key);
                self.users.fetch_sub(1, Ordering::Relaxed);
                self.hooks.user_offline(conn);
            }
        }
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Distinct users with a connection.
    pub(crate) fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// The connections of `user`.
    pub(crate) fn of_user(&self, tenant: &Tenant, user: &str) -> Vec<Arc<Connection>> {
        let shard = self.shard(tenant, user).lock();
        shard
            .by_user
            .get(&(tenant.clone(), Arc::from(user)))
            .cloned()
            .unwrap_or_default()
    }

    /// Calls `visit` with each shard's connections in turn: one shard is
    /// locked (and copied into a reused buffer) at a time, and `visit`
    /// runs with no lock held, so it may close connections.
    pub(crate) fn for_each_shard(&self, mut visit: impl FnMut(&[Arc<Connection>])) {
        let mut buffer = Vec::new();
        for shard in self.shards.iter() {
            buffer.extend(shard.lock().by_id.values().cloned());
            visit(&buffer);
            buffer.clear();
        }
    }

    /// Every connection (a snapshot, taken shard by shard).
    pub(crate) fn all(&self) -> Vec<Arc<Connection>> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each_shard(|conns| all.extend_from_slice(conns));
        all
    }
}

/// Closes connections displaced by a newer session.
pub(crate) fn evict(victims: &[Arc<Connection>]) {
    for v in victims {
        v.close(CloseCode::SessionReplaced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::SendQueue;
    use crate::transport::Transport;
    use herald_core::Identity;
    use std::time::Instant;

    fn conn(id: usize, user: usize) -> Arc<Connection> {
        Arc::new(Connection::new(
            format!("c{id}"),
            Identity::new(format!("u{user}")),
            &Transport::WEBSOCKET,
            &herald_protocol::HERALD_JSON,
            SendQueue::new(16, 1 << 20),
            Instant::now(),
            0,
        ))
    }

    #[test]
    fn counts_lookups_and_walks_hold_across_shards() {
        let registry = Registry::default();
        let limits = Limits {
            max_connections_per_user: 2,
            per_user_policy: PerUserPolicy::EvictOldest,
            ..Limits::default()
        };
        // 300 connections of 100 users, three each: the oldest of each is evicted.
        let conns: Vec<_> = (0..300).map(|i| conn(i, i % 100)).collect();
        let mut evicted = 0;
        for c in &conns {
            match registry.admit(c, &limits) {
                Admission::Admitted(victims) => evicted += victims.len(),
                Admission::TooManyForUser => panic!("evict_oldest never refuses"),
            }
        }
        assert_eq!(evicted, 100);
        assert_eq!(registry.len(), 200);
        assert_eq!(registry.users(), 100);
        assert!(registry.get("c0").is_none(), "evicted");
        assert!(registry.get("c299").is_some());
        let of_user = registry.of_user(&Tenant::default_tenant(), "u7");
        let ids: Vec<&str> = of_user.iter().map(|c| &*c.id).collect();
        assert_eq!(ids, vec!["c107", "c207"], "oldest first");
        let mut walked = 0;
        registry.for_each_shard(|shard| walked += shard.len());
        assert_eq!(walked, 200);
        assert_eq!(registry.all().len(), 200);
        for c in &conns {
            registry.remove(c);
            registry.remove(c);
        }
        assert_eq!((registry.len(), registry.users()), (0, 0));
    }
}
