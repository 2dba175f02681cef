//! WebSocket framing (RFC 6455 section 5) on the server's side: reading
//! client frames into messages, and the headers of server frames.
//!
//! tungstenite parses and formats frame headers and judges close codes; what
//! is here is the message layer over them: unmasking, reassembly of
//! fragments, the rules on control frames, UTF-8 and the size limit. It
//! owns no socket and does no I/O, so every rule is tested below on bytes.
//!
//! A reader keeps nothing between frames: bytes of an incomplete frame (or
//! of a fragmented message) are copied into buffers that exist only while
//! one is incomplete, so an idle connection carries no read buffer.

use bytes::Bytes;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{CloseCode as WireCloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest server frame header: 2 bytes, plus 8 for a 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;

/// A complete message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A text message (UTF-8 checked).
    Text(String),
    /// A binary message (for binary codecs; Herald JSON refuses one).
    Binary(Vec<u8>),
    /// A ping, to be answered with a pong carrying `payload`.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame, with the client's code if it gave one.
    Close(Option<u16>),
}

/// Why reading stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// A frame or message over the size limit: close 1009.
    TooBig,
    /// A text message that is not UTF-8: `bad_request`, then close 1007.
    InvalidUtf8,
    /// A framing rule broken: close 1002.
    Protocol(&'static str),
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Fragments {
    text: bool,
    /// Its first frame had RSV1 (permessage-deflate): inflate when whole.
    compressed: bool,
    data: Vec<u8>,
}

/// Reads client frames from the bytes given to it, as they come.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Bytes of a frame not yet complete; empty (unallocated) between frames.
    partial: Vec<u8>,
    /// A fragmented message in progress.
    fragments: Option<Box<Fragments>>,
    /// Largest frame, and largest message (inflated), accepted.
    max_message: usize,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
}

impl FrameReader {
    /// A reader refusing frames and messages over `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        Self {
            partial: Vec::new(),
            fragments: None,
            max_message,
            deflate: false,
        }
    }

    /// Accepts compressed messages (RSV1 on a message's first frame) from
    /// now on: permessage-deflate was negotiated.
    pub(crate) fn accept_deflate(&mut self) {
        self.deflate = true;
    }

    /// Changes the largest frame and message accepted from now on (a
    /// socket's budget grows once it has authenticated).
    pub(crate) fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// Parses `input`, the next bytes from the socket, appending every
    /// complete message or control frame to `out`. After an error the
    /// stream is unusable.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<Incoming>) -> Result<(), ReadError> {
        if self.partial.is_empty() {
            let used = self.parse(input, out)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut buffered = std::mem::take(&mut self.partial);
            buffered.extend_from_slice(input);
            let used = self.parse(&buffered, out)?;
            if used < buffered.len() {
                buffered.drain(..used);
                self.partial = buffered;
            }
        }
        Ok(())
    }

    /// Bytes held for a frame not yet complete.
    pub(crate) fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Parses every complete frame at the start of `data`; returns the
    /// bytes used.
    fn parse(&mut self, data: &[u8], out: &mut Vec<Incoming>) -> Result<usize, ReadError> {
        let mut used = 0;
        loop {
            let rest = &data[used..];
            let mut cursor = Cursor::new(rest);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(used),
                Err(_) => return Err(ReadError::Protocol("reserved opcode")),
            };
            let start = cursor.position() as usize;
            if len > self.max_message as u64 {
                return Err(ReadError::TooBig);
            }
            let len = len as usize;
            if rest.len() - start < len {
                return Ok(used);
            }
            let mut payload = rest[start..start + len].to_vec();
            used += start + len;
            self.on_frame(header, &mut payload, out)?;
        }
    }

    fn on_frame(
        &mut self,
        header: FrameHeader,
        payload: &mut Vec<u8>,
        out: &mut Vec<Incoming>,
    ) -> Result<(), ReadError> {
        // RSV1 marks a compressed message, on its first frame only, and
        // only with permessage-deflate negotiated.
        let first_data = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv2 || header.rsv3 || (header.rsv1 && !(self.deflate && first_data)) {
            return Err(ReadError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        let Some(mask) = header.mask else {
            return Err(ReadError::Protocol("client frames must be masked"));
        };
        unmask(payload, mask);
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(ReadError::Protocol(
                        "control frames must be final and at most 125 bytes",
                    ));
                }
                out.push(control_frame(control, payload)?);
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(ReadError::Protocol("continuation frame without a message"));
                };
                if fragments.data.len() + payload.len() > self.max_message {
                    return Err(ReadError::TooBig);
                }
                fragments.data.extend_from_slice(payload);
                if header.is_final {
                    if let Some(done) = self.fragments.take() {
                        let data = self.inflated(done.compressed, done.data)?;
                        out.push(message(done.text, data)?);
                    }
                }
            }
            OpCode::Data(data) => {
                if self.fragments.is_some() {
                    return Err(ReadError::Protocol(
                        "a new message began before the last one ended",
                    ));
                }
                let text = data == Data::Text;
                let payload = std::mem::take(payload);
                if header.is_final {
                    let payload = self.inflated(header.rsv1, payload)?;
                    out.push(message(text, payload)?);
                } else {
                    self.fragments = Some(Box::new(Fragments {
                        text,
                        compressed: header.rsv1,
                        data: payload,
                    }));
                }
            }
        }
        Ok(())
    }
}

