//! Clients and nodes for the TLS tests: a node in this test's runtime
//! (`serve_on` on a port-0 listener), or the `herald serve` binary; a
//! rustls client that verifies against the test CA (raw handshakes, WSS
//! through tokio-tungstenite) and reqwest with the CA as its only root.

use super::pki::{Files, Pki};
use crate::common::{now_secs, sign_hs256, ADMIN_KEY, SECRET};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long any one step may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A TLS WebSocket.
pub type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// The node config around the TLS keys: the harness's secret and admin
/// key, an open `feed` namespace, and `extra`.
pub fn config_toml(files: &Files, extra: &str) -> String {
    format!(
        "[server]\n{}\n[auth]\nhs256_secret = {SECRET:?}\napi_keys = [{{ key = {ADMIN_KEY:?}, scopes = [\"admin\"] }}]\n\n[namespaces.feed]\njoin = \"any\"\n\n{extra}",
        files.toml()
    )
}

/// A node serving in this test's runtime; stopped when dropped.
pub struct Node {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    /// Starts a node with TLS from `files` and waits until it answers
    /// `/health` over HTTPS.
    pub async fn start(pki: &Pki, files: &Files, extra: &str) -> Node {
        let mut config =
            herald_server::Config::from_toml(&config_toml(files, extra)).expect("config");
        config.server.shutdown_drain = Duration::ZERO;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = herald_server::serve_on(config, listener, shutdown).await {
                eprintln!("node stopped with an error: {e}");
            }
        });
        wait_healthy(pki, port).await;
        Node {
            port,
            stop: Some(stop),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Waits until `https://localhost:PORT/health` answers 200.
pub async fn wait_healthy(pki: &Pki, port: u16) {
    let client = https(pki);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = client
            .get(format!("https://localhost:{port}/health"))
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 200 => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no healthy node on {port}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// reqwest trusting only the test CA.
pub fn https(pki: &Pki) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTPS client")
}

/// A rustls connector trusting only `ca_der`, offering HTTP/1.1.
pub fn connector(ca_der: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
        .expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the node, handshake done; its socket has a small
/// receive buffer when `small_window` (a client slow to take bytes).
pub async fn tls_connect(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
    small_window: bool,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if small_window {
        socket.set_recv_buffer_size(4096)?;
    }
    let tcp = socket
        .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The certificate the node presents to a new handshake.
pub async fn presented(port: u16, pki: &Pki) -> Vec<u8> {
    let tls = tls_connect(port, &connector(&pki.ca_der), false)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN");
    session.peer_certificates().expect("peer certificate")[0].to_vec()
}

/// A one-hour token for `sub`.
pub fn token(sub: &str) -> String {
    sign_hs256(
        SECRET,
        &json!({"sub": sub, "iat": now_secs(), "exp": now_secs() + 3600}),
    )
}

/// A WebSocket over TLS to `path` (with its query).
pub async fn wss(port: u16, pki: &Pki, path: &str, small_window: bool) -> Wss {
    let tls = tls_connect(port, &connector(&pki.ca_der), small_window)
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{port}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade in time")
        .expect("WebSocket upgrade");
    ws
}

/// `/ws` over TLS as `sub`, after its `authenticated` frame, joined to
/// `room`.
pub async fn wss_joined(port: u16, pki: &Pki, sub: &str, room: &str, small_window: bool) -> Wss {
    let mut ws = wss(
        port,
        pki,
        &format!("/ws?token={}", token(sub)),
        small_window,
    )
    .await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "authenticated", "{first}");
    send_json(&mut ws, json!({"type": "join_room", "room": room, "id": 1})).await;
    loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "room_joined" && v["room"] == room {
            return ws;
        }
        assert_ne!(v["type"], "error", "join {room}: {v}");
    }
}

pub async fn send_json(ws: &mut Wss, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame.
pub async fn next_text(ws: &mut Wss) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("a frame");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next text frame as JSON.
pub async fn next_json(ws: &mut Wss) -> Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The next `event` frame named `name`.
pub async fn next_event(ws: &mut Wss, name: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "event" && v["event"] == name {
            return v;
        }
    }
}

/// Publishes over HTTPS with the admin key.
pub async fn publish(client: &reqwest::Client, port: u16, room: &str, event: &str, data: Value) {
    let answer = client
        .post(format!("https://localhost:{port}/api/v1/publish"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"room": room, "event": event, "data": data}))
        .send()
        .await
        .expect("publish");
    let status = answer.status();
    assert_eq!(
        status,
        200,
        "publish: {}",
        answer.text().await.unwrap_or_default()
    );
}

/// Reads a streaming body until it contains `needle`; returns all read.
pub async fn read_until(resp: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time; got {seen:?}"))
            .expect("read the stream")
            .unwrap_or_else(|| panic!("the stream ended before {needle:?}; got {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Sends a text frame (a raw Engine.IO packet).
pub async fn send_text(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}
