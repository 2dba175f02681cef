//! Reaching the server: the loopback-only target, tokens minted locally,
//! source addresses, and one WebSocket connection up to `authenticated`.

use crate::wire::{WireStats, WireStream};
use anyhow::{bail, Context, Result};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// One client WebSocket, over a socket that counts (and, with `--deflate`,
/// inflates) what it reads.
pub type Ws = WebSocketStream<WireStream>;

/// How long a connect (TCP, upgrade, `authenticated`) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Client read buffer: frames here are small, and 10,000 connections with
/// tungstenite's 128 KiB default would cost the load generator 1.3 GB.
const READ_BUFFER: usize = 4096;
/// Token lifetime: longer than any bounded run.
const TOKEN_TTL_S: u64 = 6 * 3600;

/// The server under test, always on loopback.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where TCP connects.
    pub addr: SocketAddr,
    /// `http://host:port`, for the HTTP API.
    pub http_base: String,
    /// `ws://host:port/ws`.
    pub ws_url: String,
}

/// Parses `--url`, refusing anything but 127.0.0.0/8 or `localhost`: this
/// tool generates enough load to hurt, so it never aims off the machine.
pub fn parse_target(url: &str) -> Result<Target> {
    parse_target_for("--url", url)
}

/// [`parse_target`] for the URL given to option `flag` (named in errors).
pub fn parse_target_for(flag: &str, url: &str) -> Result<Target> {
    let u = reqwest::Url::parse(url).with_context(|| format!("{flag} `{url}` is not a URL"))?;
    if !matches!(u.scheme(), "http" | "ws") {
        bail!("{flag} `{url}`: scheme must be http or ws (loopback only, no TLS)");
    }
    let host = u
        .host_str()
        .with_context(|| format!("{flag} `{url}` has no host"))?;
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if ip.octets()[0] == 127 => ip,
            _ => bail!(
                "{flag} host `{host}` is not loopback: herald-bench only targets \
                 127.0.0.0/8 or localhost"
            ),
        }
    };
    let port = u.port().unwrap_or(80);
    Ok(Target {
        addr: SocketAddr::new(IpAddr::V4(ip), port),
        http_base: format!("http://{ip}:{port}"),
        ws_url: format!("ws://{ip}:{port}/ws"),
    })
}

/// Source address number `i` of `n`: 127.0.0.1, 127.0.0.2, … round robin.
/// Each gives its own ~28,000 ephemeral ports toward the server.
pub fn source_addr(i: u64, n: u32) -> Ipv4Addr {
    let k = (i % u64::from(n.max(1))) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k)
}

