//! Every frame in MessagePack carries the same value tree as in JSON.

use super::*;
use crate::{
    msgpack_to_json, ClientRequest, Disconnect, DroppedRoom, ErrorCode, JoinedRoom, MemberSummary,
    StreamPosition, HERALD_JSON, MAX_MSGPACK_DEPTH,
};
use serde_json::{json, Value};

/// A MessagePack message read generically (rmp-serde into a JSON value),
/// not through the codec's own reader.
fn generic(bytes: &[u8]) -> Value {
    rmp_serde::from_slice(bytes).expect("valid MessagePack")
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.into()).expect("raw JSON")
}

fn member() -> MemberSummary {
    MemberSummary {
        user_id: "u".into(),
        connection_id: "c".into(),
        node_id: "n".into(),
    }
}

fn every_server_frame() -> Vec<ServerFrame> {
    let id = Some(RequestId::Number(7.into()));
    vec![
        ServerFrame::Authenticated {
            id: id.clone(),
            connection_id: "c1".into(),
            user_id: "u1".into(),
            node_id: "n1".into(),
            rooms: vec![JoinedRoom {
                room: "r".into(),
                epoch: "e".into(),
                offset: 3,
            }],
            heartbeat_interval_ms: 25_000,
        },
        ServerFrame::RoomJoined {
            id: Some(RequestId::String("j".into())),
            room: "r".into(),
            epoch: "e".into(),
            offset: 9,
            recovered: Some(true),
            replayed: Some(2),
            members: Some(vec![member()]),
        },
        ServerFrame::RoomJoined {
            id: None,
            room: "r".into(),
            epoch: "e".into(),
            offset: 0,
            recovered: None,
            replayed: None,
            members: None,
        },
        ServerFrame::RoomLeft {
            id: id.clone(),
            room: "r".into(),
            reason: Some("kicked".into()),
        },
        ServerFrame::MemberJoined {
            room: "r".into(),
            user_id: "u".into(),
            connection_id: "c".into(),
        },
        ServerFrame::MemberLeft {
            room: "r".into(),
            user_id: "u".into(),
            connection_id: "c".into(),
        },
        ServerFrame::Ack {
            id: RequestId::Number((-4).into()),
            epoch: Some("e".into()),
            offset: Some(u64::MAX),
        },
        ServerFrame::Ack {
            id: RequestId::Number(serde_json::Number::from_f64(1.5).expect("finite")),
            epoch: None,
            offset: None,
        },
        ServerFrame::Presence {
            id: id.clone(),
            room: "r".into(),
            members: vec![member(), member()],
        },
        ServerFrame::RpcResult {
            id: RequestId::Number(1.into()),
            data: raw(r#"{"ok":true,"n":[1,-2,3.25,null,"s"],"deep":{"x":{"y":[]}}}"#),
        },
        ServerFrame::Pong { id: None },
        ServerFrame::Pong { id },
        ServerFrame::Error {
            id: None,
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        },
        ServerFrame::Disconnect(Disconnect {
            code: 4011,
            reason: "slow_consumer".into(),
            reconnect: true,
        }),
        ServerFrame::EventsDropped {
            rooms: vec![
                DroppedRoom {
                    room: "agent:7".into(),
                    epoch: "e1".into(),
                    offset: 41,
                },
                DroppedRoom {
                    room: "chat".into(),
                    epoch: "e2".into(),
                    offset: u64::MAX,
                },
            ],
        },
    ]
}

#[test]
fn every_server_frame_carries_the_json_tree() {
    for frame in every_server_frame() {
        let packed = HERALD_MSGPACK.encode(&frame);
        assert_eq!(
            generic(&packed),
            json_of(&HERALD_JSON.encode(&frame)),
            "{frame:?}"
        );
        assert_eq!(packed[0] & 0xf0, 0x80, "a map: {frame:?}");
    }
}

#[test]
fn event_message_and_direct_frames_carry_the_json_tree() {
    let data = raw(
        r#"{"text":"h\u00e9\"llo","n":12345678901,"neg":-1,"f":0.1,"big":1e300,"list":[true,false,{}]}"#,
    );
    let position = StreamPosition::new("ep", 42);
    let from = Sender {
        user_id: "u".into(),
        connection_id: "c".into(),
    };
    for sender in [None, Some(&from)] {
        let frame = PublicationFrame::new("room:1", "tick", &data, &position, 17, "ev1", sender);
        let packed = HERALD_MSGPACK.encode_publication(&frame);
        assert_eq!(
            generic(&packed),
            json_of(&HERALD_JSON.encode_publication(&frame))
        );
    }
    let direct = DirectFrame::new("note", &data, 5, "id1");
    let packed = HERALD_MSGPACK.encode_direct(&direct);
    let tree = generic(&packed);
    assert_eq!(tree, json_of(&HERALD_JSON.encode_direct(&direct)));
    assert_eq!(tree["room"], Value::Null);
}

#[test]
fn data_keeps_native_types() {
    let data = raw(r#"{"i":3,"f":2.5,"s":"x","a":[1]}"#);
    let position = StreamPosition::new("e", 1);
    let frame = PublicationFrame::new("r", "x", &data, &position, 1, "id", None);
    let value = rmpv::decode::read_value(&mut &HERALD_MSGPACK.encode_publication(&frame)[..])
        .expect("msgpack");
    let data = value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("data")))
        .map(|(_, v)| v.clone())
        .expect("data field");
    let field = |name: &str| {
        data.as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)))
            .map(|(_, v)| v.clone())
            .expect("field")
    };
    assert!(field("i").is_u64());
    assert!(field("f").is_f64());
    assert!(field("s").is_str());
    assert!(field("a").is_array());
}

