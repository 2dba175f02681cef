use super::*;
use herald_protocol::{ClientRequest, Disconnect, StreamPosition};

fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    SOCKET_IO.decode(text.as_bytes())
}

fn num(n: u64) -> Option<RequestId> {
    Some(RequestId::Number(n.into()))
}

#[test]
fn emits_with_acks_become_requests() {
    let (id, req) =
        decode(r#"23["join_room",{"room":"a","since":{"epoch":"E","offset":2}}]"#).expect("join");
    assert_eq!(id, num(3));
    assert!(
        matches!(req, ClientRequest::JoinRoom { room, since: Some(s) } if room == "a" && s.offset == 2)
    );
    let (id, req) = decode(r#"2["leave_room",{"room":"a"}]"#).expect("leave without ack");
    assert_eq!(id, None);
    assert!(matches!(req, ClientRequest::LeaveRoom { .. }));
    let (_, req) = decode(r#"21["subscribe",{"room":"a"}]"#).expect("subscribe alias");
    assert!(matches!(req, ClientRequest::JoinRoom { since: None, .. }));
    let (_, req) = decode(r#"21["subscribe",{"events":["task.*"]}]"#).expect("event filter");
    assert!(matches!(req, ClientRequest::Subscribe { events } if events == ["task.*"]));
    let (_, req) = decode(r#"21["presence",{"room":"a"}]"#).expect("presence");
    assert!(matches!(req, ClientRequest::Presence { .. }));
    let (_, req) =
        decode(r#"29["send_message",{"room":"a","event":"hi","data":{"x":[1]},"id":"no"}]"#)
            .expect("send");
    match req {
        ClientRequest::SendMessage { data, event, .. } => {
            assert_eq!(data.get(), r#"{"x":[1]}"#);
            assert_eq!(event.as_deref(), Some("hi"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let (_, req) = decode(r#"2["ping"]"#).expect("ping without payload");
    assert!(matches!(req, ClientRequest::Ping));
}

#[test]
fn rpc_is_an_emit_answered_in_its_ack() {
    let (id, req) = decode(r#"212["rpc",{"method":"select","data":{"chat":9},"id":"x"}]"#)
        .expect("rpc with an ack");
    assert_eq!(id, num(12));
    assert!(
        matches!(req, ClientRequest::Rpc { method, data } if method == "select" && data.get() == r#"{"chat":9}"#)
    );
    let err = decode(r#"2["rpc",{"method":"select"}]"#).expect_err("rpc without an ack");
    assert_eq!((err.id.clone(), err.code), (None, ErrorCode::BadRequest));
    let data = RawValue::from_string(r#"{"ok":1}"#.into()).expect("raw");
    let reply = SOCKET_IO.encode(&ServerFrame::RpcResult {
        id: RequestId::Number(12.into()),
        data,
    });
    assert_eq!(&reply[..], br#"4312[{"data":{"ok":1}}]"#);
}

#[test]
fn bad_emits_are_clear_errors_keeping_the_ack_id() {
    let err = decode(r#"51-7["up",{"_placeholder":true,"num":0}]"#).expect_err("binary");
    assert_eq!((err.id.clone(), err.code), (num(7), ErrorCode::BadRequest));
    assert_eq!(err.message, "binary attachments are not supported");
    let err = decode(r#"24["dance",{}]"#).expect_err("unknown");
    assert_eq!((err.id.clone(), err.code), (num(4), ErrorCode::UnknownType));
    assert!(err.message.contains("dance"));
    let err = decode(r#"25["join_room",{}]"#).expect_err("missing room");
    assert_eq!(err.id, num(5));
    assert!(err.message.contains("room"), "{}", err.message);
    let err = decode(r#"26["join_room",[1]]"#).expect_err("not an object");
    assert!(err.message.contains("JSON object"));
    for text in [
        "",
        "2",
        "2{",
        "2[]",
        "2[5]",
        "9",
        "1",
        "2/x,[\"ping\"]",
        "3[]",
    ] {
        let err = decode(text).expect_err(text);
        assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
    }
    assert!(SOCKET_IO.decode(b"2[\"\xff\"]").is_err());
}

#[test]
fn replies_are_acks_or_events_named_by_type() {
    let ack = SOCKET_IO.encode(&ServerFrame::Ack {
        id: RequestId::Number(9.into()),
        epoch: Some("E".into()),
        offset: Some(3),
    });
    assert_eq!(&ack[..], br#"439[{"epoch":"E","offset":3}]"#);
    let err = SOCKET_IO.encode(&ServerFrame::Error {
        id: None,
        code: ErrorCode::NotJoined,
        message: "m".into(),
    });
    assert_eq!(
        &err[..],
        br#"42["error",{"code":"not_joined","message":"m"}]"#
    );
    let joined = SOCKET_IO.encode(&ServerFrame::RoomJoined {
        id: num(2),
        room: "a".into(),
        epoch: "E".into(),
        offset: 1,
        recovered: None,
        replayed: None,
        members: None,
    });
    let packets: Vec<Bytes> = split_packets(&joined).collect();
    assert_eq!(packets.len(), 2, "an ack and an event");
    assert_eq!(
        &packets[0][..],
        br#"432[{"epoch":"E","offset":1,"room":"a"}]"#
    );
    assert_eq!(
        &packets[1][..],
        br#"42["room_joined",{"epoch":"E","offset":1,"room":"a"}]"#
    );
    let bye = SOCKET_IO.encode(&ServerFrame::Disconnect(Disconnect {
        code: 4011,
        reason: "slow_consumer".into(),
        reconnect: true,
    }));
    let v: Value = serde_json::from_slice(&bye[2..]).expect("json");
    assert_eq!(
        v[0], "herald:disconnect",
        "socket.io-client refuses `disconnect`"
    );
    assert_eq!(v[1]["code"], 4011);
    assert_eq!(v[1]["reconnect"], true);
}

#[test]
fn publications_carry_data_and_meta() {
    let data = RawValue::from_string(r#"{"x":1}"#.into()).expect("raw");
    let position = StreamPosition::new("E", 4);
    let from = Sender {
        user_id: "u".into(),
        connection_id: "c".into(),
    };
    let frame = PublicationFrame::new("r", "task.\u{1e}\"x", &data, &position, 7, "id1", None);
    let bytes = SOCKET_IO.encode_publication(&frame);
    assert_eq!(split_packets(&bytes).count(), 1, "names are escaped");
    let v: Value = serde_json::from_slice(&bytes[2..]).expect("json");
    assert_eq!(v[0], "task.\u{1e}\"x");
    assert_eq!(v[1]["x"], 1);
    assert_eq!(v[2]["room"], "r");
    assert_eq!(v[2]["offset"], 4);
    assert_eq!(v[2]["epoch"], "E");
    assert_eq!(v[2]["ts"], 7);
    assert_eq!(v[2]["event_id"], "id1");
    assert!(v[2].get("from").is_none());
    let frame = PublicationFrame::new("r", "connect", &data, &position, 7, "id1", None);
    let v: Value =
        serde_json::from_slice(&SOCKET_IO.encode_publication(&frame)[2..]).expect("json");
    assert_eq!(v[0], "herald:connect", "reserved names are prefixed");
    let frame = PublicationFrame::new("r", "message", &data, &position, 7, "id1", Some(&from));
    let v: Value =
        serde_json::from_slice(&SOCKET_IO.encode_publication(&frame)[2..]).expect("json");
    assert_eq!(v[2]["from"]["user_id"], "u");
}

#[test]
fn direct_messages_are_events_with_a_null_room() {
    let data = RawValue::from_string(r#"{"n":1}"#.into()).expect("raw");
    let bytes = SOCKET_IO.encode_direct(&DirectFrame::new("note", &data, 9, "e1"));
    assert_eq!(
        &bytes[..],
        br#"42["note",{"n":1},{"room":null,"ts":9,"event_id":"e1"}]"#
    );
    let reserved = SOCKET_IO.encode_direct(&DirectFrame::new("disconnect", &data, 9, "e1"));
    assert!(reserved.starts_with(br#"42["herald:disconnect","#));
}

#[test]
fn the_token_is_appended_without_copying_the_event() {
    let packet = Bytes::from_static(br#"42["e",1,{}]"#);
    let head = event_head(&packet).expect("an event");
    assert_eq!(head.as_ptr(), packet.as_ptr(), "shared, not copied");
    let mut whole = head.to_vec();
    whole.extend_from_slice(br#","a~E~3"]"#);
    assert_eq!(whole, br#"42["e",1,{},"a~E~3"]"#);
    assert!(event_head(&Bytes::from_static(b"431[{}]")).is_none());
    assert_eq!(split_packets(&Bytes::from_static(b"40")).count(), 1);
}

#[test]
fn events_dropped_is_an_event_of_that_name() {
    let notice = SOCKET_IO.encode(&ServerFrame::EventsDropped {
        rooms: vec![herald_protocol::DroppedRoom {
            room: "feed:1".into(),
            epoch: "E".into(),
            offset: 41,
        }],
    });
    assert_eq!(
        &notice[..],
        br#"42["events_dropped",{"rooms":[{"epoch":"E","offset":41,"room":"feed:1"}]}]"#
    );
}
