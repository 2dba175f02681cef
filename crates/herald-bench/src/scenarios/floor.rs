//! `floor`: what the kernel alone charges for one delivery on this machine,
//! with no server in the way. One thread writes a prebuilt WebSocket text
//! frame to each of N loopback TCP connections, one `send` per connection
//! per event, as any server must when each client gets one event at a
//! time; tasks in this process read them. The writing thread's own CPU time
//! (from /proc/thread-self/stat) includes the loopback receive work that
//! the kernel charges to the sender, exactly as it does for a server, so
//! CPU per send here is the floor under any server's CPU per delivery for
//! one-packet deliveries, and its inverse the ceiling on deliveries per
//! CPU-second. Loopback only; bounded in count and time.

use crate::client::source_addr;
use crate::procfs::thread_cpu_s;
use crate::report::Report;
use crate::Common;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};

/// `floor` arguments.
#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Connections written to (a room of this size).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Events: each is one `send` to every connection.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Pause between events, so every send is its own packet.
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
}

/// Runs `floor`.
pub async fn run(c: &Common, a: &FloorArgs) -> Result<Report> {
    if a.conns == 0 || a.events == 0 || a.conns > 19_000 || a.events > 100_000 {
        bail!("--conns must be 1..=19000 and --events 1..=100000");
    }
    if a.payload > 65_535 {
        bail!("--payload must be at most 65,535 bytes");
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let sources = c.sources.unwrap_or(16);
    let mut frame: Vec<u8> = if a.payload < 126 {
        vec![0x81, a.payload as u8]
    } else {
        let len = (a.payload as u16).to_be_bytes();
        vec![0x81, 126, len[0], len[1]]
    };
    frame.extend(std::iter::repeat_n(b'x', a.payload));
    let expected = (frame.len() * a.events) as u64;
    let mut senders = Vec::with_capacity(a.conns);
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..a.conns {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source_addr(i as u64, sources).into(), 0))?;
        let (client, accepted) = tokio::try_join!(socket.connect(addr), listener.accept())
            .context("connecting a loopback pair")?;
        accepted.0.set_nodelay(true)?;
        let std_stream = accepted.0.into_std()?;
        std_stream.set_nonblocking(false)?;
        senders.push(std_stream);
        readers.spawn(async move {
            let mut client = client;
            let mut buf = [0u8; 4096];
            let mut got = 0u64;
            while got < expected {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            got
        });
    }
    let interval = Duration::from_millis(a.interval_ms);
    let events = a.events;
    let started = Instant::now();
    let writer = std::thread::spawn(move || -> Result<(f64, f64)> {
        let (user0, sys0) = thread_cpu_s()?;
        for _ in 0..events {
            for s in &mut senders {
                s.write_all(&frame)?;
            }
            std::thread::sleep(interval);
        }
        let (user1, sys1) = thread_cpu_s()?;
        Ok((user1 - user0, sys1 - sys0))
    });
    let limit = Duration::from_secs(60) + interval * events as u32 * 2;
    let mut received = 0u64;
    let all_read = tokio::time::timeout(limit, async {
        while let Some(got) = readers.join_next().await {
            received += got.unwrap_or(0);
        }
    })
    .await
    .is_ok();
    readers.abort_all();
    let (user_s, sys_s) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))??;
    let sends = (a.conns * a.events) as f64;
    let cpu_s = user_s + sys_s;
    Ok(Report {
        scenario: "floor",
        params: json!({
            "conns": a.conns, "events": a.events, "payload": a.payload,
            "interval_ms": a.interval_ms,
        }),
        figures: json!({
            "sends": sends,
            "all_read": all_read,
            "bytes_read": received,
            "bytes_expected": expected * a.conns as u64,
            "elapsed_s": started.elapsed().as_secs_f64(),
            "writer_cpu_user_s": user_s,
            "writer_cpu_system_s": sys_s,
            "writer_cpu_us_per_send": cpu_s * 1e6 / sends,
            "sends_per_writer_cpu_s": if cpu_s > 0.0 { sends / cpu_s } else { 0.0 },
        }),
        timeline: Vec::new(),
    })
}
