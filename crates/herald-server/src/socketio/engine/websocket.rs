//! An Engine.IO session on a WebSocket: one packet per text frame, binary
//! frames as binary messages, over the project's own WebSocket socket
//! ([`crate::ws::socket::WsSocket`], [`crate::ws::frames`]). Each packet is
//! written as one frame, its header, head and tail in one vectored write.

use super::{EioEvent, OutPacket};
use crate::http::Conn;
use crate::ws::deflate::Deflate;
use crate::ws::frames::{self, Incoming, ReadError, MAX_HEADER};
use crate::ws::socket::{write_slices, Read, ReadFailure, WsSocket};
use bytes::Bytes;
use herald_socketio::engineio::{self, Packet, PacketType};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Packets per vectored write (three slices each: header, head, tail).
const WRITE_BATCH: usize = 16;
/// Most bytes of control frames (pongs) held for a client that does not
/// read; beyond, its pings go unanswered.
const MAX_CONTROL_BYTES: usize = 4096;
/// How long a closed WebSocket waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

/// Takes the socket (TCP or TLS) back from hyper after an upgrade, by `deadline`;
/// frames over `max_payload` bytes will be refused.
pub(super) async fn take_socket(
    on_upgrade: OnUpgrade,
    deadline: Instant,
    max_payload: usize,
    deflate: Option<Deflate>,
) -> Option<WsSocket> {
    let Ok(Ok(upgraded)) = timeout_at(deadline, on_upgrade).await else {
        return None;
    };
    let Ok(parts) = upgraded.downcast::<TokioIo<crate::http::ServerIo>>() else {
        // Only if the HTTP server stopped serving its own stream type.
        tracing::error!("upgraded connection is not a served stream; closing it");
        return None;
    };
    Some(WsSocket::new(
        parts.io.into_inner().into_conn(),
        &parts.read_buf,
        max_payload,
        deflate,
    ))
}

/// A text frame carrying `payload`, header included.
pub(super) fn text_frame(payload: &[u8]) -> Bytes {
    frames::data(false, payload)
}

/// The WebSocket side of a session.
#[derive(Debug)]
pub(super) struct WsLink {
    socket: WsSocket,
    /// Whole frames not yet written (pongs, a close, the packets an
    /// upgrade carried over): written before any new packet, so a frame is
    /// never cut by another, and by `recv` whenever the socket takes them.
    control: Vec<u8>,
    /// How long a write may make no progress before the session is given
    /// up (the client stopped reading).
    stall: Duration,
    /// A close frame is among the control frames: nothing may follow it.
    close_queued: bool,
    /// Another writer writes the socket ([`Self::hand_over`]): control
    /// frames are kept, not written.
    handed_over: bool,
}

impl WsLink {
    /// A session on `socket`.
    pub(super) fn new(socket: WsSocket, stall: Duration) -> Self {
        Self {
            socket,
            control: Vec::new(),
            stall,
            close_queued: false,
            handed_over: false,
        }
    }

    /// The next event from the client (see [`super::EioSocket::recv`]).
    /// Cancel-safe: frames read stay in the socket until taken.
    pub(super) async fn recv(&mut self) -> EioEvent {
        loop {
            while let Some(frame) = self.socket.take() {
                if let Some(event) = self.on_frame(frame) {
                    return event;
                }
            }
            let flushed = self.control.is_empty() && !self.ciphertext_pending();
            let readable = if flushed || self.handed_over {
                self.socket.readable().await
            } else {
                tokio::select! {
                    readable = self.socket.readable() => readable,
                    writable = self.socket.stream.writable() => {
                        if writable.and_then(|()| self.flush_control_now()).is_err() {
                            return EioEvent::Closed("transport_error");
                        }
                        continue;
                    }
                }
            };
            if readable.is_err() {
                return EioEvent::Closed("transport_error");
            }
            match self.socket.read_now() {
                Ok(Read::Open) => {}
                Ok(Read::Eof) => return EioEvent::Closed("client_closed"),
                Err(ReadFailure::Io(_)) => return EioEvent::Closed("transport_error"),
                Err(ReadFailure::Frame(e)) => {
                    let (code, reason) = match e {
                        ReadError::TooBig => (1009, "payload_too_large"),
                        ReadError::InvalidUtf8 => (1007, "invalid_utf8"),
                        ReadError::Protocol(_) => (1002, "protocol_error"),
                    };
                    self.queue_control(&frames::close(code, ""));
                    return EioEvent::Closed(reason);
                }
            }
        }
    }

