//! `RawWs`: a hand-made WebSocket client on a raw TCP socket for
//! misbehaving-client tests, and `RawOutcome`, what reading it to the end
//! produced.

use super::FRAME_WAIT;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A hand-made WebSocket client on a raw socket: it never answers pings and
/// reads only when told to.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server's handshake answer (status line and headers).
    pub handshake: String,
}

/// One frame parsed from the server.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// RSV1: a permessage-deflate message's payload is compressed.
    pub rsv1: bool,
}

/// What reading a raw socket until the end produced.
#[derive(Debug, Default)]
pub struct RawOutcome {
    pub frames: Vec<RawFrame>,
    pub close: Option<(u16, String)>,
    pub eof: bool,
    pub error: Option<String>,
}

impl RawOutcome {
    /// Text frames parsed as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.frames
            .iter()
            .filter(|f| f.opcode == 1)
            .filter_map(|f| serde_json::from_slice(&f.payload).ok())
            .collect()
    }
}

impl RawWs {
    /// Connects and upgrades `path_and_query` (e.g. `/ws?token=...`).
    pub async fn connect(addr: &str, path_and_query: &str) -> RawWs {
        Self::connect_with_early(addr, path_and_query, &[]).await
    }

    /// Like [`RawWs::connect`], with `early` bytes (frames) sent in the same
    /// write as the upgrade request, before its answer.
    pub async fn connect_with_early(addr: &str, path_and_query: &str, early: &[u8]) -> RawWs {
        Self::connect_opts(addr, path_and_query, early, None, "").await
    }

    /// Like [`RawWs::connect`], with `headers` (`Name: value\r\n` lines)
    /// added to the upgrade request.
    pub async fn connect_with_headers(addr: &str, path_and_query: &str, headers: &str) -> RawWs {
        Self::connect_opts(addr, path_and_query, &[], None, headers).await
    }

    /// Like [`RawWs::connect`], with the socket's receive buffer set to
    /// `rcvbuf` bytes before connecting: a small window makes the server's
    /// writes stop part-way as soon as the client stops reading.
    pub async fn connect_small_window(addr: &str, path_and_query: &str, rcvbuf: u32) -> RawWs {
        Self::connect_opts(addr, path_and_query, &[], Some(rcvbuf), "").await
    }

    async fn connect_opts(
        addr: &str,
        path_and_query: &str,
        early: &[u8],
        rcvbuf: Option<u32>,
        headers: &str,
    ) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let target: std::net::SocketAddr = addr.parse().expect("a loopback ip:port");
        let mut stream = tokio::time::timeout(FRAME_WAIT, socket.connect(target))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        let mut first = req.into_bytes();
        first.extend_from_slice(early);
        stream.write_all(&first).await.expect("write handshake");
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        let header_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .expect("handshake answer timed out")
                .expect("read handshake");
            assert!(n > 0, "server closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "raw upgrade refused: {head}"
        );
        buf.drain(..header_end);
        RawWs {
            stream,
            buf,
            handshake: head,
        }
    }

    /// Writes one masked, final client frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.send_raw(&client_frame(true, opcode, payload, true))
            .await
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame from the server, or `None` at EOF, an error or after
    /// `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(f) = self.parse_one() {
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// The next text frame parsed as JSON (skipping other frames).
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let f = self.next_frame(timeout).await?;
            if f.opcode == 1 {
                return serde_json::from_slice(&f.payload).ok();
            }
        }
    }

    fn parse_one(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let rsv1 = b[0] & 0x40 != 0;
        let masked = b[1] & 0x80 != 0;
        let mut len = (b[1] & 0x7f) as usize;
        let mut pos = 2;
        if len == 126 {
            if b.len() < 4 {
                return None;
            }
            len = u16::from_be_bytes([b[2], b[3]]) as usize;
            pos = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            len = u64::from_be_bytes(a) as usize;
            pos = 10;
        }
        let mask = if masked {
            if b.len() < pos + 4 {
                return None;
            }
            let m = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < pos + len {
            return None;
        }
        let mut payload = b[pos..pos + len].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.buf.drain(..pos + len);
        Some(RawFrame {
            opcode,
            payload,
            rsv1,
        })
    }

    /// Reads frames until a close frame, EOF, an error or `timeout`.
    pub async fn read_until_end(&mut self, timeout: Duration) -> RawOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = RawOutcome::default();
        loop {
            while let Some(f) = self.parse_one() {
                if f.opcode == 8 {
                    let code = if f.payload.len() >= 2 {
                        u16::from_be_bytes([f.payload[0], f.payload[1]])
                    } else {
                        1005
                    };
                    let reason =
                        String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[])).into_owned();
                    out.close = Some((code, reason));
                    out.frames.push(f);
                    return out;
                }
                out.frames.push(f);
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return out,
                Ok(Ok(0)) => {
                    out.eof = true;
                    return out;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            }
        }
    }
}

/// One client frame with FIN, opcode and masking as given.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}
