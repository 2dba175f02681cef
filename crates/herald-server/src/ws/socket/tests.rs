//! The writer's offset arithmetic on a real loopback socket pair: where a
//! write resumes (inside a header, inside a payload, on an item boundary),
//! what `done` and `offset` say after the kernel took only part of a
//! batch, batches longer than [`WRITE_BATCH`] items and larger than
//! [`COALESCE`] bytes, and the coalescing limit itself.
//!
//! The expected bytes are built here independently of [`frames`], so a
//! wrong header would show too.

use super::test_support::{tcp_pair, text, WAIT};
use super::*;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The bytes `item` puts on the wire: an unmasked final text frame
/// (RFC 6455 5.2), a bare ping, or raw bytes.
fn wire(item: &Outbound) -> Vec<u8> {
    match item {
        Outbound::Frame { bytes, .. } => {
            let n = bytes.len();
            let mut out = vec![0x81];
            if n < 126 {
                out.push(n as u8);
            } else if n <= 0xffff {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
            out.extend_from_slice(bytes);
            out
        }
        Outbound::Ping => vec![0x89, 0x00],
        Outbound::Raw(bytes) => bytes.to_vec(),
    }
}

fn wire_all(items: &[Outbound]) -> Vec<u8> {
    items.iter().flat_map(wire).collect()
}

/// Where (`done` items, `offset` bytes into the next) lies in the stream.
fn position(items: &[Outbound], done: usize, offset: usize) -> usize {
    items[..done].iter().map(|i| wire(i).len()).sum::<usize>() + offset
}

/// A connected pair: the server end (to write with a [`WsWriter`]) and
/// the client end. Small buffers make the kernel take only part of a
/// large write.
async fn pair(small_buffers: bool) -> (Arc<Conn>, TcpStream) {
    let (server, client) = tcp_pair(small_buffers).await;
    (Arc::new(Conn::Plain(server)), client)
}

/// What driving the writer to the end produced.
struct Driven {
    /// Every byte the client read.
    received: Vec<u8>,
    /// Returns that stopped inside an item (`offset` > 0).
    cut_mid_item: usize,
    /// Returns that stopped inside a frame header.
    cut_in_header: usize,
}

/// Writes `items` from (`done`, `offset`) to the end, as the send queue
/// does: write, and when the socket is full wait until it is writable.
/// After every return it reads exactly the bytes the writer says went out,
/// so an `offset` or `done` that disagrees with the kernel fails here (a
/// claim of more bytes than sent times out; fewer shows as extra bytes).
async fn drive(
    stream: &Arc<Conn>,
    client: &mut TcpStream,
    items: &[Outbound],
    mut done: usize,
    mut offset: usize,
) -> Driven {
    let writer = WsWriter {
        stream: stream.clone(),
        binary: false,
        deflate: None,
    };
    let start = position(items, done, offset);
    let mut out = Driven {
        received: Vec::new(),
        cut_mid_item: 0,
        cut_in_header: 0,
    };
    while done < items.len() {
        tokio::time::timeout(WAIT, stream.writable())
            .await
            .expect("socket never writable")
            .expect("writable");
        let n = writer
            .write_now(&items[done..], &mut offset)
            .expect("write_now");
        done += n;
        if done < items.len() && offset > 0 {
            out.cut_mid_item += 1;
            let head = match &items[done] {
                Outbound::Frame { bytes, .. } => wire(&items[done]).len() - bytes.len(),
                _ => 0,
            };
            if offset < head {
                out.cut_in_header += 1;
            }
        }
        let claimed = position(items, done, offset) - start;
        let mut chunk = vec![0u8; claimed - out.received.len()];
        tokio::time::timeout(WAIT, client.read_exact(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the writer claims {claimed} bytes written, the client got {}",
                    out.received.len()
                )
            })
            .expect("read");
        out.received.extend_from_slice(&chunk);
    }
    // Nothing beyond what was claimed: the next bytes are the end.
    let _ = socket2::SockRef::from(stream.tcp()).shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("no EOF")
        .expect("read to end");
    assert!(rest.is_empty(), "{} bytes past the claimed end", rest.len());
    out
}

/// A mix of every item kind and header size: 2-byte headers (up to 125
/// bytes), 4-byte (126..=65535), 10-byte (more), pings and raw bytes.
fn mixed() -> Vec<Outbound> {
    vec![
        text(3, b'a'),
        Outbound::Ping,
        text(125, b'b'),
        text(126, b'c'),
        Outbound::Raw(Bytes::from_static(b"\x8a\x01R")),
        text(65_535, b'd'),
        text(65_536, b'e'),
        text(0, b'f'),
        text(1, b'g'),
    ]
}