/// Default number of source addresses for `conns` connections: one per
/// 1,000, at least 16. Each address has ~28,000 ephemeral ports, but the
/// kernel's search for a free port in `bind(addr, 0)` gets slow (seconds of
/// system CPU per thousand binds) once an address's range is mostly taken,
/// TIME_WAIT sockets of an earlier run included; keeping each address's
/// share small keeps that search short.
pub fn default_sources(conns: usize) -> u32 {
    conns.div_ceil(1000).clamp(16, 250) as u32
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Everything a connection needs to reach the server.
pub struct Ctx {
    /// The server.
    pub target: Target,
    key: EncodingKey,
    /// Source addresses used round robin.
    pub sources: u32,
    /// Added to connection numbers to form user ids (`bench-{n}`), so
    /// several processes never share a user.
    pub id_offset: u64,
    /// The peer under test instead of Herald (`--target`), if any.
    pub peer: Option<crate::peers::Peer>,
    /// Where clients reconnect after a drop (`storm --reconnect-url`);
    /// empty: back to `target`.
    pub reconnect: Vec<Target>,
    /// Offer permessage-deflate on every upgrade (`--deflate`).
    pub deflate: bool,
    /// Bytes read and deflate outcomes over every connection.
    pub wire: Arc<WireStats>,
    /// Events carry agent payloads: check them on arrival.
    pub agent_check: bool,
}

impl Ctx {
    /// A context for `target`, signing tokens with `secret`.
    pub fn new(target: Target, secret: &str, sources: u32, id_offset: u64) -> Self {
        Self {
            target,
            key: EncodingKey::from_secret(secret.as_bytes()),
            sources,
            id_offset,
            peer: None,
            reconnect: Vec::new(),
            deflate: false,
            wire: Arc::default(),
            agent_check: false,
        }
    }

    /// The same context checking delivered events as agent events.
    pub fn with_agent_check(mut self, on: bool) -> Self {
        self.agent_check = on;
        self
    }

    /// Whether delivery `n` (an offset or sequence number) gets the full
    /// agent-event check: one in eight, to spare the client's CPU (every
    /// event is still parsed as JSON for its stamp).
    pub fn check_agent(&self, n: u64) -> bool {
        self.agent_check && n.is_multiple_of(8)
    }

    /// The same context offering permessage-deflate when `on`.
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// The same context with clients reconnecting to `targets` after a drop.
    pub fn with_reconnect(mut self, targets: Vec<Target>) -> Self {
        self.reconnect = targets;
        self
    }

    /// Where connection `i` reconnects after `failures` failed attempts in
    /// a row: the reconnect list spread by connection number, moving to the
    /// next entry on each failure; `target` when the list is empty.
    pub fn reconnect_target(&self, i: u64, failures: u32) -> &Target {
        let n = self.reconnect.len() as u64;
        if n == 0 {
            return &self.target;
        }
        let k = (i.wrapping_add(u64::from(failures)) % n) as usize;
        self.reconnect.get(k).unwrap_or(&self.target)
    }

    /// The same context aimed at `peer` (or Herald with `None`).
    pub fn with_peer(mut self, peer: Option<crate::peers::Peer>) -> Self {
        self.peer = peer;
        self
    }

    /// The user id of connection `i`.
    pub fn user_id(&self, i: u64) -> String {
        format!("bench-{}", self.id_offset + i)
    }

    /// An HS256 token for `sub`.
    pub fn token(&self, sub: &str) -> Result<String> {
        let now = crate::metrics::now_us() / 1_000_000;
        let claims = Claims {
            sub,
            iat: now,
            exp: now + TOKEN_TTL_S,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.key).context("signing a token")
    }

    /// Opens connection `i`: TCP from its source address, the upgrade with
    /// the token in the query, and the server's `authenticated` frame.
    /// Errors are short reasons fit to be counted.
    pub async fn connect(&self, i: u64) -> Result<Ws, String> {
        self.connect_to(&self.target, i).await
    }

    /// As [`Ctx::connect`], to `target` (one of the reconnect list).
    pub async fn connect_to(&self, target: &Target, i: u64) -> Result<Ws, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(target, i)).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        }
    }

    async fn connect_inner(&self, target: &Target, i: u64) -> Result<Ws, String> {
        let token = self
            .token(&self.user_id(i))
            .map_err(|e| format!("token: {e}"))?;
        self.connect_credential(target, i, &token).await
    }

    /// As [`Ctx::connect_to`] with `credential` (a JWT, or an opaque one
    /// for a connect proxy) in the query instead of a minted token; no
    /// timeout of its own.
    pub async fn connect_credential(
        &self,
        target: &Target,
        i: u64,
        credential: &str,
    ) -> Result<Ws, String> {
        let token = credential;
        let url = format!("{}?token={token}", target.ws_url);
        let mut ws = self.open_ws_to(target.addr, i, url).await?;
        use futures_util::StreamExt;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let f: Frame = serde_json::from_str(&t)
                        .map_err(|_| "unparsable first frame".to_string())?;
                    return match f.kind.as_ref() {
                        "authenticated" => Ok(ws),
                        "error" => Err(format!("error {}", f.code.unwrap_or_default())),
                        "disconnect" => Err(format!("disconnect {}", f.reason.unwrap_or_default())),
                        other => Err(format!("unexpected first frame {other}")),
                    };
                }
                Ok(Message::Close(c)) => {
                    return Err(format!(
                        "closed {}",
                        c.map(|c| u16::from(c.code)).unwrap_or(0)
                    ))
                }
                Ok(_) => continue,
                Err(e) => return Err(format!("ws: {e}")),
            }
        }
        Err("closed before authenticated".into())
    }

    /// TCP from connection `i`'s source address to the target, then the
    /// WebSocket upgrade to `url` (any server: Herald or a peer). Errors
    /// are short reasons fit to be counted.
    pub async fn open_ws(&self, i: u64, url: String) -> Result<Ws, String> {
        self.open_ws_to(self.target.addr, i, url).await
    }

    /// As [`Ctx::open_ws`], to `addr`.
    async fn open_ws_to(&self, addr: SocketAddr, i: u64, url: String) -> Result<Ws, String> {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {:?}", e.kind()))?;
        let src = SocketAddr::new(IpAddr::V4(source_addr(i, self.sources)), 0);
        socket
            .bind(src)
            .map_err(|e| format!("bind: {:?}", e.kind()))?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("tcp: {:?}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let mut req = url
            .into_client_request()
            .map_err(|e| format!("ws request: {e}"))?;
        if self.deflate {
            req.headers_mut().insert(
                "sec-websocket-extensions",
                tungstenite::http::HeaderValue::from_static(crate::wire::OFFER),
            );
        }
        let stream = WireStream::new(stream, self.wire.clone(), self.deflate);
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(r) => format!("http {}", r.status().as_u16()),
                tungstenite::Error::Io(e) => format!("ws io: {:?}", e.kind()),
                other => format!("ws: {other}"),
            })?;
        Ok(ws)
    }
}

