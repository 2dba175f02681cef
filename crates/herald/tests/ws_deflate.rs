//! permessage-deflate (RFC 7692) on `/ws`: the negotiation answers, one
//! fan-out to a compressing and a plain recipient, `min_bytes`, compressed
//! client messages, a deflate bomb, compression being off by default, and
//! `herald.v1.msgpack` frames compressed (each codec's own bytes).
//! The client is the tests' hand-made one (tungstenite has no deflate);
//! flate2 decodes and encodes as a client would. Third-party clients are
//! in clients/python/tests/test_ws_deflate.py, tests/browser.rs and
//! clients/socketio/test.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;
const ON: &str = "[compression]\nenabled = true\nmin_bytes = 256\n";
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// The extension answer in a handshake, if any.
fn extension(handshake: &str) -> Option<String> {
    handshake.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    })
}

/// A message payload inflated as a client does (RFC 7692 7.2.2).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, 15);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate data");
    out
}

/// `data` compressed as a client with no context takeover does.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut out = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert_eq!(c.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame with RSV1 (a compressed message's first frame).
fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(fin, opcode, payload, true);
    frame[0] |= 0x40;
    frame
}

/// A raw client of `sub`, authenticated, sending `headers` in the upgrade.
async fn raw_user(node: &TestNode, sub: &str, headers: &str) -> RawWs {
    let claims = json!({"projects": ["deflate", "zin"]});
    let token = node.token(sub, &[], None, claims, std::time::Duration::from_secs(3600));
    let path = format!("/ws?token={token}");
    let mut ws = RawWs::connect_with_headers(&node.addr(), &path, headers).await;
    let first = ws.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(first["type"], "authenticated", "{first}");
    ws
}

/// The next data frame of `opcode`'s payload, inflated when RSV1 is set;
/// with whether it was.
async fn next_payload(ws: &mut RawWs, opcode: u8) -> (Vec<u8>, bool) {
    loop {
        let f = ws.next_frame(FRAME_WAIT).await.expect("a frame");
        if f.opcode != opcode {
            continue;
        }
        if f.rsv1 {
            return (inflate(&f.payload), true);
        }
        return (f.payload, false);
    }
}

/// The next text frame's JSON, inflated when RSV1 is set; with whether it was.
async fn next_event(ws: &mut RawWs) -> (Value, bool) {
    let (bytes, compressed) = next_payload(ws, TEXT).await;
    (serde_json::from_slice(&bytes).expect("JSON"), compressed)
}

/// The next room event (skipping presence and other frames).
async fn next_room_event(ws: &mut RawWs) -> (Value, bool) {
    loop {
        let (frame, compressed) = next_event(ws).await;
        if frame["type"] == "event" {
            return (frame, compressed);
        }
        assert!(!compressed, "only room events are compressed: {frame}");
    }
}