/// Every client request of docs/protocol.md, as JSON.
fn every_client_request() -> Vec<Value> {
    vec![
        json!({"type": "authenticate", "id": 1, "token": "jwt"}),
        json!({"type": "join_room", "id": "a", "room": "r"}),
        json!({"type": "join_room", "id": 2, "room": "r", "since": {"epoch": "e", "offset": 5}}),
        json!({"type": "leave_room", "id": 3, "room": "r"}),
        json!({"type": "subscribe", "id": 4, "events": ["a.*", "b"]}),
        json!({"type": "unsubscribe", "events": ["b"]}),
        json!({"type": "send_message", "id": 5, "room": "r", "event": "chat",
               "data": {"text": "hi", "n": [1, -2, 0.5, null]}}),
        json!({"type": "send_message", "room": "r", "data": "plain"}),
        json!({"type": "presence", "id": 6, "room": "r"}),
        json!({"type": "rpc", "id": 7, "method": "m", "data": {"k": 1}}),
        json!({"type": "rpc", "id": "x", "method": "m"}),
        json!({"type": "ping", "id": 8}),
        json!({"type": "ping"}),
    ]
}

#[test]
fn every_client_request_decodes_as_its_json() {
    for frame in every_client_request() {
        let packed = rmp_serde::to_vec_named(&frame).expect("encode");
        let from_msgpack = HERALD_MSGPACK.decode(&packed).expect("msgpack frame");
        let from_json = HERALD_JSON
            .decode(frame.to_string().as_bytes())
            .expect("json frame");
        assert_eq!(
            format!("{from_msgpack:?}"),
            format!("{from_json:?}"),
            "{frame}"
        );
    }
}

#[test]
fn bad_requests_get_the_json_replies() {
    for frame in [
        json!({"type": "join_room", "id": 1}),
        json!({"type": "dance", "id": 2}),
        json!({"type": "rpc", "method": "m"}),
        json!({"id": 3}),
        json!([1, 2]),
    ] {
        let packed = rmp_serde::to_vec_named(&frame).expect("encode");
        let m = HERALD_MSGPACK.decode(&packed).expect_err("refused");
        let j = HERALD_JSON
            .decode(frame.to_string().as_bytes())
            .expect_err("refused");
        assert_eq!((&m.id, m.code), (&j.id, j.code), "{frame}");
    }
}

/// `{"type":"send_message","id":9,"room":"r","data":<value>}` with a
/// MessagePack value of one's own bytes.
fn send_message_with(value: &[u8]) -> Vec<u8> {
    let mut out = b"\x84\xa4type\xacsend_message\xa4room\xa1r\xa4data".to_vec();
    out.extend_from_slice(value);
    out.extend_from_slice(b"\xa2id\x09");
    out
}

