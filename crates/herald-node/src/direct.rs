//! Direct messages: an event for one connection or for every connection of
//! one user, outside any room (an `event` frame with `room: null`). Not in
//! any stream: no offset, no history, nothing to resume. In a cluster the
//! engine finds the nodes holding the target and carries the message to
//! them ([`herald_core::Cluster::send_direct`]); each node delivers to its
//! own connections here.

use crate::error::NodeError;
use crate::node::{now_ms, Inner, Node};
use crate::queue::Outbound;
use bytes::Bytes;
use herald_core::{DirectMessage, DirectTarget};
use herald_protocol::{DirectFrame, CODEC_SLOTS};
use serde_json::value::RawValue;

/// Queues `message` for the local connections `target` names whose event
/// filter takes it, encoded once per codec among them; returns how many
/// connections it named here, filtered or not. A full queue cuts its
/// connection (4011), as for any event.
pub(crate) fn deliver_local(
    inner: &Inner,
    target: &DirectTarget,
    message: &DirectMessage,
) -> usize {
    let conns = match target {
        DirectTarget::Connection { connection_id, .. } => {
            inner.registry.get(connection_id).into_iter().collect()
        }
        DirectTarget::User { tenant, user_id } => inner.registry.of_user(tenant, user_id),
    };
    let frame = DirectFrame::new(&message.event, &message.data, message.ts, &message.event_id);
    let mut encoded: [Option<Bytes>; CODEC_SLOTS] = Default::default();
    let mut named = 0;
    for conn in conns
        .iter()
        .filter(|c| target.names(&c.tenant, &c.user_id, &c.id))
    {
        named += 1;
        if !conn.wants(&message.event) {
            continue;
        }
        let codec = conn.codec;
        let bytes = match encoded.get_mut(codec.slot()) {
            Some(cell) => cell
                .get_or_insert_with(|| codec.encode_direct(&frame))
                .clone(),
            None => codec.encode_direct(&frame),
        };
        conn.send_item(Outbound::control(bytes));
    }
    named
}

impl Node {
    /// Sends the event `event` with `data` to `target` on whatever node
    /// holds it. Returns how many connections the registry lists for it
    /// (this node's alone, or the cluster's): `None` for a connection it
    /// does not know; for a user, `Some(0)` when none is connected.
    pub async fn send_direct(
        &self,
        target: &DirectTarget,
        event: String,
        data: Box<RawValue>,
    ) -> Result<Option<usize>, NodeError> {
        let message = DirectMessage {
            event,
            data,
            ts: now_ms(),
            event_id: format!("{:032x}", rand::random::<u128>()),
        };
        count_sent(match target {
            DirectTarget::Connection { .. } => "connection",
            DirectTarget::User { .. } => "user",
        });
        // A connection held here needs no registry round trip.
        if let DirectTarget::Connection { .. } = target {
            if deliver_local(&self.inner, target, &message) > 0 {
                return Ok(Some(1));
            }
        }
        match &self.inner.cluster {
            Some(cluster) => Ok(cluster.send_direct(target, &message).await?),
            None => match (target, deliver_local(&self.inner, target, &message)) {
                (DirectTarget::Connection { .. }, 0) => Ok(None),
                (_, n) => Ok(Some(n)),
            },
        }
    }
}

/// Counts a direct message sent from this node's API, by `target`
/// (`connection` or `user`): `herald_direct_messages_total`, described on
/// first use.
fn count_sent(target: &'static str) {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(
            "herald_direct_messages_total",
            "Direct messages sent through the HTTP API from this node, by target (connection, user)"
        );
    });
    metrics::counter!("herald_direct_messages_total", "target" => target).increment(1);
}