/// The metric once it reads `want`, or its last value after a deadline.
async fn wait_metric(node: &TestNode, name: &str, want: f64) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let value = node.metric_sum(name).await;
        if value == Some(want) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn raw_join(ws: &mut RawWs, room: &str) {
    let join = json!({"type": "join_room", "id": 1, "room": room}).to_string();
    ws.send_frame(TEXT, join.as_bytes()).await.expect("write");
    let (reply, _) = next_event(ws).await;
    assert_eq!(reply["type"], "room_joined", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_answers_offers_and_declines_bad_ones() {
    let node = TestNode::start(ON).await;
    let addr = node.addr();
    let both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let cases: [(&str, Option<String>); 6] = [
        ("", None),
        (OFFER, Some(both.to_owned())),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
            Some(format!("{both}; server_max_window_bits=10")),
        ),
        // Several offers: the first acceptable one wins.
        (
            "Sec-WebSocket-Extensions: permessage-deflate; x=1, permessage-deflate; server_max_window_bits=11\r\n",
            Some(format!("{both}; server_max_window_bits=11")),
        ),
        // Malformed or unsupported: declined, the upgrade still succeeds.
        (
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=20\r\n",
            None,
        ),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n",
            None,
        ),
    ];
    for (headers, want) in cases {
        let ws = RawWs::connect_with_headers(&addr, "/ws", headers).await;
        assert_eq!(extension(&ws.handshake), want, "offer {headers:?}");
    }
    // Off by default: no answer to an offer.
    let off = TestNode::start("").await;
    let ws = RawWs::connect_with_headers(&off.addr(), "/ws", OFFER).await;
    assert_eq!(extension(&ws.handshake), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fan_out_reaches_compressing_and_plain_recipients_alike() {
    let node = TestNode::start_process(ON).await;
    let mut zipped = raw_user(&node, "zip", OFFER).await;
    let small_window = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n";
    let mut narrow = raw_user(&node, "narrow", small_window).await;
    let mut plain = raw_user(&node, "plain", "").await;
    assert!(extension(&plain.handshake).is_none());
    for ws in [&mut zipped, &mut narrow, &mut plain] {
        raw_join(ws, "project:deflate").await;
    }
    let big = json!({"text": "the quick brown fox jumps over the lazy dog ".repeat(40)});
    let small = json!({"n": 1});
    node.publish("project:deflate", "big", big.clone()).await;
    node.publish("project:deflate", "small", small.clone())
        .await;
    let (plain_big, plain_zipped) = next_room_event(&mut plain).await;
    let (plain_small, _) = next_room_event(&mut plain).await;
    assert!(!plain_zipped, "a plain recipient never gets RSV1");
    assert_eq!(plain_big["data"], big);
    for ws in [&mut zipped, &mut narrow] {
        let (event, compressed) = next_room_event(ws).await;
        assert!(compressed, "an event over min_bytes is compressed");
        assert_eq!(event, plain_big, "the same frame, compressed");
        let (event, compressed) = next_room_event(ws).await;
        assert!(!compressed, "an event under min_bytes goes plain");
        assert_eq!(event, plain_small);
    }
    assert_eq!(plain_small["data"], small);
    // Compressed once for the event per window, sent to both recipients.
    // Counted once the write returned, which may be just after the
    // client read the bytes: waited for.
    let frames = wait_metric(&node, "herald_ws_compressed_frames_total", 2.0).await;
    assert_eq!(frames, Some(2.0));
    let events = node.metric_sum("herald_ws_compressed_events_total").await;
    assert_eq!(events, Some(2.0), "one per (event, window): 15 and 9 bits");
    let negotiated = node
        .metric_sum("herald_ws_compression_negotiated_total")
        .await;
    assert_eq!(negotiated, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_client_messages_are_inflated() {
    let node = TestNode::start(ON).await;
    let mut ws = raw_user(&node, "sender", OFFER).await;
    // One frame.
    let join = json!({"type": "join_room", "id": 1, "room": "project:zin"}).to_string();
    ws.send_raw(&compressed_frame(true, TEXT, &deflate(join.as_bytes())))
        .await
        .expect("write");
    let (reply, _) = next_event(&mut ws).await;
    assert_eq!(reply["type"], "room_joined", "{reply}");
    // Fragmented: RSV1 on the first frame only.
    let ping = deflate(json!({"type": "ping", "id": 2}).to_string().as_bytes());
    let (a, b) = ping.split_at(ping.len() / 2);
    let mut bytes = compressed_frame(false, TEXT, a);
    bytes.extend(client_frame(true, CONTINUATION, b, true));
    ws.send_raw(&bytes).await.expect("write");
    let (reply, _) = next_event(&mut ws).await;
    assert_eq!(reply, json!({"type": "pong", "id": 2}));
    // RSV1 on a continuation frame breaks the framing: 1002.
    let mut bytes = compressed_frame(false, TEXT, a);
    bytes.extend(compressed_frame(true, CONTINUATION, b));
    ws.send_raw(&bytes).await.expect("write");
    let end = ws.read_until_end(FRAME_WAIT).await;
    assert_eq!(end.close.map(|c| c.0), Some(1002));
    // Without the extension RSV1 is a protocol error, as before.
    let mut plain = raw_user(&node, "plain", "").await;
    plain
        .send_raw(&compressed_frame(true, TEXT, &deflate(b"{}")))
        .await
        .expect("write");
    let end = plain.read_until_end(FRAME_WAIT).await;
    assert_eq!(end.close.map(|c| c.0), Some(1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_is_cut_at_the_message_limit() {
    let node = TestNode::start(&format!("{ON}[limits]\nmax_message_bytes = 65536\n")).await;
    let mut ws = raw_user(&node, "bomber", OFFER).await;
    // 16 MiB of spaces inside a JSON string: a few KiB compressed.
    let mut bomb = br#"{"type":"ping","id":1,"x":""#.to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 16 << 20));
    bomb.extend_from_slice(br#""}"#);
    let z = deflate(&bomb);
    assert!(
        z.len() < 65536,
        "the compressed frame itself is within limits"
    );
    ws.send_raw(&compressed_frame(true, TEXT, &z))
        .await
        .expect("write");
    let end = ws.read_until_end(FRAME_WAIT).await;
    assert_eq!(end.close.as_ref().map(|c| c.0), Some(1009), "{end:?}");
}

/// The next binary frame's MessagePack as its JSON tree, inflated when RSV1
/// is set; with whether it was.
async fn next_msgpack(ws: &mut RawWs) -> (Value, bool) {
    let (bytes, compressed) = next_payload(ws, BINARY).await;
    (
        rmp_serde::from_slice(&bytes).expect("MessagePack"),
        compressed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_events_are_compressed_msgpack_beside_compressed_json() {
    // One event to a compressing JSON client and a compressing MessagePack
    // client: each gets its own codec's frame compressed (the compressed
    // bytes are cached per codec slot, not shared across codecs).
    let node = TestNode::start_process(ON).await;
    let mut json_ws = raw_user(&node, "zjson", OFFER).await;
    raw_join(&mut json_ws, "project:deflate").await;

    let claims = json!({"projects": ["deflate"]});
    let token = node.token(
        "zpack",
        &[],
        None,
        claims,
        std::time::Duration::from_secs(3600),
    );
    let headers = format!("{OFFER}Sec-WebSocket-Protocol: herald.v1.msgpack\r\n");
    let path = format!("/ws?token={token}");
    let mut packed = RawWs::connect_with_headers(&node.addr(), &path, &headers).await;
    assert!(
        extension(&packed.handshake).is_some(),
        "{}",
        packed.handshake
    );
    let (first, _) = next_msgpack(&mut packed).await;
    assert_eq!(first["type"], "authenticated", "{first}");
    let join = json!({"type": "join_room", "id": 1, "room": "project:deflate"});
    let join = rmp_serde::to_vec_named(&join).expect("encode");
    packed.send_frame(BINARY, &join).await.expect("write");
    let (reply, _) = next_msgpack(&mut packed).await;
    assert_eq!(reply["type"], "room_joined", "{reply}");

    let big = json!({"text": "the quick brown fox jumps over the lazy dog ".repeat(40), "n": 7});
    node.publish("project:deflate", "big", big.clone()).await;
    let (as_json, json_zipped) = next_room_event(&mut json_ws).await;
    let (as_msgpack, msgpack_zipped) = loop {
        let (frame, compressed) = next_msgpack(&mut packed).await;
        if frame["type"] == "event" {
            break (frame, compressed);
        }
        assert!(!compressed, "only room events are compressed: {frame}");
    };
    assert!(json_zipped && msgpack_zipped, "both over min_bytes");
    assert_eq!(as_json["data"], big);
    assert_eq!(as_msgpack, as_json, "the same event in each codec");
    let events = wait_metric(&node, "herald_ws_compressed_events_total", 2.0).await;
    assert_eq!(events, Some(2.0), "compressed once per codec");
}