/// Resume points: every byte of each item's header (and the byte after
/// it), and the last byte of each item.
fn resume_points(items: &[Outbound]) -> Vec<(usize, usize)> {
    let mut cuts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let len = wire(item).len();
        cuts.extend((0..len.min(MAX_HEADER + 1)).map(|off| (i, off)));
        cuts.push((i, len - 1));
    }
    cuts
}

#[tokio::test]
async fn resumes_at_every_byte_of_every_header_and_item_boundary() {
    let items = mixed();
    let all = wire_all(&items);
    for (done, offset) in resume_points(&items) {
        // Each run ends its pair with a FIN: one pair per resume point.
        let (stream, mut client) = pair(false).await;
        let at = position(&items, done, offset);
        let got = drive(&stream, &mut client, &items, done, offset).await;
        assert!(
            got.received == all[at..],
            "resuming at item {done} + {offset} (byte {at}) wrote other bytes"
        );
    }
}

/// A client that reads only what the writer says it wrote, through 4 KiB
/// buffers: the kernel takes part of many batches (coalesced ones of tiny
/// frames and vectored ones of large frames), cutting items mid-header and
/// mid-payload; each return must name exactly the bytes taken, and each
/// resume must go on from there.
#[tokio::test]
async fn a_full_socket_reports_exactly_the_bytes_it_took_and_resumes_there() {
    let mut items = Vec::new();
    for round in 0..40u8 {
        // Tiny frames (a header is most of each) in coalesced batches...
        items.extend((0..40usize).map(|i| text(i % 3, round)));
        items.push(Outbound::Ping);
        // ...then frames with 4- and 10-byte headers in vectored batches.
        items.push(text(126 + usize::from(round), b'm'));
        items.push(text(70_000 + usize::from(round), b'l'));
        items.push(Outbound::Raw(Bytes::from_static(b"\x8a\x00")));
    }
    let all = wire_all(&items);
    let (stream, mut client) = pair(true).await;
    let got = drive(&stream, &mut client, &items, 0, 0).await;
    assert!(got.received == all, "the stream differs from the items");
    assert!(
        got.cut_mid_item > 0,
        "the socket never stopped inside an item ({} cuts in headers)",
        got.cut_in_header
    );
}

/// More items than one vectored write takes ([`WRITE_BATCH`]) and more
/// bytes than one coalesced buffer ([`COALESCE`]), into a socket with
/// room: one call writes them all, in order.
#[tokio::test]
async fn long_batches_go_out_whole_and_in_order() {
    for (count, size) in [(400, 1), (100, 40), (3 * WRITE_BATCH + 1, 600)] {
        let items: Vec<Outbound> = (0..count).map(|i| text(size, i as u8)).collect();
        let all = wire_all(&items);
        assert!(all.len() > COALESCE, "{count} x {size}");
        let (stream, mut client) = pair(false).await;
        tokio::time::timeout(WAIT, stream.writable())
            .await
            .expect("writable in time")
            .expect("writable");
        let writer = WsWriter {
            stream: stream.clone(),
            binary: false,
            deflate: None,
        };
        let mut offset = 0;
        let done = writer.write_now(&items, &mut offset).expect("write");
        assert_eq!((done, offset), (count, 0), "{count} x {size}");
        let mut got = vec![0u8; all.len()];
        tokio::time::timeout(WAIT, client.read_exact(&mut got))
            .await
            .expect("read in time")
            .expect("read");
        assert!(got == all, "{count} x {size}: other bytes");
    }
}

/// The coalescing limit: slices totalling exactly [`COALESCE`] bytes are
/// copied into the one buffer (which must hold them), one byte more goes
/// out as a vectored write; both arrive as given.
#[tokio::test]
async fn the_coalescing_limit_and_one_over_both_write_every_byte() {
    for total in [COALESCE - 1, COALESCE, COALESCE + 1] {
        let a = vec![b'a'; 100];
        let b = vec![b'b'; 7];
        let c = vec![b'c'; total - a.len() - b.len()];
        let slices = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let (stream, mut client) = pair(false).await;
        tokio::time::timeout(WAIT, stream.writable())
            .await
            .expect("writable in time")
            .expect("writable");
        assert_eq!(write_slices(&stream, &slices).expect("write"), total);
        let mut got = vec![0u8; total];
        tokio::time::timeout(WAIT, client.read_exact(&mut got))
            .await
            .expect("read in time")
            .expect("read");
        assert!(got == [a, b, c].concat(), "{total} bytes: other bytes");
    }
    // Through the writer: two frames whose wire bytes total the limit, and
    // one byte more.
    for second in [COALESCE - 127 - 4, COALESCE - 127 - 4 + 1] {
        let items = vec![text(125, b'x'), text(second, b'y')];
        let all = wire_all(&items);
        assert!(all.len() == COALESCE || all.len() == COALESCE + 1);
        let (stream, mut client) = pair(false).await;
        let got = drive(&stream, &mut client, &items, 0, 0).await;
        assert!(got.received == all, "{} bytes: other bytes", all.len());
    }
}
