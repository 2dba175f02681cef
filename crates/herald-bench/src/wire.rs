//! The client's socket as the bench sees it: every byte read from the
//! server is counted (TCP payload: the upgrade response, frame headers and
//! frame payloads), and with `--deflate` the client offers permessage-deflate
//! (RFC 7692) and inflates compressed messages before tungstenite, which has
//! no extension support, reads them.
//!
//! [`WireStream`] sits between the TCP socket and tungstenite. Without
//! deflate it only counts. With deflate it holds back the server's upgrade
//! response until it is complete, reads the `Sec-WebSocket-Extensions`
//! answer from it, and from then on parses frames itself: control frames and
//! uncompressed messages pass through as they came; a message whose first
//! frame has RSV1 set is gathered (all its fragments), inflated (raw deflate
//! with the `00 00 ff ff` tail put back, RFC 7692 7.2.2) and handed on as one
//! plain frame. With `server_no_context_takeover` the inflater restarts for
//! each message; otherwise it keeps its window (context takeover).

use flate2::{Decompress, FlushDecompress, Status};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The offer a client sends: permessage-deflate, any client window.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";
/// Longest upgrade response held back while looking for its end.
const MAX_HEAD: usize = 16 * 1024;
/// Largest inflated message accepted (a bound against a runaway stream).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 4096;

/// Counters over every connection of a run.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Bytes read from server sockets.
    pub bytes: AtomicU64,
    /// Connections that offered permessage-deflate.
    pub offered: AtomicU64,
    /// Connections whose server accepted it.
    pub negotiated: AtomicU64,
    /// Of those, connections where the server keeps its context
    /// (no `server_no_context_takeover` in the answer).
    pub context_takeover: AtomicU64,
    /// Compressed messages inflated.
    pub inflated: AtomicU64,
}

/// What the server answered to the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// `server_no_context_takeover`: each message inflates alone.
    pub no_context_takeover: bool,
}

/// Reads the `Sec-WebSocket-Extensions` answer in an upgrade response head.
/// `Ok(None)`: the server did not accept permessage-deflate; `Err`: it
/// answered something a client must refuse (RFC 7692 5.1).
pub fn parse_answer(head: &str) -> Result<Option<Agreed>, String> {
    let mut agreed = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("sec-websocket-extensions") {
            continue;
        }
        for ext in value.split(',') {
            let mut parts = ext.split(';').map(str::trim);
            let ext_name = parts.next().unwrap_or_default();
            if !ext_name.eq_ignore_ascii_case("permessage-deflate") {
                return Err(format!(
                    "server answered extension `{ext_name}`, not offered"
                ));
            }
            if agreed.is_some() {
                return Err("server answered permessage-deflate twice".into());
            }
            let mut a = Agreed {
                no_context_takeover: false,
            };
            for p in parts.filter(|p| !p.is_empty()) {
                let (key, val) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                };
                match key {
                    "server_no_context_takeover" => a.no_context_takeover = true,
                    "client_no_context_takeover" => {}
                    "server_max_window_bits" | "client_max_window_bits" => {
                        // Any window up to 32 KiB inflates with the default
                        // one; the bench does not compress what it sends.
                        let ok = val
                            .and_then(|v| v.parse::<u8>().ok())
                            .is_some_and(|b| (8..=15).contains(&b));
                        if !ok {
                            return Err(format!("bad {key} in the answer"));
                        }
                    }
                    other => return Err(format!("unknown permessage-deflate parameter `{other}`")),
                }
            }
            agreed = Some(a);
        }
    }
    Ok(agreed)
}

/// The inflating side of one connection.
struct Inflater {
    z: Decompress,
    no_context_takeover: bool,
}