impl FrameReader {
    /// A whole message's payload, inflated when it came compressed; the
    /// size limit applies to the inflated bytes.
    fn inflated(&self, compressed: bool, data: Vec<u8>) -> Result<Vec<u8>, ReadError> {
        if compressed {
            super::deflate::zip::inflate(&data, self.max_message)
        } else {
            Ok(data)
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

fn message(text: bool, data: Vec<u8>) -> Result<Incoming, ReadError> {
    if !text {
        return Ok(Incoming::Binary(data));
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| ReadError::InvalidUtf8)
}

fn control_frame(control: Control, payload: &[u8]) -> Result<Incoming, ReadError> {
    Ok(match control {
        Control::Ping => Incoming::Ping(Bytes::copy_from_slice(payload)),
        Control::Pong => Incoming::Pong,
        Control::Close => match payload {
            [] => Incoming::Close(None),
            [_] => return Err(ReadError::Protocol("a close frame's code has two bytes")),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !WireCloseCode::from(code).is_allowed() {
                    return Err(ReadError::Protocol("close code not allowed on the wire"));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(ReadError::Protocol("close reason is not UTF-8"));
                }
                Incoming::Close(Some(code))
            }
        },
        // Reserved control opcodes are refused by the header parser.
        Control::Reserved(_) => return Err(ReadError::Protocol("reserved opcode")),
    })
}

/// Writes the header of an unmasked, final server frame with `opcode` and
/// a payload of `len` bytes into `out`; returns its length.
pub(crate) fn header(opcode: OpCode, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let mut cursor = Cursor::new(&mut out[..]);
    // Ten bytes always hold an unmasked header: `format` cannot fail here.
    let _ = header.format(len as u64, &mut cursor);
    cursor.position() as usize
}

/// The header of a data frame carrying `len` bytes: binary for a binary
/// codec, else text.
pub(crate) fn data_header(binary: bool, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    header(data_opcode(binary), len, out)
}

/// [`data_header`] for a permessage-deflate message: RSV1 set.
pub(crate) fn compressed_header(binary: bool, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    let n = header(data_opcode(binary), len, out);
    // RSV1 is bit 6 of the first byte (RFC 6455 5.2).
    out[0] |= 0x40;
    n
}

fn data_opcode(binary: bool) -> OpCode {
    OpCode::Data(if binary { Data::Binary } else { Data::Text })
}

/// A complete server frame with `opcode` and `payload`, header included.
fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; MAX_HEADER];
    let n = header(opcode, payload.len(), &mut head);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A complete data frame carrying one encoded server frame (binary for a
/// binary codec, else text).
pub(crate) fn data(binary: bool, payload: &[u8]) -> Bytes {
    frame(data_opcode(binary), payload)
}

/// A complete server control frame (ping, pong, close) with `payload`
/// (at most 125 bytes).
pub(crate) fn control(control: Control, payload: &[u8]) -> Bytes {
    frame(OpCode::Control(control), payload)
}

/// A close frame with `code` and `reason`.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    // A control frame holds 125 bytes: 2 for the code, the rest reason.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    payload.extend_from_slice(reason);
    control(Control::Close, &payload)
}

#[cfg(test)]
mod tests;
