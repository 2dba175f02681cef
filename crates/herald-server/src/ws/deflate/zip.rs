//! Raw deflate for permessage-deflate: per-thread compressors and an
//! inflater, reset for every message (no context takeover either way), and
//! the compression metrics.
//!
//! zlib's deflate state for a 15-bit window at level 6 is a few hundred KiB;
//! it lives once per thread that compresses (the runtime's workers), never
//! per connection. The inflater is ~40 KiB per thread.

use super::Deflate;
use crate::ws::frames::ReadError;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// What a sync flush ends with, removed from every message (RFC 7692
/// 7.2.1) and put back before inflating (7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// Compressors by (window bits, level); nearly always one.
    static COMPRESSORS: RefCell<Vec<(u8, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// The inflater for client messages: a 15-bit window reads any
    /// client's window.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// The message payload for `frame`, compressed with `deflate`'s window
/// and level, its sync-flush tail removed; empty when compressing failed
/// or saved nothing (the frame is then sent plain). Counts the bytes.
pub(crate) fn compress(frame: &[u8], deflate: Deflate) -> Bytes {
    let out = COMPRESSORS.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let key = (deflate.window_bits, deflate.level);
        let index = match compressors.iter().position(|(w, l, _)| (*w, *l) == key) {
            Some(i) => i,
            None => {
                compressors.push((
                    key.0,
                    key.1,
                    Compress::new_with_window_bits(
                        Compression::new(u32::from(key.1)),
                        false,
                        key.0,
                    ),
                ));
                compressors.len() - 1
            }
        };
        let compressor = &mut compressors[index].2;
        compressor.reset();
        deflate_all(compressor, frame)
    });
    // A sync flush always ends with the tail; without it the message
    // could not be continued by [`stored_tail`]: sent plain.
    let Some(mut out) = out.filter(|o| o.ends_with(&TAIL)) else {
        return Bytes::new();
    };
    out.truncate(out.len() - TAIL.len());
    if out.len() >= frame.len() {
        return Bytes::new();
    }
    metrics::counter!("herald_ws_compression_bytes_total", "kind" => "raw")
        .increment(frame.len() as u64);
    metrics::counter!("herald_ws_compression_bytes_total", "kind" => "compressed")
        .increment(out.len() as u64);
    metrics::counter!("herald_ws_compressed_events_total").increment(1);
    Bytes::from(out)
}

/// Bytes that continue a message from [`compress`] with `tail` stored
/// uncompressed, so one compressed event can end differently per
/// recipient (a Socket.IO recovery token). [`compress`] ends inside the
/// empty stored block of its sync flush, just after its byte-aligned
/// header: `tail`'s length and its complement (RFC 1951 3.2.4) make that
/// block carry `tail`, and a last `0x00` opens another empty stored block,
/// which the receiver's appended `00 00 ff ff` (RFC 7692 7.2.2) closes.
/// `None` when `tail` is over 65535 bytes (one stored block).
pub(crate) fn stored_tail(tail: &[u8]) -> Option<Bytes> {
    let len = u16::try_from(tail.len()).ok()?;
    let mut out = Vec::with_capacity(tail.len() + 5);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(tail);
    out.push(0x00);
    Some(Bytes::from(out))
}

/// `input` through `compressor` with a sync flush; `None` on a zlib error.
fn deflate_all(compressor: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let used = compressor.total_in() as usize;
        let rest = input.get(used..).unwrap_or_default();
        compressor
            .compress_vec(rest, &mut out, FlushCompress::Sync)
            .ok()?;
        // Done when all input is in and the flush did not fill the buffer.
        if compressor.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Some(out);
        }
        out.reserve(out.capacity().max(64));
    }
}

/// Inflates one client message (its payload without the tail), refusing
/// it with [`ReadError::TooBig`] as soon as the inflated size passes
/// `max`: a deflate bomb is cut, never buffered.
pub(crate) fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inflater = slot.get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
        inflater.reset(false);
        // Not `clamp(64, max + 1)`: that panics when the limit is under 63
        // bytes, which `limits.max_message_bytes` allows (found by fuzzing).
        let capacity = data.len().saturating_mul(2).max(64);
        let mut out = Vec::with_capacity(capacity.min(max.saturating_add(1)));
        for part in [data, &TAIL[..]] {
            if inflate_part(inflater, part, &mut out, max)? {
                break;
            }
        }
        Ok(out)
    })
}

