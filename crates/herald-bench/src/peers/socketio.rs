//! Socket.IO v4 over a raw WebSocket (engine.io protocol 4, no polling).
//!
//! Frames are engine.io packets: `0{…}` open (server), `2`/`3` ping/pong,
//! `4…` a Socket.IO packet: `40` connect to `/` (client), `40{"sid":…}` its
//! answer, `42["event",data]` an event. The peer server
//! (bench/peers/socketio/server.js) joins each socket to the room in its
//! `room` query parameter and publishes on `POST /publish`.

use super::{expect, Incoming, SeqStamp};
use crate::client::Ws;
use futures_util::SinkExt;
use serde_json::value::RawValue;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

/// `ws://addr/socket.io/?EIO=4&transport=websocket&room=<room>`.
pub fn ws_url(addr: SocketAddr, room: &str) -> String {
    format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket&room={}",
        percent_encode(room)
    )
}

/// engine.io open, then the Socket.IO connect to `/` and its answer.
pub async fn handshake(ws: &mut Ws) -> Result<(), String> {
    expect(ws, "engine.io open", |t| match t.as_bytes().first() {
        Some(b'0') => Some(Ok(())),
        _ => Some(Err("unexpected first frame".into())),
    })
    .await?;
    ws.send(Message::text("40"))
        .await
        .map_err(|e| format!("ws: {e}"))?;
    expect(ws, "socket.io connect", |t| {
        if t.starts_with("40") {
            Some(Ok(()))
        } else if t.starts_with("44") {
            Some(Err("connect_error".into()))
        } else {
            None
        }
    })
    .await
}

/// Classifies one engine.io text frame.
pub fn incoming(text: &str) -> Incoming {
    if text == "2" {
        return Incoming::Reply("3".into());
    }
    let Some(body) = text.strip_prefix("42") else {
        return Incoming::Ignore;
    };
    // `42["bench",{...}]`: a two-element array, the data parsed on demand.
    let Ok((_event, data)) = serde_json::from_str::<(&str, &RawValue)>(body) else {
        return Incoming::Bad("unparsable socket.io event");
    };
    match serde_json::from_str::<SeqStamp>(data.get()) {
        Ok(st) => Incoming::Event(st),
        Err(_) => Incoming::Bad("socket.io event without stamp"),
    }
}

/// `POST /publish {room, event, data}` to the peer server.
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
    fn events_pings_and_chatter() {
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
    }

    #[test]
    fn url_carries_the_room() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("test input");
        assert_eq!(
            ws_url(addr, "bench-3"),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket&room=bench-3"
        );
        assert_eq!(percent_encode("a:b c"), "a%3Ab%20c");
    }
}
