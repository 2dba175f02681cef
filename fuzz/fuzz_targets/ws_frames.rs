//! The WebSocket frame reader: arbitrary client bytes, read whole and
//! split at arbitrary points as a socket may deliver them; the same bytes
//! inflated as a compressed (permessage-deflate) message under the limit.
//!
//! Input: 2 bytes of size limit (1 to 65,536), 1 byte of split count `n`,
//! `n` 2-byte split offsets, then the bytes from the client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[hi, lo, n], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max_message = usize::from(u16::from_be_bytes([hi, lo])) + 1;
    let n = usize::from(n % 16);
    let Some(split_bytes) = rest.get(..2 * n) else {
        return;
    };
    let splits: Vec<usize> = split_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])))
        .collect();
    herald_server::fuzzing::ws_frames(&rest[2 * n..], &splits, max_message);
    herald_server::fuzzing::inflate(&rest[2 * n..], max_message);
});
