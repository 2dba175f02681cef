//! The writer with permessage-deflate on a real loopback socket with small
//! buffers: room events over `min_bytes` go out compressed (RSV1), others
//! plain, and however the kernel cuts the writes, the client reads whole
//! frames that inflate back to every item's bytes, in order; the writer's
//! claimed offsets agree with `wire_len`.

use super::test_support::{tcp_pair, text, WAIT};
use super::*;
use crate::ws::deflate::Deflate;
use herald_core::{RoomKey, RoomName, Tenant};
use herald_protocol::StreamPosition;
use tokio::io::AsyncReadExt;

/// A room event whose frame is `bytes`.
fn event(bytes: Vec<u8>, offset: u64) -> Outbound {
    let p = Publication::new(
        RoomKey::new(
            Tenant::default_tenant(),
            RoomName::parse("r").expect("room"),
        ),
        StreamPosition::new("e", offset),
        "e",
        serde_json::value::to_raw_value(&offset).expect("raw"),
        0,
        format!("id{offset}"),
    );
    Outbound::Frame {
        bytes: Bytes::from(bytes),
        publication: Some(Arc::new(p)),
        change: None,
    }
}

/// Parses server frames: (rsv1, payload) each.
fn frames_of(mut wire: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let rsv1 = wire[0] & 0x40 != 0;
        let (len, at) = match wire[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&wire[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        out.push((rsv1, wire[at..at + len].to_vec()));
        wire = &wire[at + len..];
    }
    out
}

#[tokio::test]
async fn compressed_frames_survive_every_cut_and_match_wire_len() {
    let deflate = WriterDeflate {
        deflate: Deflate {
            window_bits: 15,
            level: 6,
            min_bytes: 256,
        },
        slot: 0,
    };
    let mut items = Vec::new();
    // Pseudo-random letters: compressible by about half, so compressed
    // frames are still large enough for the kernel to cut.
    let mut x: u64 = 1;
    let mut letter = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b"abcdefghijklmnop"[(x >> 60) as usize]
    };
    for i in 0..40u64 {
        let n = [10, 300, 5000, 70_000][i as usize % 4];
        let mut body = format!("{{\"n\":{i},\"text\":\"").into_bytes();
        body.extend((0..n).map(|_| letter()));
        items.push(event(body, i));
        if i % 5 == 0 {
            items.push(text(200, b'x'));
        }
    }
    let (server, mut client) = tcp_pair(true).await;
    let stream = Arc::new(Conn::Plain(server));
    let writer = WsWriter {
        stream: stream.clone(),
        binary: false,
        deflate: Some(deflate),
    };
    let total: usize = items
        .iter()
        .map(|i| wire_len(i, false, Some(deflate)))
        .sum();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; total];
        tokio::time::timeout(WAIT, client.read_exact(&mut got))
            .await
            .expect("all bytes in time")
            .expect("read");
        got
    });
    let (mut done, mut offset, mut cuts) = (0, 0, 0);
    while done < items.len() {
        tokio::time::timeout(WAIT, stream.writable())
            .await
            .expect("writable in time")
            .expect("writable");
        done += writer
            .write_now(&items[done..], &mut offset)
            .expect("write_now");
        if done < items.len() {
            assert!(offset < wire_len(&items[done], false, Some(deflate)));
            cuts += usize::from(offset > 0);
        }
    }
    assert!(cuts > 0, "the kernel cut some writes mid-item");
    let got = reader.await.expect("reader");
    let frames = frames_of(&got);
    assert_eq!(frames.len(), items.len());
    for (item, (rsv1, payload)) in items.iter().zip(frames) {
        let Outbound::Frame {
            bytes, publication, ..
        } = item
        else {
            unreachable!("only frames here");
        };
        let want_compressed = publication.is_some() && bytes.len() >= 256;
        assert_eq!(rsv1, want_compressed, "{} bytes", bytes.len());
        let payload = if rsv1 {
            crate::ws::deflate::zip::inflate(&payload, 1 << 20).expect("inflates")
        } else {
            payload
        };
        assert_eq!(&payload[..], &bytes[..]);
    }
}
