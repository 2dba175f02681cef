//! The load generator: open N WebSocket connections over several source addresses,
//! measure the server, trigger broadcasts and count deliveries.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs::{snap, tick_us};

pub struct Opts {
    pub port: u16,
    pub conns: usize,
    pub frames: u64,
    pub server_pid: u32,
    pub burst: u64,
    pub src_ips: u8,
    pub concurrency: usize,
    pub settle: Duration,
    pub timeout: Duration,
    pub label: String,
}

async fn connect_one(
    i: usize,
    o: &Opts,
    counter: Arc<AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let src = Ipv4Addr::new(127, 0, 0, 1 + (i % o.src_ips as usize) as u8);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    let stream = sock
        .connect(SocketAddr::from(([127, 0, 0, 1], o.port)))
        .await?;
    stream.set_nodelay(true)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://127.0.0.1:{}/ws", o.port);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg)).await?;
    tokio::spawn(async move {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(_)) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    Ok(())
}

async fn post_broadcast(port: u16, n: u64) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "POST /broadcast?n={n} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("POST /broadcast timed out"))??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub async fn run(o: Opts) -> i32 {
    let o = Arc::new(o);
    let tus = tick_us();
    let counter = Arc::new(AtomicU64::new(0));

    let s0 = snap(o.server_pid);
    println!(
        "server before: rss={} KB cpu={:.0} ms",
        s0.rss_kb,
        s0.cpu_ticks as f64 * tus / 1e3
    );

    // ---- connect phase ----
    let sem = Arc::new(Semaphore::new(o.concurrency));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        let permit = sem.clone().acquire_owned().await.expect("sem");
        let (o2, c2, e2) = (o.clone(), counter.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), connect_one(i, &o2, c2)).await;
            // Count every failure; print the first five.
            if !matches!(r, Ok(Ok(()))) && e2.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!(
                    "connect {i} failed: {:?}",
                    r.map(|x| x.map_err(|e| e.to_string()))
                );
            }
            drop(permit);
        }));
    }
    let all = futures_util::future::join_all(handles);
    if tokio::time::timeout(o.timeout, all).await.is_err() {
        eprintln!("connect phase timed out");
        return 2;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let errs = errors.load(Ordering::Relaxed) as usize;
    let ok = o.conns - errs;
    println!(
        "connected {ok}/{} in {connect_s:.2} s ({:.0} conn/s), errors={errs}",
        o.conns,
        ok as f64 / connect_s
    );
    let s_conn = snap(o.server_pid);
    tokio::time::sleep(o.settle).await;
    let s1 = snap(o.server_pid);
    let kb_per_conn = (s1.rss_kb as f64 - s0.rss_kb as f64) / ok.max(1) as f64;
    let cpu_conn_us = (s_conn.cpu_ticks - s0.cpu_ticks) as f64 * tus / ok.max(1) as f64;
    println!(
        "server after connect: rss={} KB (+{} KB) => {kb_per_conn:.2} KB per idle connection; \
         server cpu per connect = {cpu_conn_us:.1} us",
        s1.rss_kb,
        s1.rss_kb as i64 - s0.rss_kb as i64
    );

    // ---- broadcast phase ----
    let (mut deliveries, mut bcast_s, mut cpu_per_delivery_us, mut cpu_ms) = (0u64, 0.0, 0.0, 0.0);
    let mut user_per_delivery_us = 0.0;
    let mut rss_after_bcast = s1.rss_kb;
    if o.frames > 0 {
        let expected = ok as u64 * o.frames;
        let s2 = snap(o.server_pid);
        let t1 = Instant::now();
        let deadline = t1 + o.timeout;
        let mut sent = 0u64;
        let mut timed_out = false;
        // Bounded: at most ceil(frames / burst) POSTs, each waited for until the deadline.
        while sent < o.frames {
            let n = o.burst.min(o.frames - sent);
            match post_broadcast(o.port, n).await {
                Ok(r) if r.starts_with("HTTP/1.1 200") => {}
                Ok(r) => {
                    eprintln!("broadcast POST: unexpected reply {r:?}");
                    return 3;
                }
                Err(e) => {
                    eprintln!("broadcast POST failed: {e}");
                    return 3;
                }
            }
            sent += n;
            let want = ok as u64 * sent;
            // Wait for this burst's deliveries (lockstep when burst < frames).
            while counter.load(Ordering::Relaxed) < want {
                if Instant::now() > deadline {
                    timed_out = true;
                    break;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            if timed_out {
                break;
            }
        }
        bcast_s = t1.elapsed().as_secs_f64();
        let s3 = snap(o.server_pid);
        deliveries = counter.load(Ordering::Relaxed);
        cpu_ms = (s3.cpu_ticks - s2.cpu_ticks) as f64 * tus / 1e3;
        cpu_per_delivery_us = cpu_ms * 1e3 / deliveries.max(1) as f64;
        user_per_delivery_us = (s3.utime - s2.utime) as f64 * tus / deliveries.max(1) as f64;
        rss_after_bcast = s3.rss_kb;
        println!(
            "broadcast: {deliveries}/{expected} deliveries in {bcast_s:.3} s => {:.0} deliveries/s{}",
            deliveries as f64 / bcast_s,
            if timed_out { " (TIMED OUT)" } else { "" }
        );
        println!(
            "server cpu during broadcast: {cpu_ms:.0} ms (before {:.0} ms, after {:.0} ms) => \
             {cpu_per_delivery_us:.3} us per delivery ({user_per_delivery_us:.3} us user, {:.3} us system); \
             rss after broadcast {} KB",
            s2.cpu_ticks as f64 * tus / 1e3,
            s3.cpu_ticks as f64 * tus / 1e3,
            cpu_per_delivery_us - user_per_delivery_us,
            s3.rss_kb
        );
        if timed_out {
            eprintln!("broadcast phase timed out");
        }
    }
    println!(
        "RESULT label={} conns={} ok={ok} frames={} burst={} connect_s={connect_s:.3} \
         rss_before_kb={} rss_after_kb={} kb_per_conn={kb_per_conn:.2} cpu_per_connect_us={cpu_conn_us:.1} \
         deliveries={deliveries} bcast_s={bcast_s:.3} deliveries_per_s={:.0} server_cpu_ms={cpu_ms:.0} \
         cpu_us_per_delivery={cpu_per_delivery_us:.3} user_us_per_delivery={user_per_delivery_us:.3} rss_after_bcast_kb={rss_after_bcast}",
        if o.label.is_empty() { "-" } else { &o.label },
        o.conns,
        o.frames,
        o.burst,
        s0.rss_kb,
        s1.rss_kb,
        if bcast_s > 0.0 { deliveries as f64 / bcast_s } else { 0.0 },
    );
    if errs > 0 || (o.frames > 0 && deliveries < ok as u64 * o.frames) {
        1
    } else {
        0
    }
}
