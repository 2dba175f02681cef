//! The socket of one WebSocket connection (plain TCP or TLS, see
//! [`Conn`]), taken back from hyper after the upgrade. The connection's task reads it; writes come from whoever
//! queues a frame (fan-out, the session, housekeeping) through
//! [`WsWriter`], which frames each queued item on the fly and hands the
//! kernel one vectored write per batch. Events are shared `Bytes`: the
//! only per-recipient work is a 2–10 byte header.
//!
//! Over TLS an item counts as written only once its ciphertext is on the
//! wire: one whose plaintext rustls took while the socket filled up is
//! reported unfinished with its whole length as the offset, so the queue
//! waits for the socket and the next write flushes it (see
//! [`WsWriter::write_now`]).

use super::deflate::{zip, Deflate};
use super::frames::{self, FrameReader, Incoming, ReadError, MAX_HEADER};
use crate::http::Conn;
use bytes::Bytes;
use herald_core::Publication;
use herald_node::{Outbound, SocketWriter};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

/// Bytes read per system call. On the stack, only during a read: an idle
/// connection holds no read buffer at all.
const READ_CHUNK: usize = 4096;
/// Reads per wake-up before the task yields to handle what it read.
const MAX_READS: usize = 16;
/// Items per vectored write (two slices each: header and payload).
const WRITE_BATCH: usize = 32;
/// A batch this small is copied into one buffer on the stack and sent with
/// `send`, cheaper in the kernel than `writev` over its pieces (a typical
/// delivery is one event of ~150 bytes; the copy costs nanoseconds).
const COALESCE: usize = 1024;
/// Most bytes a closing socket reads and drops while it lingers: what a
/// client may reasonably have in flight (a large message), no more.
const LINGER_BYTES: usize = 1 << 20;
/// A ping frame with no payload.
const PING: &[u8] = &[0x89, 0x00];

/// The read side of a WebSocket connection, with the frames read but not
/// yet handled.
#[derive(Debug)]
pub(crate) struct WsSocket {
    pub(crate) stream: Arc<Conn>,
    reader: FrameReader,
    incoming: VecDeque<Incoming>,
    /// A framing error found behind frames still to handle (or in the
    /// bytes hyper read past the upgrade request), reported at the next read.
    deferred_error: Option<ReadError>,
    /// What permessage-deflate negotiated, if it was.
    deflate: Option<Deflate>,
}

/// How reading ended this time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Frames (possibly none) were read; the socket is still open.
    Open,
    /// The client closed its side.
    Eof,
}

/// Why reading failed.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The client broke a framing rule or a limit.
    Frame(ReadError),
    /// The socket failed.
    Io(io::Error),
}

impl WsSocket {
    /// A socket whose first bytes (read by hyper past the upgrade request)
    /// are `early`; frames over `max_message` bytes are refused.
    /// `deflate` is what permessage-deflate negotiated in the upgrade.
    pub(crate) fn new(
        stream: Conn,
        early: &[u8],
        max_message: usize,
        deflate: Option<Deflate>,
    ) -> Self {
        let mut reader = FrameReader::new(max_message);
        if deflate.is_some() {
            reader.accept_deflate();
        }
        let mut socket = Self {
            stream: Arc::new(stream),
            reader,
            incoming: VecDeque::new(),
            deferred_error: None,
            deflate,
        };
        let mut frames = Vec::new();
        socket.deferred_error = socket.reader.feed(early, &mut frames).err();
        socket.incoming.extend(frames);
        socket
    }

    /// Changes the largest frame and message accepted from the bytes read
    /// from now on.
    pub(crate) fn set_max_message(&mut self, max_message: usize) {
        self.reader.set_max_message(max_message);
    }

    /// A writer for this socket's send queue; `binary` sends frames as
    /// binary messages (a binary codec's), else as text; `slot` is the
    /// codec's (whose frames a compressed event caches).
    pub(crate) fn writer(&self, binary: bool, slot: usize) -> Arc<dyn SocketWriter> {
        Arc::new(WsWriter {
            stream: self.stream.clone(),
            binary,
            deflate: self.deflate.map(|deflate| WriterDeflate {
                deflate,
                slot: slot.min(usize::from(u8::MAX)) as u8,
            }),
        })
    }

