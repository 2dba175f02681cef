//! Queued frames to Engine.IO packets: each frame's bytes are one or more
//! complete packets (see [`herald_socketio::codec`]); with recovery on,
//! every event gets the connection's recovery token as its last argument,
//! in a tail of its own so the event's shared bytes are never copied.

use super::engine::OutPacket;
use crate::resume::Tracker;
use bytes::Bytes;
use herald_node::{metrics, Outbound};
use herald_socketio::codec::{event_head, split_packets};

/// Turns queued items into packets, tracking the client's positions.
#[derive(Debug)]
pub(super) struct Outgoing {
    tracker: Tracker,
    recovery: bool,
}

impl Outgoing {
    /// With `recovery`, events carry the token; `tracker` holds where the
    /// client stands (a recovering client's own positions).
    pub(super) fn new(tracker: Tracker, recovery: bool) -> Self {
        Self { tracker, recovery }
    }

    /// Appends the packets of `items` to `out`, counting them as sent;
    /// returns whether one of them was a ping (an Engine.IO ping, sent
    /// apart).
    pub(super) fn convert(
        &mut self,
        items: impl IntoIterator<Item = Outbound>,
        out: &mut Vec<OutPacket>,
    ) -> bool {
        let mut ping = false;
        let mut frames = 0;
        for item in items {
            if let Outbound::Frame {
                publication: Some(p),
                ..
            } = &item
            {
                if let Some(t) = p.accepted_at {
                    metrics::delivery_latency(t.elapsed());
                }
            }
            frames += u64::from(matches!(item, Outbound::Frame { .. }));
            ping |= self.add(&item, out);
        }
        if frames > 0 {
            metrics::messages_sent(frames);
        }
        ping
    }

    /// Appends the packets of one item to `out` and moves the positions
    /// (again, with the same result, when called again for the same item);
    /// returns whether it was a ping. Counts nothing.
    pub(super) fn add(&mut self, item: &Outbound, out: &mut Vec<OutPacket>) -> bool {
        match item {
            Outbound::Frame {
                bytes,
                publication,
                change,
            } => {
                if let Some(p) = publication {
                    self.tracker.on_publication(p);
                }
                if let Some(change) = change {
                    self.tracker.on_change(change);
                }
                for packet in split_packets(bytes) {
                    out.push(self.packet(packet));
                }
                false
            }
            Outbound::Ping => true,
            // Whole WebSocket frames, for the socket writer only.
            Outbound::Raw(_) => false,
        }
    }

    /// One packet, with the token when it is an event and recovery is on:
    /// a tail of its own (one allocation, the text copied; a shared one
    /// would cost an allocation and atomic counts of its own to share).
    fn packet(&self, packet: Bytes) -> OutPacket {
        if self.recovery {
            if let Some(head) = event_head(&packet) {
                let tail = self.tracker.token_tail();
                return OutPacket {
                    head,
                    tail: Some(tail),
                };
            }
        }
        OutPacket {
            head: packet,
            tail: None,
        }
    }
}

/// A packet sent as it is.
pub(super) fn plain(head: Bytes) -> OutPacket {
    OutPacket { head, tail: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::RoomName;
    use herald_node::PositionChange;
    use herald_protocol::StreamPosition;

    fn whole(p: &OutPacket) -> Vec<u8> {
        let mut v = p.head.to_vec();
        v.extend_from_slice(p.tail.as_deref().unwrap_or_default());
        v
    }

    #[test]
    fn events_carry_the_positions_after_their_own_change() {
        let mut outgoing = Outgoing::new(Tracker::default(), true);
        let room = RoomName::parse("a").expect("room");
        let joined = Outbound::changing(
            Bytes::from_static(b"431[{}]\x1e42[\"room_joined\",{}]"),
            PositionChange::Joined {
                room,
                position: StreamPosition::new("E", 3),
                recovered: None,
            },
        );
        let mut out = Vec::new();
        let ping = outgoing.convert([joined, Outbound::Ping], &mut out);
        assert!(ping);
        assert_eq!(out.len(), 2);
        assert_eq!(whole(&out[0]), b"431[{}]", "acks get no token");
        assert_eq!(whole(&out[1]), br#"42["room_joined",{},"a~E~3"]"#);
        let plain_out = Outgoing::new(Tracker::default(), false);
        let packet = plain_out.packet(Bytes::from_static(b"42[\"x\"]"));
        assert!(packet.tail.is_none(), "no token without recovery");
    }
}