    /// What one frame means for the session; `None` when it was handled
    /// here (a WebSocket ping, a noop).
    fn on_frame(&mut self, frame: Incoming) -> Option<EioEvent> {
        match frame {
            Incoming::Text(text) => match engineio::decode_packet(Bytes::from(text)) {
                Ok(packet) => on_packet(packet),
                Err(_) => {
                    self.queue_control(&frames::close(1002, ""));
                    Some(EioEvent::Closed("parse_error"))
                }
            },
            Incoming::Binary(data) => Some(EioEvent::Binary(Bytes::from(data))),
            Incoming::Ping(payload) => {
                self.queue_control(&frames::control(Control::Pong, &payload));
                None
            }
            Incoming::Pong => None,
            Incoming::Close(code) => {
                self.queue_control(&frames::close(code.unwrap_or(1000), ""));
                Some(EioEvent::Closed("client_closed"))
            }
        }
    }

    /// Queues `packets` as frames to write before anything else (the
    /// packets a polling session had not delivered when it upgraded).
    pub(super) fn queue_packets(&mut self, packets: &[OutPacket]) {
        for packet in packets {
            let tail: &[u8] = packet.tail.as_deref().unwrap_or(&[]);
            let mut head = [0u8; MAX_HEADER];
            let n = packet_header(packet, &mut head);
            self.control.extend_from_slice(&head[..n]);
            self.control.extend_from_slice(&packet.head);
            self.control.extend_from_slice(tail);
        }
        let _ = self.flush_control_now();
    }

    /// Queues a control frame and writes what the socket takes now.
    fn queue_control(&mut self, frame: &[u8]) {
        if self.close_queued || self.control.len() + frame.len() > MAX_CONTROL_BYTES {
            return;
        }
        // A close frame's opcode is 0x8 (the first byte, with FIN).
        self.close_queued = frame.first() == Some(&0x88);
        self.control.extend_from_slice(frame);
        if !self.handed_over {
            let _ = self.flush_control_now();
        }
    }

    /// Whether bytes written earlier still wait in TLS (never for plain
    /// TCP).
    fn ciphertext_pending(&self) -> bool {
        !matches!(self.socket.stream.flush_now(), Ok(true))
    }