    /// What permessage-deflate negotiated, if it was.
    pub(crate) fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// The next frame already read, if any.
    pub(crate) fn take(&mut self) -> Option<Incoming> {
        let frame = self.incoming.pop_front();
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            // Idle connections keep no buffer.
            self.incoming = VecDeque::new();
        }
        frame
    }

    /// Resolves when [`Self::read_now`] has something to report: input on
    /// the socket, or a framing error already found, which must not wait
    /// for the client to send more.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        if self.deferred_error.is_some() {
            return Ok(());
        }
        self.stream.readable().await
    }

    /// Waits until at least one frame was read (then [`Self::take`] it),
    /// or the client closed its side.
    pub(crate) async fn fill(&mut self) -> Result<Read, ReadFailure> {
        while self.incoming.is_empty() {
            self.readable().await.map_err(ReadFailure::Io)?;
            if self.read_now()? == Read::Eof {
                return Ok(Read::Eof);
            }
        }
        Ok(Read::Open)
    }

    /// Reads what has arrived without waiting; call after
    /// [`Self::readable`], then [`Self::take`] the frames.
    pub(crate) fn read_now(&mut self) -> Result<Read, ReadFailure> {
        if let Some(e) = self.deferred_error.take() {
            return Err(ReadFailure::Frame(e));
        }
        let mut buf = [0u8; READ_CHUNK];
        let mut frames = Vec::new();
        let mut outcome = Ok(Read::Open);
        for _ in 0..MAX_READS {
            match self.stream.try_read(&mut buf) {
                Ok(0) => {
                    outcome = Ok(Read::Eof);
                    break;
                }
                Ok(n) => {
                    if let Err(e) = self.reader.feed(&buf[..n], &mut frames) {
                        outcome = Err(ReadFailure::Frame(e));
                        break;
                    }
                    if n < buf.len() || !frames.is_empty() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    outcome = Err(ReadFailure::Io(e));
                    break;
                }
            }
        }
        // Frames before a failure are still handled, then the failure.
        self.incoming.extend(frames);
        if self.incoming.is_empty() {
            return outcome;
        }
        if let Err(ReadFailure::Frame(e)) = outcome {
            self.deferred_error = Some(e);
        }
        Ok(Read::Open)
    }

    /// Writes `bytes` (complete frames), waiting for the socket as needed;
    /// for the time before a session (and its queue) exists.
    pub(crate) async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Over TLS the last bytes may still be ciphertext in rustls.
        while !self.stream.flush_now()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Ends the connection after the close frame: TLS's `close_notify` and a
    /// FIN once everything written has gone, then the client's remaining bytes are read and
    /// dropped until it closes too (at most `linger`, and at most
    /// [`LINGER_BYTES`]), so that unread input does not turn the close into
    /// a reset that could destroy the close frame before the client reads
    /// it. The deadline is checked between reads: a client that never stops
    /// sending keeps the socket readable, and the wait must still end.
    pub(crate) async fn shut_down(&self, linger: Duration) {
        self.stream.shutdown_write();
        let deadline = tokio::time::Instant::now() + linger;
        let mut left = LINGER_BYTES;
        let mut sink = [0u8; READ_CHUNK];
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.stream.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
            match self.stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) if n >= left => return,
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// Writes a connection's queued items to its socket (see the module docs).
#[derive(Debug)]
pub(crate) struct WsWriter {
    stream: Arc<Conn>,
    /// Frames go out as binary messages (a binary codec's), else as text.
    binary: bool,
    /// permessage-deflate, when negotiated: room events of at least
    /// `min_bytes` go out as their publication's shared compressed bytes.
    deflate: Option<WriterDeflate>,
}

/// A writer's compression: the negotiated settings and its codec's slot.
#[derive(Debug, Clone, Copy)]
struct WriterDeflate {
    deflate: Deflate,
    slot: u8,
}

impl WriterDeflate {
    /// The compressed payload for a frame, if it goes out compressed:
    /// always the same answer for the same item (cached on the event).
    fn payload(&self, bytes: &Bytes, publication: Option<&Arc<Publication>>) -> Option<Bytes> {
        let p = publication?;
        if bytes.len() < self.deflate.min_bytes as usize {
            return None;
        }
        let z = p.deflated(usize::from(self.slot), self.deflate.window_bits, || {
            zip::compress(bytes, self.deflate)
        });
        (!z.is_empty()).then_some(z)
    }
}