impl Inflater {
    /// Inflates one message's payload (all its fragments).
    fn message(&mut self, deflated: &mut Vec<u8>) -> io::Result<Vec<u8>> {
        if self.no_context_takeover {
            self.z.reset(false);
        }
        deflated.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(deflated.len() * 4 + 64);
        let mut input: &[u8] = deflated;
        loop {
            let before = self.z.total_in();
            let status = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|e| invalid(format!("inflate: {e}")))?;
            let used = (self.z.total_in() - before) as usize;
            input = &input[used..];
            let full = out.len() == out.capacity();
            if input.is_empty() && !full {
                break;
            }
            if status == Status::StreamEnd && input.is_empty() {
                break;
            }
            if out.len() >= MAX_MESSAGE {
                return Err(invalid("inflated message too large".into()));
            }
            if used == 0 && !full {
                return Err(invalid("inflate made no progress".into()));
            }
            out.reserve(out.capacity().max(1024));
        }
        Ok(out)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

enum Mode {
    /// Count only.
    Plain,
    /// Deflate offered: holding the upgrade response until its end.
    Head,
    /// Deflate agreed: parsing frames.
    Frames(Box<Inflater>),
}

/// A TCP stream that counts what it reads and, once deflate is agreed,
/// inflates compressed messages. See the module docs.
pub struct WireStream {
    inner: TcpStream,
    stats: Arc<WireStats>,
    mode: Mode,
    /// Read from the socket, not yet parsed (Head and Frames).
    raw: Vec<u8>,
    /// Ready for tungstenite.
    out: Vec<u8>,
    out_pos: usize,
    /// A compressed message being gathered: opcode and payload so far.
    gathering: Option<(u8, Vec<u8>)>,
    /// Inside an uncompressed fragmented message (continuations pass on).
    plain_fragments: bool,
}

impl WireStream {
    /// Wraps `inner`; `offer_deflate`: the upgrade request carries [`OFFER`].
    pub fn new(inner: TcpStream, stats: Arc<WireStats>, offer_deflate: bool) -> Self {
        if offer_deflate {
            stats.offered.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            inner,
            stats,
            mode: if offer_deflate {
                Mode::Head
            } else {
                Mode::Plain
            },
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            gathering: None,
            plain_fragments: false,
        }
    }

    /// Moves what `raw` holds into `out` as far as the mode allows.
    fn process(&mut self) -> io::Result<()> {
        if matches!(self.mode, Mode::Head) {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.raw.len() > MAX_HEAD {
                    return Err(invalid("upgrade response head too long".into()));
                }
                return Ok(());
            };
            let end = end + 4;
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            self.out.extend_from_slice(&self.raw[..end]);
            self.raw.drain(..end);
            self.mode = match parse_answer(&head).map_err(invalid)? {
                Some(a) => {
                    self.stats.negotiated.fetch_add(1, Ordering::Relaxed);
                    if !a.no_context_takeover {
                        self.stats.context_takeover.fetch_add(1, Ordering::Relaxed);
                    }
                    Mode::Frames(Box::new(Inflater {
                        z: Decompress::new(false),
                        no_context_takeover: a.no_context_takeover,
                    }))
                }
                None => {
                    // Refused (or not a 101): the rest is plain.
                    self.out.append(&mut self.raw);
                    Mode::Plain
                }
            };
        }
        if matches!(self.mode, Mode::Frames(_)) {
            self.frames()?;
        }
        Ok(())
    }

