//! The Pusher protocol (version 7), as Sockudo speaks it.
//!
//! A client connects to `/app/<key>`, gets `pusher:connection_established`,
//! sends `pusher:subscribe` for a public channel (no auth needed) and gets
//! `pusher_internal:subscription_succeeded`. Events arrive as
//! `{"event":…,"channel":…,"data":"<JSON as a string>"}`; `pusher:ping`
//! is answered with `pusher:pong`. Publishing goes through the signed HTTP
//! API, `POST /apps/<id>/events`.

use super::{expect, Incoming, SeqStamp};
use crate::client::Ws;
use crate::metrics::now_us;
use futures_util::SinkExt;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

/// One Pusher app: what clients connect with and publishers sign with.
#[derive(Clone)]
pub struct PusherApp {
    /// App id (in the HTTP API's path).
    pub id: String,
    /// App key (in the WebSocket path and `auth_key`).
    pub key: String,
    /// App secret (signs HTTP API requests).
    pub secret: String,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

impl PusherApp {
    /// `ws://addr/app/<key>?protocol=7&client=herald-bench&version=1`.
    pub fn ws_url(&self, addr: SocketAddr) -> String {
        format!(
            "ws://{addr}/app/{}?protocol=7&client=herald-bench&version=1",
            super::socketio::percent_encode(&self.key)
        )
    }

    /// `POST /apps/<id>/events`, signed.
    pub fn publish_request(
        &self,
        http: &reqwest::Client,
        base: &str,
        room: &str,
        event: &str,
        data: &str,
    ) -> reqwest::RequestBuilder {
        // Pusher's `data` is a string: the JSON object travels encoded.
        let body = format!(
            r#"{{"name":{},"channels":[{}],"data":{}}}"#,
            serde_json::Value::from(event),
            serde_json::Value::from(room),
            serde_json::Value::from(data)
        );
        let path = format!("/apps/{}/events", self.id);
        let query = self.signed_query("POST", &path, &body, now_us() / 1_000_000);
        http.post(format!("{base}{path}?{query}"))
            .header("content-type", "application/json")
            .body(body)
    }

    /// The query string of a signed API request: `auth_key`,
    /// `auth_timestamp`, `auth_version`, `body_md5` (sorted, as signed) and
    /// `auth_signature`, the hex HMAC-SHA256 of "METHOD\nPATH\nQUERY".
    pub fn signed_query(&self, method: &str, path: &str, body: &str, timestamp: u64) -> String {
        let query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
            self.key,
            hex(&Md5::digest(body.as_bytes()))
        );
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()) {
            Ok(m) => m,
            // HMAC takes keys of any length; this arm is never taken.
            Err(_) => return query,
        };
        mac.update(format!("{method}\n{path}\n{query}").as_bytes());
        let sig = hex(&mac.finalize().into_bytes());
        format!("{query}&auth_signature={sig}")
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Waits for `pusher:connection_established`.
pub async fn handshake(ws: &mut Ws) -> Result<(), String> {
    expect(ws, "pusher:connection_established", |t| {
        let f: Frame = match serde_json::from_str(t) {
            Ok(f) => f,
            Err(_) => return Some(Err("unparsable first frame".into())),
        };
        match f.event.as_ref() {
            "pusher:connection_established" => Some(Ok(())),
            "pusher:error" => Some(Err(format!("pusher:error {}", error_code(f.data)))),
            _ => None,
        }
    })
    .await
}

/// Subscribes to the public channel `room` and waits for the confirmation.
pub async fn subscribe(ws: &mut Ws, room: &str) -> Result<(), String> {
    let frame = format!(
        r#"{{"event":"pusher:subscribe","data":{{"channel":{}}}}}"#,
        serde_json::Value::from(room)
    );
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("ws: {e}"))?;
    expect(ws, "subscription_succeeded", |t| {
        let f: Frame = match serde_json::from_str(t) {
            Ok(f) => f,
            Err(_) => return Some(Err("unparsable frame".into())),
        };
        match f.event.as_ref() {
            "pusher_internal:subscription_succeeded" => Some(Ok(())),
            "pusher:error" | "pusher:subscription_error" => {
                Some(Err(format!("{} {}", f.event, error_code(f.data))))
            }
            _ => None,
        }
    })
    .await
}

fn error_code(data: Option<&RawValue>) -> String {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: Option<u64>,
    }
    data.and_then(|d| serde_json::from_str::<E>(d.get()).ok())
        .and_then(|e| e.code)
        .map(|c| c.to_string())
        .unwrap_or_default()
}

/// Classifies one Pusher frame.
pub fn incoming(text: &str) -> Incoming {
    let Ok(f) = serde_json::from_str::<Frame>(text) else {
        return Incoming::Bad("unparsable pusher frame");
    };
    match f.event.as_ref() {
        "pusher:ping" => Incoming::Reply(r#"{"event":"pusher:pong","data":{}}"#.into()),
        e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => Incoming::Ignore,
        _ => {
            let Some(data) = f.data else {
                return Incoming::Bad("pusher event without data");
            };
            // `data` is normally a string holding JSON; accept an object too.
            let stamp = match serde_json::from_str::<Cow<str>>(data.get()) {
                Ok(inner) => serde_json::from_str::<SeqStamp>(&inner),
                Err(_) => serde_json::from_str::<SeqStamp>(data.get()),
            };
            match stamp {
                Ok(st) => Incoming::Event(st),
                Err(_) => Incoming::Bad("pusher event without stamp"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_pushers_documented_example() {
        // The worked example of Pusher's HTTP API reference.
        let app = PusherApp {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = app.signed_query("POST", "/apps/3/events", body, 1353088179);
        assert_eq!(
            q,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn events_pings_and_chatter() {
        assert_eq!(
            incoming(
                r#"{"event":"bench","channel":"bench-1","data":"{\"t\":9,\"s\":2,\"p\":\"x\"}"}"#
            ),
            Incoming::Event(SeqStamp { t: 9, s: 2 })
        );
        assert_eq!(
            incoming(r#"{"event":"bench","channel":"bench-1","data":{"t":9,"s":2}}"#),
            Incoming::Event(SeqStamp { t: 9, s: 2 })
        );
        assert_eq!(
            incoming(r#"{"event":"pusher:ping","data":{}}"#),
            Incoming::Reply(r#"{"event":"pusher:pong","data":{}}"#.into())
        );
        assert_eq!(
            incoming(
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#
            ),
            Incoming::Ignore
        );
        assert_eq!(incoming("nope"), Incoming::Bad("unparsable pusher frame"));
        assert_eq!(
            incoming(r#"{"event":"bench","data":"{}"}"#),
            Incoming::Bad("pusher event without stamp")
        );
    }
}