    /// Writes queued control frames without waiting; `Ok(true)` when none
    /// are left (TLS: nor any of their ciphertext).
    fn flush_control_now(&mut self) -> io::Result<bool> {
        while !self.control.is_empty() {
            match self.socket.stream.try_write(&self.control) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.control.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.control = Vec::new();
        self.socket.stream.flush_now()
    }

    /// Waits until the socket takes more, at most the stall time.
    async fn writable(&self) -> io::Result<()> {
        match tokio::time::timeout(self.stall, self.socket.stream.writable()).await {
            Ok(ready) => ready,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes `packets`, one text frame each, in order (after any queued
    /// control frame).
    pub(super) async fn send(&mut self, packets: &[OutPacket]) -> io::Result<()> {
        while !self.flush_control_now()? {
            self.writable().await?;
        }
        // Bytes of the frames written so far: all that waits with the
        // future, which stays small in every connection's idle task.
        let total: usize = packets.iter().map(frame_len).sum();
        let mut done = 0;
        loop {
            done += write_packets(&self.socket.stream, packets, done)?;
            if done >= total && self.socket.stream.flush_now()? {
                return Ok(());
            }
            self.writable().await?;
        }
    }

    /// Hands the socket's writes to another writer (a
    /// [`herald_node::SocketWriter`] on the connection's queue): from now
    /// on control frames (pongs, a close) are only kept, for
    /// [`Self::take_control`]. `None` while frames are still unwritten.
    pub(super) fn hand_over(&mut self) -> Option<Arc<Conn>> {
        if !self.control.is_empty() || self.ciphertext_pending() {
            return None;
        }
        self.handed_over = true;
        Some(self.socket.stream.clone())
    }

    /// What permessage-deflate negotiated on this socket, if it was.
    pub(super) fn deflate(&self) -> Option<Deflate> {
        self.socket.deflate()
    }

    /// Whether the writes are handed over.
    pub(super) fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// Takes the writes back (the other writer is done).
    pub(super) fn take_back(&mut self) {
        self.handed_over = false;
    }

    /// The control frames kept while the writes are handed over.
    pub(super) fn take_control(&mut self) -> Option<Bytes> {
        if !self.handed_over || self.control.is_empty() {
            return None;
        }
        Some(Bytes::from(std::mem::take(&mut self.control)))
    }

    /// Writes `last`, a close frame, then closes the TCP connection, all
    /// within `timeout`.
    pub(super) async fn close(mut self, last: &[OutPacket], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let written = timeout_at(deadline, async {
            self.send(last).await?;
            if !self.close_queued {
                self.control.extend_from_slice(&frames::close(1000, ""));
            }
            while !self.flush_control_now()? {
                self.writable().await?;
            }
            Ok::<_, io::Error>(())
        })
        .await;
        if matches!(written, Ok(Ok(()))) {
            let linger = deadline
                .saturating_duration_since(Instant::now())
                .min(LINGER);
            self.socket.shut_down(linger).await;
        }
    }
}

/// The text frame header of `packet` (RSV1 set when it is compressed).
fn packet_header(packet: &OutPacket, out: &mut [u8; MAX_HEADER]) -> usize {
    if packet.compressed {
        frames::compressed_header(false, packet.len(), out)
    } else {
        frames::header(OpCode::Data(Data::Text), packet.len(), out)
    }
}

/// A packet's length as a text frame, header included.
pub(crate) fn frame_len(packet: &OutPacket) -> usize {
    let len = packet.len();
    let header = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + len
}

/// Writes `packets` as text frames, from byte `skip` of their frames on,
/// without waiting; returns how many bytes the socket took (fewer than
/// the rest: it is full). Small writes (a head and its token) are copied
/// into one `send`, which costs the kernel less than a `writev`.
pub(crate) fn write_packets(
    stream: &Conn,
    packets: &[OutPacket],
    mut skip: usize,
) -> io::Result<usize> {
    let mut taken = 0;
    let mut next = 0;
    // Whole packets already written.
    while next < packets.len() && skip >= frame_len(&packets[next]) {
        skip -= frame_len(&packets[next]);
        next += 1;
    }
    while next < packets.len() {
        let batch = &packets[next..packets.len().min(next + WRITE_BATCH)];
        let mut heads = [[0u8; MAX_HEADER]; WRITE_BATCH];
        let mut head_lens = [0usize; WRITE_BATCH];
        for (i, packet) in batch.iter().enumerate() {
            head_lens[i] = packet_header(packet, &mut heads[i]);
        }
        let mut slices = [IoSlice::new(&[]); 3 * WRITE_BATCH];
        let mut count = 0;
        let mut want = 0;
        // The first packet may be partly written already.
        let mut part_skip = skip;
        for (i, packet) in batch.iter().enumerate() {
            let tail: &[u8] = packet.tail.as_deref().unwrap_or(&[]);
            for part in [&heads[i][..head_lens[i]], &packet.head[..], tail] {
                if part_skip >= part.len() {
                    part_skip -= part.len();
                    continue;
                }
                slices[count] = IoSlice::new(&part[part_skip..]);
                want += part.len() - part_skip;
                part_skip = 0;
                count += 1;
            }
        }
        let written = match write_slices(stream, &slices[..count]) {
            Ok(0) if want > 0 => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        taken += written;
        if written < want {
            return Ok(taken);
        }
        skip = 0;
        next += batch.len();
    }
    Ok(taken)
}

/// What a text packet from the client means for the session.
fn on_packet(packet: Packet) -> Option<EioEvent> {
    match packet {
        Packet::Binary(data) => Some(EioEvent::Binary(data)),
        Packet::Text { kind, data } => match kind {
            PacketType::Message => Some(EioEvent::Message(data)),
            PacketType::Pong => Some(EioEvent::Pong),
            PacketType::Close => Some(EioEvent::Closed("client_closed")),
            PacketType::Noop | PacketType::Upgrade => None,
            // In protocol 4 only the server pings (a `2probe` belongs to a
            // probe, handled before the session moves here).
            PacketType::Ping | PacketType::Open => Some(EioEvent::Closed("protocol_error")),
        },
    }
}

/// What a packet of a POST means for the session (the same as on a
/// WebSocket).
pub(super) fn packet_event(packet: Packet) -> Option<EioEvent> {
    on_packet(packet)
}
