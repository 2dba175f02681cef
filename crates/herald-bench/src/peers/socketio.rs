//! One Socket.IO v4 client for every Socket.IO server: Node's reference
//! server (bench/peers/socketio/server.js) and Herald's own `/socket.io/`
//! endpoint, driven the same way (engine.io protocol 4 over WebSocket, no
//! polling, as `io(url, {transports: ["websocket"], auth: {token}})`).
//!
//! Frames are engine.io packets: `0{…}` open (server), `2`/`3` ping/pong,
//! `4…` a Socket.IO packet. The client sends `40{"token":"<jwt>"}` (CONNECT
//! to `/` with its auth payload) and waits for `40{"sid":…}` (or `44{…}`,
//! `connect_error`), then `420["join_room",{"room":…}]` and waits for the
//! ack `430[{…}]`. Events arrive as `42["<event>",data,meta?,token?]`:
//! Node sends `data` only; Herald adds `meta` (`{room, offset, epoch, …}`)
//! and, with `socketio.recovery`, the connection's recovery token.
//!
//! Loss is counted by the room's position: Herald's `meta.offset` when
//! present (publishes then go through Herald's API, which returns offsets),
//! else the publisher's per-room sequence number `s` in `data`.

use super::{expect, Incoming, SeqStamp};
use crate::client::Ws;
use clap::ValueEnum;
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

/// Which Socket.IO server `--target socketio` measures: the client is the
/// same, only rooms' names and the publish API differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketIoServer {
    /// Node's Socket.IO 4 with bench/peers/socketio/server.js:
    /// `POST /publish`, rooms `{ns}-{n}`.
    Node,
    /// Herald's Socket.IO endpoint: `POST /api/v1/publish` with the API
    /// key, rooms `{ns}:{n}` (a namespace the config lets clients join).
    Herald,
}

/// A Socket.IO server and where its endpoint lives.
#[derive(Debug, Clone)]
pub struct SocketIo {
    /// Whose server it is.
    pub server: SocketIoServer,
    /// The endpoint's path, e.g. `/socket.io/`.
    pub path: String,
}

/// The ack id of the one `join_room` each client sends.
const JOIN_ACK_ID: u64 = 0;

impl SocketIo {
    /// `ws://addr<path>?EIO=4&transport=websocket`.
    pub fn ws_url(&self, addr: SocketAddr) -> String {
        let mut path = self.path.clone();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if !path.ends_with('/') {
            path.push('/');
        }
        format!("ws://{addr}{path}?EIO=4&transport=websocket")
    }

    /// Room `n` of namespace `ns`, named as the server wants it.
    pub fn room(&self, ns: &str, n: u64) -> String {
        match self.server {
            SocketIoServer::Node => format!("{ns}-{n}"),
            SocketIoServer::Herald => format!("{ns}:{n}"),
        }
    }
}

