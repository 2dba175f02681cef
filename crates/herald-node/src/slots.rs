//! Socket admission before a session exists: the node-wide socket count
//! (`limits.max_connections`), sockets still unauthenticated
//! (`limits.max_pending_connections`) and sockets per remote IP
//! (`limits.max_connections_per_ip`). Each reservation is a guard that
//! gives its place back when dropped, so no exit path can leak one.

use crate::node::{Inner, Node};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// The counts behind the guards of this module.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// Sockets open or being opened (authenticated or not).
    sockets: AtomicUsize,
    /// Sockets upgraded but not yet authenticated.
    pending: AtomicUsize,
    /// Sockets per remote IP; only kept while the per-IP cap is on.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The node is shutting down.
    Draining,
    /// The node is at `limits.max_connections`.
    AtCapacity,
    /// The remote IP is at `limits.max_connections_per_ip`.
    IpAtCapacity,
}

/// A reserved socket slot (and the remote IP's share); released when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    node: Weak<Inner>,
    ip: Option<IpAddr>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let Some(n) = self.node.upgrade() else { return };
        n.slots.sockets.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = n.slots.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A reserved place among the unauthenticated sockets; released when
/// dropped (at `authenticated`, or when the socket ends before it).
#[derive(Debug)]
pub struct PendingSlot {
    node: Weak<Inner>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(n) = self.node.upgrade() {
            n.slots.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Takes one place of `counter` unless it already holds `max`.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Node {
    /// Reserves a socket slot for a client at `ip` (when known): refused
    /// while draining, at `max_connections`, or with `ip` at
    /// `max_connections_per_ip`.
    pub fn reserve_socket_from(&self, ip: Option<IpAddr>) -> Result<SocketSlot, SlotRefusal> {
        if self.is_draining() {
            return Err(SlotRefusal::Draining);
        }
        let inner = &self.inner;
        if !take(&inner.slots.sockets, inner.limits.max_connections) {
            return Err(SlotRefusal::AtCapacity);
        }
        // From here on the guard gives back whatever it holds.
        let mut slot = SocketSlot {
            node: Arc::downgrade(inner),
            ip: None,
        };
        let per_ip_max = inner.limits.max_connections_per_ip;
        if let (Some(ip), true) = (ip, per_ip_max > 0) {
            // An IPv4 client reached over an IPv6 socket counts as itself.
            let ip = ip.to_canonical();
            let mut per_ip = inner.slots.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= per_ip_max {
                if *count == 0 {
                    per_ip.remove(&ip);
                }
                return Err(SlotRefusal::IpAtCapacity);
            }
            *count += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Reserves a place for a socket that is not yet authenticated, or
    /// `None` at `limits.max_pending_connections`.
    pub fn reserve_pending(&self) -> Option<PendingSlot> {
        let inner = &self.inner;
        take(&inner.slots.pending, inner.limits.max_pending_connections).then(|| PendingSlot {
            node: Arc::downgrade(inner),
        })
    }

    /// Whether every socket slot is taken (`limits.max_connections`), so
    /// that a new client would be refused.
    pub fn is_at_capacity(&self) -> bool {
        self.inner.slots.sockets.load(Ordering::Acquire) >= self.inner.limits.max_connections
    }
}