/// Feeds `input` to `inflater`; `Ok(true)` when the stream ended (a final
/// block: nothing after it counts).
fn inflate_part(
    inflater: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, ReadError> {
    const BAD: ReadError = ReadError::Protocol("invalid compressed data");
    loop {
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(ReadError::TooBig);
            }
            // Grow by doubling, never past one byte over the limit.
            let more = out.capacity().max(256).min(max + 1 - out.len());
            out.reserve_exact(more);
        }
        let (in_before, out_before) = (inflater.total_in(), out.len());
        let status = inflater
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| BAD)?;
        let used = (inflater.total_in() - in_before) as usize;
        input = input.get(used..).unwrap_or_default();
        if out.len() > max {
            return Err(ReadError::TooBig);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        let full = out.len() == out.capacity();
        if input.is_empty() && !full {
            return Ok(false);
        }
        if used == 0 && out.len() == out_before && !full {
            return Err(BAD);
        }
    }
}

/// Counts a connection that negotiated permessage-deflate.
pub(crate) fn count_negotiated() {
    metrics::counter!("herald_ws_compression_negotiated_total").increment(1);
}

/// Counts `n` compressed frames written (one per recipient).
pub(crate) fn count_frames(n: u64) {
    if n == 0 {
        return;
    }
    metrics::counter!("herald_ws_compressed_frames_total").increment(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFLATE: Deflate = Deflate {
        window_bits: 15,
        level: 6,
        min_bytes: 0,
    };

    #[test]
    fn a_compressed_frame_inflates_to_itself() {
        let frame =
            br#"{"type":"event","room":"r","data":{"text":"hello hello hello hello hello"}}"#
                .repeat(20);
        for window_bits in [9, 12, 15] {
            let z = compress(
                &frame,
                Deflate {
                    window_bits,
                    ..DEFLATE
                },
            );
            assert!(!z.is_empty() && z.len() < frame.len());
            assert!(!z.ends_with(&TAIL), "the sync tail is removed");
            assert_eq!(inflate(&z, 1 << 20).expect("inflates"), frame);
        }
        assert!(compress(b"x", DEFLATE).is_empty(), "no saving: sent plain");
    }

    #[test]
    fn a_stored_tail_continues_a_compressed_head() {
        let head = br#"42["event",{"text":"hello hello hello hello hello hello hello"}"#;
        let z = compress(head, DEFLATE);
        let tail = stored_tail(br#","r~E~3"]"#).expect("short");
        let message = [&z[..], &tail[..]].concat();
        let mut want = head.to_vec();
        want.extend_from_slice(br#","r~E~3"]"#);
        assert_eq!(inflate(&message, 1 << 20).expect("inflates"), want);
    }

    #[test]
    fn a_bomb_is_cut_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let z = compress(&zeros, DEFLATE);
        assert!(z.len() < 10_000);
        assert_eq!(inflate(&z, 64 << 10), Err(ReadError::TooBig));
        assert_eq!(inflate(&z, 4 << 20).expect("fits").len(), 4 << 20);
        assert!(matches!(
            inflate(&[0xff; 16], 1024),
            Err(ReadError::Protocol(_))
        ));
    }

    #[test]
    fn a_limit_under_the_buffer_guess_is_kept() {
        // The fuzzer's input: a limit of 4 bytes (any under 63 once panicked).
        if let Ok(out) = inflate(&[0xe2, 0x00], 4) {
            assert!(out.len() <= 4);
        }
        let z = compress(&[b'a'; 300], DEFLATE);
        assert_eq!(inflate(&z, 8), Err(ReadError::TooBig));
        let z = compress(&[b'a'; 40], DEFLATE);
        assert_eq!(inflate(&z, 40).expect("fits"), [b'a'; 40]);
    }
}
