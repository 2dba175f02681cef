//! One ticker for the whole node instead of timers per connection: it sends
//! pings when due, and closes stale connections (4014) and connections whose
//! token expired (4012).

use crate::node::{now_ms, Node};
use crate::queue::Outbound;
use herald_protocol::CloseCode;
use std::time::Duration;

/// Longest housekeeping period; also the precision of expiry and staleness.
const MAX_TICK: Duration = Duration::from_millis(500);
/// Shortest period, for very short heartbeat intervals (tests, LANs).
const MIN_TICK: Duration = Duration::from_millis(20);

pub(crate) fn spawn(node: &Node) {
    // No runtime (a unit test constructing a node synchronously): nothing to tick.
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    // A quarter of the heartbeat keeps pings within 25 % of their period.
    let period = (node.limits().heartbeat_interval / 4).clamp(MIN_TICK, MAX_TICK);
    let weak = std::sync::Arc::downgrade(&node.inner);
    let cancel = node.inner.cancel.clone();
    node.inner.tasks.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            let node = Node { inner };
            sweep(&node);
        }
    });
}

fn sweep(node: &Node) {
    let limits = node.limits();
    let now = node.inner.clock.elapsed().as_millis() as u64;
    let now_secs = now_ms() / 1000;
    let stale_ms = limits.stale_timeout.as_millis() as u64;
    let ping_ms = limits.heartbeat_interval.as_millis() as u64;
    // Shard by shard: no lock is held while connections are closed or
    // pinged, and only one shard's connections are copied at a time.
    node.inner.registry.for_each_shard(|conns| {
        for conn in conns {
            if conn.queue.closing().is_some() {
                continue;
            }
            if conn.expires_at().is_some_and(|exp| now_secs >= exp) {
                conn.close(CloseCode::TokenExpired);
            } else if !conn.transport.heartbeats() {
                // A receive-only client cannot answer pings (see
                // `Transport::heartbeats`).
                continue;
            } else if conn.silent_for_ms(now) >= stale_ms {
                conn.close(CloseCode::Stale);
            } else if conn.ping_due(now, ping_ms) {
                // Cuts (4011) when even shedding leaves no room.
                conn.send_item(Outbound::Ping);
            }
        }
    });
}