    /// Parses every complete frame in `raw`.
    fn frames(&mut self) -> io::Result<()> {
        let mut at = 0;
        while let Some((header, len)) = frame_bounds(&self.raw[at..])? {
            let frame = &self.raw[at..at + header + len];
            let (b0, payload) = (frame[0], &frame[header..]);
            let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
            if opcode & 0x08 != 0 {
                self.out.extend_from_slice(frame); // control: never compressed
            } else if opcode != 0 {
                if self.gathering.is_some() || self.plain_fragments {
                    return Err(invalid("new message inside a fragmented one".into()));
                }
                if rsv1 {
                    self.gathering = Some((opcode, payload.to_vec()));
                } else {
                    self.out.extend_from_slice(frame);
                    self.plain_fragments = !fin;
                }
            } else if let Some((_, buf)) = self.gathering.as_mut() {
                buf.extend_from_slice(payload);
                if buf.len() > MAX_MESSAGE {
                    return Err(invalid("compressed message too large".into()));
                }
            } else if self.plain_fragments {
                self.out.extend_from_slice(frame);
                self.plain_fragments = !fin;
            } else {
                return Err(invalid("continuation without a message".into()));
            }
            at += header + len;
            if fin && opcode & 0x08 == 0 {
                if let Some((op, mut deflated)) = self.gathering.take() {
                    let Mode::Frames(inf) = &mut self.mode else {
                        return Err(invalid("compressed message without deflate".into()));
                    };
                    let plain = inf.message(&mut deflated)?;
                    write_frame(&mut self.out, op, &plain);
                    self.stats.inflated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }
}

/// Header length and payload length of the frame at the start of `b`, once
/// it is all there.
fn frame_bounds(b: &[u8]) -> io::Result<Option<(usize, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err(invalid("server frame is masked".into()));
    }
    let (header, len) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (
                10,
                usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
            )
        }
        126 | 127 => return Ok(None),
        n => (2, n as usize),
    };
    if len > MAX_MESSAGE {
        return Err(invalid("frame too large".into()));
    }
    Ok((b.len() >= header + len).then_some((header, len)))
}

/// Appends one unmasked final frame of `opcode` carrying `payload`.
fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

impl AsyncRead for WireStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            if me.out_pos < me.out.len() {
                let n = buf.remaining().min(me.out.len() - me.out_pos);
                buf.put_slice(&me.out[me.out_pos..me.out_pos + n]);
                me.out_pos += n;
                if me.out_pos == me.out.len() {
                    me.out.clear();
                    me.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(me.mode, Mode::Plain) && me.raw.is_empty() {
                // The hot path without deflate: straight through, counted.
                let before = buf.filled().len();
                ready!(Pin::new(&mut me.inner).poll_read(cx, buf))?;
                let n = buf.filled().len() - before;
                me.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                // End of stream: hand on what is left, then EOF.
                if me.raw.is_empty() || matches!(me.mode, Mode::Plain) {
                    let rest = std::mem::take(&mut me.raw);
                    me.out.extend_from_slice(&rest);
                    if me.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            me.stats
                .bytes
                .fetch_add(got.len() as u64, Ordering::Relaxed);
            me.raw.extend_from_slice(got);
            if matches!(me.mode, Mode::Plain) {
                let rest = std::mem::take(&mut me.raw);
                me.out.extend_from_slice(&rest);
            } else {
                me.process()?;
            }
        }
    }
}

impl AsyncWrite for WireStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A message compressed as a permessage-deflate sender does: sync
    /// flush, the `00 00 ff ff` tail removed (RFC 7692 7.2.1).
    fn deflate(z: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        z.compress_vec(msg, &mut out, FlushCompress::Sync)
            .expect("in memory");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame(&mut f, 0, payload);
        f[0] = b0;
        f
    }

    async fn stream(offer: bool) -> (WireStream, Arc<WireStats>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let stats = Arc::new(WireStats::default());
        (WireStream::new(c, stats.clone(), offer), stats)
    }

    const HEAD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";