#[test]
fn values_json_cannot_carry_are_refused_naming_data() {
    let cases: [(&[u8], &str); 5] = [
        (b"\xc4\x02ab", "bin"),
        (b"\xd4\x01\x00", "ext"),
        (b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "NaN"),
        (b"\x81\x01\xa1x", "keys must be strings"),
        (b"\x91\x81\xa1k\xc4\x00", "bin"),
    ];
    for (value, reason) in cases {
        let err = HERALD_MSGPACK
            .decode(&send_message_with(value))
            .expect_err("refused");
        assert_eq!(err.code, ErrorCode::BadRequest);
        // The id comes after `data` on the wire and is still kept.
        assert_eq!(err.id, Some(RequestId::Number(9.into())));
        assert!(err.message.contains("`data"), "{}", err.message);
        assert!(err.message.contains(reason), "{}", err.message);
    }
    let err = msgpack_to_json(b"\x81\xa4data\x91\x81\xa1k\xc4\x00").expect_err("bin");
    assert_eq!(err.path, "data[0].k");
}

#[test]
fn undecodable_messages_are_bad_requests() {
    for bytes in [
        &b""[..],
        b"\xc1",
        b"\x82\xa4type",
        b"{\"type\":\"ping\"}",
        b"\x80\x80",
    ] {
        let err = HERALD_MSGPACK.decode(bytes).expect_err("refused");
        assert_eq!(err.code, ErrorCode::BadRequest, "{bytes:?}");
        assert_eq!(err.id, None);
    }
    let mut deep = vec![0x91; MAX_MSGPACK_DEPTH + 5];
    deep.push(0xc0);
    assert!(msgpack_to_json(&deep).is_err());
}

#[test]
fn encoding_failure_frame_is_valid() {
    assert_eq!(
        generic(ENCODING_FAILED),
        json!({"type": "error", "code": "internal", "message": "frame encoding failed"})
    );
}

#[test]
fn subprotocols_name_their_codecs() {
    assert_eq!(
        codec_of_subprotocol(SUBPROTOCOL_MSGPACK).map(|c| c.name()),
        Some("msgpack")
    );
    assert_eq!(
        codec_of_subprotocol(SUBPROTOCOL_JSON).map(|c| c.name()),
        Some("json")
    );
    assert!(codec_of_subprotocol("mqtt").is_none());
    assert!(HERALD_MSGPACK.binary());
    assert_ne!(HERALD_MSGPACK.slot(), HERALD_JSON.slot());
    assert!(HERALD_MSGPACK.slot() < crate::CODEC_SLOTS);
    let (_, request) = HERALD_MSGPACK
        .decode(&rmp_serde::to_vec_named(&json!({"type": "ping"})).expect("encode"))
        .expect("ping");
    assert!(matches!(request, ClientRequest::Ping));
}

#[test]
fn nesting_is_refused_where_json_refuses_it() {
    // The same request nested 1..=140 levels deep: read as MessagePack
    // exactly when its JSON twin is read.
    for levels in 1..=140usize {
        let mut packed = vec![0x82, 0xa4];
        packed.extend_from_slice(b"type");
        packed.extend_from_slice(&[0xa4]);
        packed.extend_from_slice(b"ping");
        packed.extend_from_slice(&[0xa1, b'x']);
        packed.extend(std::iter::repeat_n(0x91, levels));
        packed.push(0xc0);
        let json = format!(
            r#"{{"type":"ping","x":{}null{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        );
        let json_read = HERALD_JSON.decode(json.as_bytes()).is_ok();
        let msgpack_read = HERALD_MSGPACK.decode(&packed).is_ok();
        assert_eq!(msgpack_read, json_read, "{levels} levels");
    }
}

#[test]
fn data_serde_json_cannot_read_still_reaches_msgpack_clients() {
    for text in [r#"{"n":1e400}"#, r#"{"s":"\ud800"}"#] {
        let data = raw(text);
        let position = StreamPosition::new("e", 1);
        let frame = PublicationFrame::new("r", "x", &data, &position, 1, "id", None);
        let tree = generic(&HERALD_MSGPACK.encode_publication(&frame));
        assert_eq!(tree["type"], "event", "{text}: {tree}");
        assert_eq!(tree["data"], text, "the JSON text as a str");
    }
    // Readable data is still native values.
    let data = raw(r#"{"n":1e300}"#);
    let position = StreamPosition::new("e", 1);
    let frame = PublicationFrame::new("r", "x", &data, &position, 1, "id", None);
    let tree = generic(&HERALD_MSGPACK.encode_publication(&frame));
    assert_eq!(tree["data"], json!({"n": 1e300}));
}