/// The CONNECT packet carrying `token` as its auth payload.
pub fn connect_packet(token: &str) -> String {
    format!(r#"40{{"token":{}}}"#, serde_json::Value::from(token))
}

/// The `join_room` emit for `room`, with an ack id.
pub fn join_packet(room: &str) -> String {
    format!(
        r#"42{JOIN_ACK_ID}["join_room",{{"room":{}}}]"#,
        serde_json::Value::from(room)
    )
}

/// engine.io open, then the Socket.IO CONNECT to `/` with `{token}` and
/// its answer. A refusal comes back as its `message` (Herald: the error
/// code).
pub async fn handshake(ws: &mut Ws, token: &str) -> Result<(), String> {
    expect(ws, "engine.io open", |t| match t.as_bytes().first() {
        Some(b'0') => Some(Ok(())),
        _ => Some(Err("unexpected first frame".into())),
    })
    .await?;
    ws.send(Message::text(connect_packet(token)))
        .await
        .map_err(|e| format!("ws: {e}"))?;
    expect(ws, "socket.io connect", connect_answer).await
}

fn connect_answer(t: &str) -> Option<Result<(), String>> {
    if t.starts_with("40") {
        Some(Ok(()))
    } else if let Some(body) = t.strip_prefix("44") {
        #[derive(Deserialize)]
        struct Refusal {
            #[serde(default)]
            message: String,
        }
        let msg = serde_json::from_str::<Refusal>(body)
            .map(|r| r.message)
            .unwrap_or_default();
        Some(Err(format!("connect_error {msg}")))
    } else {
        None
    }
}

/// `emit("join_room", {room}, ack)` and waits for the ack. Returns the
/// room's position at the join: the ack's `offset` (Herald's `room_joined`),
/// else 0 (Node's ack carries none; its sequence numbers start at 1).
pub async fn join(ws: &mut Ws, room: &str) -> Result<u64, String> {
    ws.send(Message::text(join_packet(room)))
        .await
        .map_err(|e| format!("ws: {e}"))?;
    expect(ws, "join_room ack", join_answer).await
}

fn join_answer(t: &str) -> Option<Result<u64, String>> {
    let body = t.strip_prefix("43")?;
    let body = body.strip_prefix(&JOIN_ACK_ID.to_string())?;
    #[derive(Deserialize)]
    struct Ack {
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    match serde_json::from_str::<(Ack,)>(body) {
        Ok((Ack { code: Some(c), .. },)) => Some(Err(format!("join_room refused {c}"))),
        Ok((ack,)) => Some(Ok(ack.offset.unwrap_or(0))),
        Err(_) => Some(Err("unparsable join_room ack".into())),
    }
}

/// The part of Herald's event `meta` the bench reads.
#[derive(Deserialize)]
struct Meta {
    offset: u64,
}

/// Classifies one engine.io text frame.
pub fn incoming(text: &str) -> Incoming {
    if text == "2" {
        return Incoming::Reply("3".into());
    }
    let Some(body) = text.strip_prefix("42") else {
        return Incoming::Ignore;
    };
    // `42["bench",{...}(,meta(,token))]`: parsed lazily, element by element.
    let Ok(args) = serde_json::from_str::<Vec<&RawValue>>(body) else {
        return Incoming::Bad("unparsable socket.io event");
    };
    let Some(Ok(name)) = args.first().map(|n| serde_json::from_str::<&str>(n.get())) else {
        return Incoming::Bad("socket.io event without a name");
    };
    match name {
        "bench" => {}
        "disconnect" => return Incoming::Bad("socket.io disconnect event"),
        "error" => return Incoming::Bad("socket.io error event"),
        // `authenticated`, `room_joined`, `member_*`: chatter here.
        _ => return Incoming::Ignore,
    }
    let Some(Ok(mut stamp)) = args
        .get(1)
        .map(|d| serde_json::from_str::<SeqStamp>(d.get()))
    else {
        return Incoming::Bad("socket.io event without stamp");
    };
    if let Some(meta) = args.get(2) {
        match serde_json::from_str::<Meta>(meta.get()) {
            Ok(m) => stamp.s = m.offset,
            Err(_) => return Incoming::Bad("socket.io event meta without offset"),
        }
    }
    Incoming::Event(stamp)
}

/// The second element (`data`) of a `42[...]` event frame.
pub fn event_data(text: &str) -> Option<&str> {
    let args = serde_json::from_str::<Vec<&RawValue>>(text.strip_prefix("42")?).ok()?;
    args.get(1).map(|d| d.get())
}

/// `POST /publish {room, event, data}` to Node's peer server.
pub fn publish_request(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    event: &str,
    data: &str,
) -> reqwest::RequestBuilder {
    let body = format!(
        r#"{{"room":{},"event":{},"data":{data}}}"#,
        serde_json::Value::from(room),
        serde_json::Value::from(event)
    );
    http.post(format!("{base}/publish"))
        .header("content-type", "application/json")
        .body(body)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_events_pings_and_chatter() {
        assert_eq!(
            incoming(r#"42["bench",{"t":12,"s":3,"p":"xx"}]"#),
            Incoming::Event(SeqStamp { t: 12, s: 3 })
        );
        assert_eq!(incoming("2"), Incoming::Reply("3".into()));
        assert_eq!(incoming(r#"40{"sid":"abc"}"#), Incoming::Ignore);
        assert_eq!(
            incoming(r#"42["bench"#),
            Incoming::Bad("unparsable socket.io event")
        );
        assert_eq!(
            incoming(r#"42["bench",{"x":1}]"#),
            Incoming::Bad("socket.io event without stamp")
        );
        assert_eq!(
            incoming(r#"42[]"#),
            Incoming::Bad("socket.io event without a name")
        );
    }

    #[test]
    fn herald_events_count_by_meta_offset() {
        let ev = r#"42["bench",{"t":12,"s":3,"p":"x"},{"room":"bench:1","offset":41,"epoch":"e","ts":1,"event_id":"i"},"bench:1~e~41"]"#;
        assert_eq!(incoming(ev), Incoming::Event(SeqStamp { t: 12, s: 41 }));
        assert_eq!(
            incoming(r#"42["authenticated",{"connection_id":"c"},"tok"]"#),
            Incoming::Ignore
        );
        assert_eq!(
            incoming(r#"42["room_joined",{"room":"bench:1","offset":4},"tok"]"#),
            Incoming::Ignore
        );
        assert_eq!(
            incoming(r#"42["disconnect",{"code":4011,"reason":"drain","reconnect":true}]"#),
            Incoming::Bad("socket.io disconnect event")
        );
        assert_eq!(
            incoming(r#"42["bench",{"t":1,"s":1},{"room":"r"}]"#),
            Incoming::Bad("socket.io event meta without offset")
        );
    }

    #[test]
    fn event_data_is_the_second_element() {
        let data = crate::agent::agent_data_at(8, 1_796_000_000_000_000, 1024);
        let frame = format!(r#"42["bench",{data},{{"room":"r","offset":8}}]"#);
        assert_eq!(event_data(&frame), Some(data.as_str()));
        assert!(event_data(&frame).is_some_and(crate::agent::check));
        assert_eq!(event_data(r#"42["bench"]"#), None);
        assert_eq!(event_data("2"), None);
    }

    #[test]
    fn connect_and_join_packets() {
        assert_eq!(connect_packet("a.b\"c"), r#"40{"token":"a.b\"c"}"#);
        assert_eq!(
            join_packet("bench:3"),
            r#"420["join_room",{"room":"bench:3"}]"#
        );
        assert_eq!(connect_answer(r#"40{"sid":"x","pid":"y"}"#), Some(Ok(())));
        assert_eq!(
            connect_answer(r#"44{"message":"unauthorized","data":{"code":"unauthorized"}}"#),
            Some(Err("connect_error unauthorized".into()))
        );
        assert_eq!(connect_answer(r#"42["authenticated",{}]"#), None);
        assert_eq!(join_answer(r#"430[{"room":"bench-1"}]"#), Some(Ok(0)));
        assert_eq!(
            join_answer(r#"430[{"room":"bench:1","epoch":"e","offset":17}]"#),
            Some(Ok(17))
        );
        assert_eq!(
            join_answer(r#"430[{"code":"forbidden","message":"no"}]"#),
            Some(Err(r#"join_room refused "forbidden""#.into()))
        );
        assert_eq!(join_answer(r#"42["room_joined",{}]"#), None);
        assert_eq!(
            join_answer("430nope"),
            Some(Err("unparsable join_room ack".into()))
        );
    }

    #[test]
    fn url_and_rooms_per_server() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("test input");
        let node = SocketIo {
            server: SocketIoServer::Node,
            path: "/socket.io/".into(),
        };
        assert_eq!(
            node.ws_url(addr),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(node.room("bench", 3), "bench-3");
        let herald = SocketIo {
            server: SocketIoServer::Herald,
            path: "rt".into(),
        };
        assert_eq!(
            herald.ws_url(addr),
            "ws://127.0.0.1:9/rt/?EIO=4&transport=websocket"
        );
        assert_eq!(herald.room("bench", 3), "bench:3");
        assert_eq!(percent_encode("a:b c"), "a%3Ab%20c");
    }
}
