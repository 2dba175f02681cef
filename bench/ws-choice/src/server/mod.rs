//! The broadcast server: a hub that turns each `POST /broadcast` into frames on a
//! `tokio::sync::broadcast` channel, and one module per stack that serves `/ws` and
//! `/broadcast` from it.

mod axum;
mod fastws;
mod raw;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::Stack;

/// A ~100-byte JSON text frame payload, encoded once per broadcast.
fn encode_event(seq: u64) -> Bytes {
    let mut s =
        format!(r#"{{"type":"event","room":"bench","seq":{seq},"data":{{"msg":"hello","pad":""#);
    while s.len() < 97 {
        s.push('x');
    }
    s.push_str("\"}}");
    Bytes::from(s)
}

fn query_n(query: Option<&str>) -> u64 {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("n="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

struct Hub {
    tx: broadcast::Sender<Bytes>,
    seq: AtomicU64,
    /// Channel carries complete server text frames (header + payload), built once per event.
    preframed: bool,
}

/// An unmasked server text frame around `payload`.
fn text_frame(payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut v = Vec::with_capacity(len + 10);
    v.push(0x81);
    if len < 126 {
        v.push(len as u8);
    } else if len < 65536 {
        v.push(126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    Bytes::from(v)
}

impl Hub {
    /// Push n frames (bounded: at most 100,000 per call). Returns receivers of the last send.
    fn push(&self, n: u64) -> usize {
        let n = n.min(100_000);
        let mut receivers = 0;
        for _ in 0..n {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let payload = encode_event(seq);
            let msg = if self.preframed {
                text_frame(&payload)
            } else {
                payload
            };
            receivers = self.tx.send(msg).unwrap_or(0);
        }
        receivers
    }
}

/// Max frames a connection task drains from its receiver before one flush.
const DRAIN_MAX: usize = 64;

pub async fn run(stack: Stack, port: u16, chan_cap: usize, max: Duration, nodelay: bool) {
    let (tx, _) = broadcast::channel(chan_cap);
    let preframed = matches!(stack, Stack::Raw);
    let hub = Arc::new(Hub {
        tx,
        seq: AtomicU64::new(0),
        preframed,
    });
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!(
        "listening stack={stack:?} addr=127.0.0.1:{port} nodelay={nodelay} pid={}",
        std::process::id()
    );
    let serve = async {
        match stack {
            Stack::Axum => self::axum::serve(listener, hub, nodelay).await,
            Stack::Fastws | Stack::Raw => fastws::serve(listener, hub, nodelay).await,
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = tokio::time::sleep(max) => { eprintln!("max-secs reached, exiting"); }
    }
}
