//! A minimal connect-proxy backend for `connect-latency`: HTTP/1.1 with
//! keep-alive on loopback, answering every `POST` with
//! `{"user_id": <the credential after "bench:">}`. As fast as an answer
//! can be, so the figures show Herald's cost of asking, not a backend's.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head or body read.
const MAX_REQUEST: usize = 64 * 1024;

/// The running backend; stopped (every connection task with it) on drop.
pub struct ConnectBackend {
    accept: JoinHandle<()>,
    /// Requests answered.
    pub answered: Arc<AtomicU64>,
}

impl ConnectBackend {
    /// Listens on `addr` and serves until dropped.
    pub async fn start(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--backend-listen {addr}"))?;
        let answered = Arc::new(AtomicU64::new(0));
        let count = answered.clone();
        let accept = tokio::spawn(async move {
            // Dropped with this task: aborting it ends every connection.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                conns.spawn(serve(stream, count.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { accept, answered })
    }
}

impl Drop for ConnectBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One keep-alive connection: requests in order until the peer closes or
/// sends something this backend does not read.
async fn serve(mut stream: TcpStream, answered: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((head_len, body_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[head_len..head_len + body_len];
        let answer = answer(body);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::Relaxed);
        buf.drain(..head_len + body_len);
    }
}

/// Reads until `buf` holds a whole request head; returns its length and
/// the body's (`content-length`).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let body_len = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            return (body_len <= MAX_REQUEST).then_some((end + 4, body_len));
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The answer to a connect request body.
fn answer(body: &[u8]) -> String {
    let credential = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["credential"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let user = credential.strip_prefix("bench:").unwrap_or("anonymous");
    serde_json::json!({ "user_id": user }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_the_user_of_the_credential() {
        assert_eq!(
            answer(br#"{"credential":"bench:u7","transport":"websocket"}"#),
            r#"{"user_id":"u7"}"#
        );
        assert_eq!(answer(b"nonsense"), r#"{"user_id":"anonymous"}"#);
    }
}