    #[test]
    fn answers() {
        let a = |s: &str| parse_answer(&format!("HTTP/1.1 101 x\r\n{s}\r\n\r\n"));
        assert_eq!(a("Upgrade: websocket"), Ok(None));
        assert_eq!(
            a("sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
            Ok(Some(Agreed { no_context_takeover: true }))
        );
        assert_eq!(
            a("Sec-WebSocket-Extensions: permessage-deflate"),
            Ok(Some(Agreed {
                no_context_takeover: false
            }))
        );
        assert!(a("Sec-WebSocket-Extensions: x-webkit-deflate-frame").is_err());
        assert!(
            a("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=20").is_err()
        );
        assert!(a("Sec-WebSocket-Extensions: permessage-deflate; mystery").is_err());
    }

    #[tokio::test]
    async fn inflates_each_message_alone_and_passes_the_rest() {
        let (mut w, stats) = stream(true).await;
        let one = br#"{"type":"event","data":{"text":"hello hello hello hello"}}"#;
        let two = br#"{"type":"event","data":{"text":"again, and again, and again"}}"#;
        let z1 = deflate(&mut Compress::new(Compression::default(), false), one);
        let z2 = deflate(&mut Compress::new(Compression::default(), false), two);
        let mut wire = HEAD.as_bytes().to_vec();
        wire.extend(frame(0xC1, &z1)); // FIN|RSV1|text
                                       // Fragmented compressed message with a ping between its frames.
        let (a, b) = z2.split_at(z2.len() / 2);
        wire.extend(frame(0x41, a)); // RSV1|text, not FIN
        wire.extend(frame(0x89, b"p")); // ping
        wire.extend(frame(0x80, b)); // FIN continuation
        wire.extend(frame(0x81, b"plain")); // uncompressed text
                                            // Fed in small pieces, as reads may split anything.
        for piece in wire.chunks(7) {
            w.raw.extend_from_slice(piece);
            w.process().expect("valid stream");
        }
        let mut want = HEAD.as_bytes().to_vec();
        want.extend(frame(0x81, one));
        want.extend(frame(0x89, b"p"));
        want.extend(frame(0x81, two));
        want.extend(frame(0x81, b"plain"));
        assert_eq!(w.out, want);
        assert_eq!(stats.negotiated.load(Ordering::Relaxed), 1);
        assert_eq!(stats.context_takeover.load(Ordering::Relaxed), 0);
        assert_eq!(stats.inflated.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn keeps_the_window_under_context_takeover() {
        let (mut w, stats) = stream(true).await;
        let mut z = Compress::new(Compression::default(), false);
        let msg = br#"{"type":"event","data":{"tool":"web_search","output":"the same words"}}"#;
        let mut wire =
            b"HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n".to_vec();
        let first = deflate(&mut z, msg);
        let second = deflate(&mut z, msg);
        // The second refers back to the first: it only inflates with its window.
        assert!(second.len() < first.len() / 2);
        wire.extend(frame(0xC1, &first));
        wire.extend(frame(0xC1, &second));
        w.raw.extend_from_slice(&wire);
        w.process().expect("valid stream");
        let head_len = wire.len() - frame(0xC1, &first).len() - frame(0xC1, &second).len();
        let mut want = wire[..head_len].to_vec();
        want.extend(frame(0x81, msg));
        want.extend(frame(0x81, msg));
        assert_eq!(w.out, want);
        assert_eq!(stats.context_takeover.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn refusals_and_bad_frames() {
        // Offer refused: everything after the head passes untouched.
        let (mut w, stats) = stream(true).await;
        w.raw
            .extend_from_slice(b"HTTP/1.1 101 OK\r\n\r\n\x81\x02hi");
        w.process().expect("plain");
        assert!(w.out.ends_with(b"\x81\x02hi"));
        assert!(matches!(w.mode, Mode::Plain));
        assert_eq!(stats.negotiated.load(Ordering::Relaxed), 0);
        // Garbage where a compressed message should be is an error, not a panic.
        let (mut w, _) = stream(true).await;
        w.raw.extend_from_slice(HEAD.as_bytes());
        w.raw.extend(frame(0xC1, &[0xff, 0xff, 0xff, 0xff, 0xff]));
        assert!(w.process().is_err());
        // Masked server frames and stray continuations are refused.
        let (mut w, _) = stream(true).await;
        w.raw.extend_from_slice(HEAD.as_bytes());
        w.raw.extend_from_slice(&[0x81, 0x81, 1, 2, 3, 4, b'x']);
        assert!(w.process().is_err());
        let (mut w, _) = stream(true).await;
        w.raw.extend_from_slice(HEAD.as_bytes());
        w.raw.extend(frame(0x80, b"x"));
        assert!(w.process().is_err());
    }
}
