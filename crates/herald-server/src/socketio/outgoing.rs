//! Queued frames to Engine.IO packets: each frame's bytes are one or more
//! complete packets (see [`herald_socketio::codec`]); with recovery on,
//! every event gets the connection's recovery token as its last argument,
//! in a tail of its own so the event's shared bytes are never copied.

use super::engine::OutPacket;
use crate::resume::Tracker;
use crate::ws::deflate::{zip, Deflate};
use bytes::Bytes;
use herald_core::Publication;
use herald_node::{metrics, Outbound};
use herald_protocol::ClientCodec;
use herald_socketio::codec::{event_head, split_packets, SOCKET_IO};

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
        self.add_with(item, out, None)
    }

    /// [`Self::add`] for a WebSocket that negotiated `deflate`: a room
    /// event of at least `min_bytes` becomes one compressed packet, the
    /// event's bytes deflated once for every recipient (cached on the
    /// publication) and this connection's end of the packet (its recovery
    /// token, or just the closing `]`) added as a stored deflate block
    /// (see [`zip::stored_tail`]), so the token costs no compression.
    pub(super) fn add_with(
        &mut self,
        item: &Outbound,
        out: &mut Vec<OutPacket>,
        deflate: Option<Deflate>,
    ) -> bool {
        if let (
            Some(d),
            Outbound::Frame {
                bytes,
                publication: Some(p),
                change: None,
            },
        ) = (deflate, item)
        {
            // The token carries the positions after this event (as below;
            // moving them again for the same event changes nothing).
            self.tracker.on_publication(p);
            if let Some(packet) = self.compressed(bytes, p, d) {
                out.push(packet);
                return false;
            }
        }
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

    /// The compressed packet of a room event's frame, or `None` when it
    /// goes plain (small, not one event packet, or no saving).
    fn compressed(&self, bytes: &Bytes, p: &Publication, d: Deflate) -> Option<OutPacket> {
        if bytes.len() < d.min_bytes as usize {
            return None;
        }
        let mut packets = split_packets(bytes);
        let packet = packets.next()?;
        if packets.next().is_some() {
            return None;
        }
        let head = event_head(&packet)?;
        let z = p.deflated(SOCKET_IO.slot(), d.window_bits, || zip::compress(&head, d));
        if z.is_empty() {
            return None;
        }
        // The packet's end: the token after the tracker moved (as
        // `packet` does below), or the bare `]`.
        let tail = if self.recovery {
            self.tracker.token_tail()
        } else {
            Bytes::from_static(b"]")
        };
        Some(OutPacket {
            head: z,
            tail: Some(zip::stored_tail(&tail)?),
            compressed: true,
        })
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
                    compressed: false,
                };
            }
        }
        OutPacket {
            head: packet,
            tail: None,
            compressed: false,
        }
    }
}

/// A packet sent as it is.
pub(super) fn plain(head: Bytes) -> OutPacket {
    OutPacket {
        head,
        tail: None,
        compressed: false,
    }
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