/// A server frame, read with only the fields the bench uses.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// Frame type.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Request id of a reply (the bench only sends numeric ids).
    #[serde(default)]
    pub id: Option<u64>,
    /// Room of events, messages and join replies.
    #[serde(default, borrow)]
    pub room: Option<Cow<'a, str>>,
    /// Stream epoch.
    #[serde(default, borrow)]
    pub epoch: Option<Cow<'a, str>>,
    /// Offset of an event, or the room's position in `room_joined`/`ack`.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Event payload, parsed on demand.
    #[serde(default, borrow)]
    pub data: Option<&'a serde_json::value::RawValue>,
    /// `room_joined`: whether `since` was honoured.
    #[serde(default)]
    pub recovered: Option<bool>,
    /// `room_joined`: events replayed after it.
    #[serde(default)]
    pub replayed: Option<u64>,
    /// `error` code.
    #[serde(default)]
    pub code: Option<serde_json::Value>,
    /// `disconnect` reason.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the bench puts in every event's `data`: send time and sequence.
#[derive(Debug, Deserialize)]
pub struct Stamp {
    /// Send time, µs since the Unix epoch. (`s`, the room's sequence
    /// number, counts loss for peers; Herald's loss is counted by offset.)
    pub t: u64,
}

/// The `data` JSON for a payload of about `bytes` bytes.
pub fn stamped_data(seq: u64, bytes: usize) -> String {
    let head = format!("{{\"t\":{},\"s\":{seq},\"p\":\"", crate::metrics::now_us());
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_only() {
        let t = parse_target("http://127.0.0.1:8080").expect("test input");
        assert_eq!(t.ws_url, "ws://127.0.0.1:8080/ws");
        assert!(parse_target("http://localhost:9000/").is_ok());
        assert!(parse_target("ws://127.3.2.1:1").is_ok());
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "http://[::1]:80",
            "http://128.0.0.1:1",
            "https://127.0.0.1:443",
            "not a url",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        let e = parse_target("http://192.168.1.1:80")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not loopback"), "{e}");
    }

    #[test]
    fn reconnect_targets_spread_then_move_on() {
        let t = |p: u16| parse_target(&format!("http://127.0.0.1:{p}")).expect("test input");
        let ctx = Ctx::new(t(1), "s", 16, 0);
        assert_eq!(ctx.reconnect_target(7, 3).addr.port(), 1);
        let ctx = ctx.with_reconnect(vec![t(2), t(3)]);
        assert_eq!(ctx.reconnect_target(0, 0).addr.port(), 2);
        assert_eq!(ctx.reconnect_target(1, 0).addr.port(), 3);
        assert_eq!(ctx.reconnect_target(0, 1).addr.port(), 3);
        assert_eq!(ctx.reconnect_target(1, 1).addr.port(), 2);
        assert_eq!(ctx.reconnect_target(u64::MAX, u32::MAX).addr.port(), 2);
        let e = parse_target_for("--reconnect-url", "http://10.1.1.1:80")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--reconnect-url host"), "{e}");
    }

    #[test]
    fn sources_round_robin() {
        assert_eq!(source_addr(0, 3), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(2, 3), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(3, 3), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(300, 1000), Ipv4Addr::new(127, 0, 1, 45));
        assert_eq!(default_sources(10), 16);
        assert_eq!(default_sources(19_000), 19);
    }

    #[test]
    fn stamped_data_has_size_and_fields() {
        let d = stamped_data(7, 100);
        assert_eq!(d.len(), 100);
        let s: Stamp = serde_json::from_str(&d).expect("test input");
        assert!(s.t > 0);
        let v: serde_json::Value = serde_json::from_str(&d).expect("test input");
        assert_eq!(v["s"], 7);
    }

    #[test]
    fn frames_parse_borrowed() {
        let f: Frame = serde_json::from_str(
            r#"{"type":"event","room":"bench:1","event":"e","data":{"t":5,"s":1},"epoch":"ab","offset":3,"ts":1,"event_id":"x"}"#,
        )
        .expect("test input");
        assert_eq!(f.kind, "event");
        assert_eq!(f.offset, Some(3));
        let s: Stamp = serde_json::from_str(f.data.expect("data").get()).expect("test input");
        assert_eq!(s.t, 5);
    }
}
