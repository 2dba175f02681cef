//! Deliveries without a task hop: while an Engine.IO session is on a
//! WebSocket, its connection's queue has a [`SocketWriter`] that writes
//! each item into the socket as it is queued (from the fan-out itself, as
//! `/ws` does), the recovery token computed here, in queue order. The
//! connection's task keeps the client's input, polling, slow sockets and
//! the close.
//!
//! Over TLS, as for `/ws` (`crate::ws::socket::WsWriter`), an item counts
//! as written once its ciphertext is on the wire: otherwise it is left
//! unfinished at its full length for the next call to flush.

use super::engine::{frame_len, write_packets, OutPacket};
use super::outgoing::{plain, Outgoing};
use crate::http::Conn;
use crate::ws::deflate::{zip, Deflate};
use bytes::Bytes;
use herald_node::{Outbound, SocketWriter};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Writes a Socket.IO connection's queue into its Engine.IO WebSocket.
#[derive(Debug)]
pub(super) struct SioWriter {
    pub(super) stream: Arc<Conn>,
    /// Shared with the connection's task, which converts while the
    /// session is on polling and for the close.
    outgoing: Arc<Mutex<Outgoing>>,
    /// The last write ended inside a frame: nothing else may be written to
    /// the socket until its rest is.
    mid_frame: AtomicBool,
    /// permessage-deflate, when the socket negotiated it: room events go
    /// out compressed (see [`Outgoing::add_with`]).
    deflate: Option<Deflate>,
}

impl SioWriter {
    /// A writer of `stream`, tracking positions in `outgoing`.
    pub(super) fn new(
        stream: Arc<Conn>,
        outgoing: Arc<Mutex<Outgoing>>,
        deflate: Option<Deflate>,
    ) -> Self {
        Self {
            stream,
            outgoing,
            mid_frame: AtomicBool::new(false),
            deflate,
        }
    }

    /// Whether the last write stopped inside a frame.
    pub(super) fn mid_frame(&self) -> bool {
        self.mid_frame.load(Ordering::Acquire)
    }
}

impl SocketWriter for SioWriter {
    fn write_now(&self, items: &[Outbound], offset: &mut usize) -> io::Result<usize> {
        // TLS: ciphertext of earlier items first; none done while it waits.
        if !self.stream.flush_now()? {
            return Ok(0);
        }
        let mut outgoing = self.outgoing.lock();
        let mut packets: Vec<OutPacket> = Vec::new();
        let mut last_total = 0;
        for (done, item) in items.iter().enumerate() {
            let (written, total) = match item {
                Outbound::Raw(frame) => (write_raw(&self.stream, frame, *offset)?, frame.len()),
                _ => {
                    // A partly written item is converted again: the same
                    // packets, the positions moved to the same place.
                    packets.clear();
                    if outgoing.add_with(item, &mut packets, self.deflate) {
                        packets.push(plain(Bytes::from_static(b"2")));
                    }
                    let total = packets.iter().map(frame_len).sum();
                    (write_packets(&self.stream, &packets, *offset)?, total)
                }
            };
            if *offset + written >= total && packets.iter().any(|p| p.compressed) {
                zip::count_frames(1);
            }
            if *offset + written < total {
                *offset += written;
                self.mid_frame.store(*offset > 0, Ordering::Release);
                return Ok(done);
            }
            *offset = 0;
            last_total = total;
        }
        if !items.is_empty() && !self.stream.flush_now()? {
            // TLS: the last item is in rustls, not all on the wire; left
            // unfinished at its full length, the queue waits for the
            // socket and the next call flushes it.
            *offset = last_total;
            self.mid_frame.store(true, Ordering::Release);
            return Ok(items.len() - 1);
        }
        self.mid_frame.store(false, Ordering::Release);
        Ok(items.len())
    }
}

/// Writes whole frames from byte `skip` on; returns the bytes taken.
fn write_raw(stream: &Conn, frame: &[u8], skip: usize) -> io::Result<usize> {
    let rest = frame.get(skip..).unwrap_or_default();
    if rest.is_empty() {
        return Ok(0);
    }
    loop {
        return match stream.try_write(rest) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}