impl SocketWriter for WsWriter {
    fn write_now(&self, items: &[Outbound], offset: &mut usize) -> io::Result<usize> {
        // TLS: ciphertext of earlier items first; none done while it waits.
        if !self.stream.flush_now()? {
            return Ok(0);
        }
        let mut done = 0;
        // Compressed payloads of this batch, in item order (no allocation
        // unless one is); `zipped[i]` marks the items that use one.
        let mut compressed: Vec<Bytes> = Vec::new();
        let mut zipped = [false; WRITE_BATCH];
        while done < items.len() {
            let batch = &items[done..items.len().min(done + WRITE_BATCH)];
            let mut heads = [[0u8; MAX_HEADER]; WRITE_BATCH];
            let mut head_lens = [0usize; WRITE_BATCH];
            compressed.clear();
            for (i, item) in batch.iter().enumerate() {
                if let Outbound::Frame {
                    bytes, publication, ..
                } = item
                {
                    let z = self
                        .deflate
                        .and_then(|d| d.payload(bytes, publication.as_ref()));
                    zipped[i] = z.is_some();
                    head_lens[i] = match z {
                        Some(z) => {
                            let n = frames::compressed_header(self.binary, z.len(), &mut heads[i]);
                            compressed.push(z);
                            n
                        }
                        None => frames::data_header(self.binary, bytes.len(), &mut heads[i]),
                    };
                }
            }
            let mut next_zipped = compressed.iter();
            let mut slices = [IoSlice::new(&[]); 2 * WRITE_BATCH];
            let mut lens = [0usize; WRITE_BATCH];
            let mut count = 0;
            for (i, item) in batch.iter().enumerate() {
                let (head, body): (&[u8], &[u8]) = match item {
                    Outbound::Frame { bytes, .. } => {
                        let body = match zipped[i].then(|| next_zipped.next()).flatten() {
                            Some(z) => z,
                            None => bytes,
                        };
                        (&heads[i][..head_lens[i]], body)
                    }
                    Outbound::Ping => (PING, &[]),
                    Outbound::Raw(bytes) => (&[], bytes),
                };
                // The first item may be partly written already.
                let skip = if i == 0 { *offset } else { 0 };
                lens[i] = head.len() + body.len() - skip;
                let (head, body) = if skip < head.len() {
                    (&head[skip..], body)
                } else {
                    (&[][..], &body[skip - head.len()..])
                };
                for part in [head, body] {
                    if !part.is_empty() {
                        slices[count] = IoSlice::new(part);
                        count += 1;
                    }
                }
            }
            if count == 0 {
                // Only an item whose bytes all went out before (TLS: their
                // ciphertext was flushed above).
                *offset = 0;
                done += 1;
                continue;
            }
            let mut written = match write_slices(&self.stream, &slices[..count]) {
                Ok(0) if count > 0 => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut sent_zipped = 0;
            for (i, len) in lens[..batch.len()].iter().enumerate() {
                if written < *len {
                    // The socket took part of this item: it is full.
                    *offset += written;
                    zip::count_frames(sent_zipped);
                    return Ok(done);
                }
                written -= len;
                *offset = 0;
                done += 1;
                sent_zipped += u64::from(zipped[i]);
            }
            zip::count_frames(sent_zipped);
        }
        if done > 0 && !self.stream.flush_now()? {
            // TLS: the last item's plaintext is in rustls, not all on the
            // wire. Unfinished at its full length, the queue waits for the
            // socket and calls again, which flushes it and counts it done.
            done -= 1;
            *offset = self.wire_len(&items[done]);
        }
        Ok(done)
    }
}

impl WsWriter {
    /// The bytes `item` takes on the wire.
    fn wire_len(&self, item: &Outbound) -> usize {
        wire_len(item, self.binary, self.deflate)
    }
}

/// The bytes `item` takes on the wire (compressed as the writer sends it).
fn wire_len(item: &Outbound, binary: bool, deflate: Option<WriterDeflate>) -> usize {
    match item {
        Outbound::Frame {
            bytes, publication, ..
        } => {
            let len = deflate
                .and_then(|d| d.payload(bytes, publication.as_ref()))
                .map_or(bytes.len(), |z| z.len());
            let mut head = [0u8; MAX_HEADER];
            frames::data_header(binary, len, &mut head) + len
        }
        Outbound::Ping => PING.len(),
        Outbound::Raw(bytes) => bytes.len(),
    }
}

/// One write of `slices`: a small total is copied together and sent as one
/// buffer, a large one goes out as a vectored write.
pub(crate) fn write_slices(stream: &Conn, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if slices.len() == 1 || total > COALESCE {
        return match slices {
            [one] => stream.try_write(one),
            _ => stream.try_write_vectored(slices),
        };
    }
    let mut buf = [0u8; COALESCE];
    let mut len = 0;
    for slice in slices {
        buf[len..len + slice.len()].copy_from_slice(slice);
        len += slice.len();
    }
    stream.try_write(&buf[..len])
}

#[cfg(test)]
mod deflate_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
