//! ws-choice: measure two Rust WebSocket server stacks for Herald's fan-out path.
//!
//! `ws-choice server --stack axum|fastws --port P` runs a broadcast server on 127.0.0.1:P.
//! `ws-choice client --port P --conns N --frames M --server-pid PID` loads it and reports
//! server memory per idle connection, deliveries per second and server CPU per delivery.
//!
//! Loopback only. Every loop is bounded in count and in time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::broadcast;

#[derive(Parser)]
#[command(about = "axum ws vs fastwebsockets: memory, throughput and CPU per delivery")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Stack {
    /// axum 0.8 `ws` (tungstenite 0.29), feed + flush.
    Axum,
    /// fastwebsockets 0.10 over hyper 1 upgrade, write_frame per frame.
    Fastws,
    /// Extra variant (the PERFORMANCE.md idea): fastwebsockets reads; the server owns the
    /// TCP write half and writes frames pre-built once per event with one writev per batch.
    Raw,
}

#[derive(Subcommand)]
enum Cmd {
    /// WebSocket broadcast server on 127.0.0.1:PORT (GET /ws upgrades, POST /broadcast?n=N pushes N frames).
    Server {
        #[arg(long, value_enum)]
        stack: Stack,
        #[arg(long)]
        port: u16,
        /// Capacity of the broadcast channel (must be >= frames per burst, or receivers lag).
        #[arg(long, default_value_t = 4096)]
        chan_cap: usize,
        /// The server exits by itself after this many seconds.
        #[arg(long, default_value_t = 1800)]
        max_secs: u64,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Set TCP_NODELAY on accepted sockets (off by default, as in axum::serve and Herald).
        #[arg(long)]
        nodelay: bool,
    },
    /// Open N connections, measure the server, trigger M broadcasts, count deliveries.
    Client {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        conns: usize,
        /// Broadcasts to trigger after all connections are open (0 = memory test only).
        #[arg(long, default_value_t = 0)]
        frames: u64,
        /// PID of the server process (for /proc/<pid>/status and /proc/<pid>/stat).
        #[arg(long)]
        server_pid: u32,
        /// Frames per POST /broadcast. Default: all M in one POST (one burst). With a smaller
        /// value the client waits for every delivery of one POST before sending the next.
        #[arg(long)]
        burst: Option<u64>,
        /// Spread client sockets over source addresses 127.0.0.1 .. 127.0.0.K.
        #[arg(long, default_value_t = 4)]
        src_ips: u8,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Wait after the last handshake before reading the server's RSS.
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
        /// Upper bound for each phase (connect, broadcast).
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
        /// Free-form label echoed in the RESULT line (e.g. the stack name).
        #[arg(long, default_value = "")]
        label: String,
        /// Tokio worker threads for the client.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server { stack, port, chan_cap, max_secs, workers, nodelay } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(server::run(stack, port, chan_cap, Duration::from_secs(max_secs), nodelay));
        }
        Cmd::Client {
            port,
            conns,
            frames,
            server_pid,
            burst,
            src_ips,
            concurrency,
            settle_ms,
            timeout_secs,
            label,
            workers,
        } => {
            raise_nofile();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("runtime");
            let code = rt.block_on(client::run(client::Opts {
                port,
                conns,
                frames,
                server_pid,
                burst: burst.unwrap_or(frames).max(1),
                src_ips: src_ips.max(1),
                concurrency: concurrency.max(1),
                settle: Duration::from_millis(settle_ms),
                timeout: Duration::from_secs(timeout_secs),
                label,
            }));
            // Do not wait for thousands of socket tasks to wind down.
            rt.shutdown_timeout(Duration::from_millis(100));
            std::process::exit(code);
        }
    }
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit (20,000 on this machine).
fn raise_nofile() {
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A ~100-byte JSON text frame payload, encoded once per broadcast.
fn encode_event(seq: u64) -> Bytes {
    let mut s = format!(
        r#"{{"type":"event","room":"bench","seq":{seq},"data":{{"msg":"hello","pad":""#
    );
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
            let msg = if self.preframed { text_frame(&payload) } else { payload };
            receivers = self.tx.send(msg).unwrap_or(0);
        }
        receivers
    }
}

/// Max frames a connection task drains from its receiver before one flush.
const DRAIN_MAX: usize = 64;

mod server {
    use super::*;
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    pub async fn run(stack: Stack, port: u16, chan_cap: usize, max: Duration, nodelay: bool) {
        let (tx, _) = broadcast::channel(chan_cap);
        let preframed = matches!(stack, Stack::Raw);
        let hub = Arc::new(Hub { tx, seq: AtomicU64::new(0), preframed });
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        println!("listening stack={stack:?} addr=127.0.0.1:{port} nodelay={nodelay} pid={}", std::process::id());
        let serve = async {
            match stack {
                Stack::Axum => axum_stack::serve(listener, hub, nodelay).await,
                Stack::Fastws | Stack::Raw => fastws_stack::serve(listener, hub, nodelay).await,
            }
        };
        tokio::select! {
            _ = serve => {}
            _ = tokio::time::sleep(max) => { eprintln!("max-secs reached, exiting"); }
        }
    }

    mod axum_stack {
        use super::*;
        use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
        use axum::extract::State;
        use axum::http::Uri;
        use axum::response::Response;
        use axum::routing::{get, post};
        use axum::Router;
        use futures_util::SinkExt;

        pub async fn serve(listener: TcpListener, hub: Arc<Hub>, nodelay: bool) {
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(move |tcp| {
                if nodelay {
                    let _ = tcp.set_nodelay(true);
                }
            });
            let app = Router::new()
                .route("/ws", get(ws_handler))
                .route("/broadcast", post(broadcast_handler))
                .with_state(hub);
            axum::serve(listener, app).await.expect("serve");
        }

        async fn broadcast_handler(State(hub): State<Arc<Hub>>, uri: Uri) -> String {
            let r = hub.push(query_n(uri.query()));
            format!("receivers={r}\n")
        }

        async fn ws_handler(ws: WebSocketUpgrade, State(hub): State<Arc<Hub>>) -> Response {
            // Subscribe before the 101 goes out, so no frame sent after the client's
            // handshake completes can be missed.
            let rx = hub.tx.subscribe();
            ws.read_buffer_size(4096)
                .write_buffer_size(16 * 1024)
                .on_upgrade(move |socket| conn(socket, rx))
        }

        async fn conn(mut socket: WebSocket, mut rx: broadcast::Receiver<Bytes>) {
            loop {
                tokio::select! {
                    m = socket.recv() => match m {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                    r = rx.recv() => match r {
                        Ok(b) => {
                            if feed(&mut socket, b).await.is_err() { break; }
                            let mut n = 1;
                            while n < DRAIN_MAX {
                                match rx.try_recv() {
                                    Ok(b) => {
                                        if feed(&mut socket, b).await.is_err() { return; }
                                        n += 1;
                                    }
                                    Err(_) => break,
                                }
                            }
                            if socket.flush().await.is_err() { break; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }

        async fn feed(socket: &mut WebSocket, b: Bytes) -> Result<(), axum::Error> {
            // axum has no unchecked constructor: this re-validates UTF-8 per recipient.
            let text = Utf8Bytes::try_from(b).map_err(axum::Error::new)?;
            socket.feed(Message::Text(text)).await
        }
    }

    mod fastws_stack {
        use super::*;
        use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
        use http_body_util::Full;
        use hyper::body::Incoming;
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper::{Request, Response, StatusCode};
        use hyper_util::rt::TokioIo;

        type Ws = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

        pub async fn serve(listener: TcpListener, hub: Arc<Hub>, nodelay: bool) {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // e.g. EMFILE: back off briefly instead of spinning.
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if nodelay {
                    let _ = stream.set_nodelay(true);
                }
                let hub = hub.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, hub.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        }

        async fn handle(
            mut req: Request<Incoming>,
            hub: Arc<Hub>,
        ) -> Result<Response<Full<Bytes>>, Infallible> {
            match req.uri().path() {
                "/ws" => match fastwebsockets::upgrade::upgrade(&mut req) {
                    Ok((resp, fut)) => {
                        let rx = hub.tx.subscribe();
                        let raw = hub.preframed;
                        tokio::spawn(async move {
                            if let Ok(ws) = fut.await {
                                if raw {
                                    raw_conn(ws, rx).await;
                                } else {
                                    conn(ws, rx).await;
                                }
                            }
                        });
                        let (parts, _) = resp.into_parts();
                        Ok(Response::from_parts(parts, Full::default()))
                    }
                    Err(_) => Ok(status(StatusCode::BAD_REQUEST)),
                },
                "/broadcast" => {
                    let r = hub.push(query_n(req.uri().query()));
                    Ok(Response::new(Full::new(Bytes::from(format!("receivers={r}\n")))))
                }
                _ => Ok(status(StatusCode::NOT_FOUND)),
            }
        }

        fn status(s: StatusCode) -> Response<Full<Bytes>> {
            let mut r = Response::new(Full::default());
            *r.status_mut() = s;
            r
        }

        /// Take the TCP stream back from hyper, split it without a lock, let fastwebsockets
        /// parse the read half, and write pre-framed `Bytes` with one writev per batch.
        async fn raw_conn(ws: Ws, mut rx: broadcast::Receiver<Bytes>) {
            use tokio::io::AsyncWriteExt;
            use tokio::net::TcpStream;
            let parts = match ws.into_inner().into_inner().downcast::<TokioIo<TcpStream>>() {
                Ok(p) => p,
                Err(_) => {
                    eprintln!("raw: upgraded io is not a TcpStream");
                    return;
                }
            };
            if !parts.read_buf.is_empty() {
                // Bytes the client sent right behind its handshake; the bench clients send none.
                eprintln!("raw: dropping {} pre-read bytes", parts.read_buf.len());
            }
            // Drop it now: even empty, it can pin hyper's whole read buffer for the connection's life.
            drop(parts.read_buf);
            let (rd, mut wr) = parts.io.into_inner().into_split();
            let (mut rd, _unused_wr) =
                fastwebsockets::after_handshake_split(rd, tokio::io::sink(), fastwebsockets::Role::Server);
            // Control replies (pong, close echo) the reader owes; written by this task.
            let owed = std::sync::Mutex::new(Vec::<Bytes>::new());
            let mut owe = |f: Frame<'_>| {
                let mut buf = Vec::new();
                let mut f = f;
                let b = Bytes::copy_from_slice(f.write(&mut buf));
                owed.lock().unwrap_or_else(|e| e.into_inner()).push(b);
                std::future::ready(Ok::<(), std::io::Error>(()))
            };
            let mut batch: Vec<Bytes> = Vec::new();
            loop {
                tokio::select! {
                    f = rd.read_frame(&mut owe) => {
                        let close = !matches!(&f, Ok(fr) if fr.opcode != OpCode::Close);
                        let ctrl: Vec<Bytes> = std::mem::take(&mut *owed.lock().unwrap_or_else(|e| e.into_inner()));
                        if !ctrl.is_empty() && Box::pin(write_all_vectored(&mut wr, ctrl)).await.is_err() { break; }
                        if close { break; }
                    },
                    r = rx.recv() => match r {
                        Ok(b) => {
                            batch.push(b);
                            while batch.len() < DRAIN_MAX {
                                match rx.try_recv() {
                                    Ok(b) => batch.push(b),
                                    Err(_) => break,
                                }
                            }
                            if Box::pin(write_all_vectored(&mut wr, std::mem::take(&mut batch))).await.is_err() { break; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            let _ = wr.shutdown().await;
        }

        /// Called through `Box::pin`: its 1 KiB iovec array then lives on the heap only while
        /// writing, instead of in every idle connection's task.
        async fn write_all_vectored(
            wr: &mut tokio::net::tcp::OwnedWriteHalf,
            bufs: Vec<Bytes>,
        ) -> std::io::Result<()> {
            use std::io::IoSlice;
            use tokio::io::AsyncWriteExt;
            let (mut idx, mut off) = (0usize, 0usize);
            // Bounded: every pass writes at least one byte or fails.
            while idx < bufs.len() {
                let mut iov: [IoSlice<'_>; DRAIN_MAX] = [IoSlice::new(&[]); DRAIN_MAX];
                let mut k = 0;
                for (j, b) in bufs[idx..].iter().enumerate().take(DRAIN_MAX) {
                    iov[k] = IoSlice::new(if j == 0 { &b[off..] } else { &b[..] });
                    k += 1;
                }
                let mut n = wr.write_vectored(&iov[..k]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                while n > 0 && idx < bufs.len() {
                    let rem = bufs[idx].len() - off;
                    if n >= rem {
                        n -= rem;
                        idx += 1;
                        off = 0;
                    } else {
                        off += n;
                        n = 0;
                    }
                }
            }
            Ok(())
        }

        async fn conn(mut ws: Ws, mut rx: broadcast::Receiver<Bytes>) {
            ws.set_auto_close(true);
            ws.set_auto_pong(true);
            // NOTE: read_frame is not fully cancel-safe (a frame header split across reads
            // could be lost if the select! drops it mid-frame). The bench clients send
            // nothing after the handshake, so it is safe here; production code should give
            // the read half its own task (fastwebsockets' `unstable-split`) or own the write half.
            loop {
                tokio::select! {
                    f = ws.read_frame() => match f {
                        Ok(f) if f.opcode == OpCode::Close => break,
                        Ok(_) => {}
                        Err(_) => break,
                    },
                    r = rx.recv() => match r {
                        Ok(b) => {
                            if ws.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() { break; }
                            let mut n = 1;
                            while n < DRAIN_MAX {
                                match rx.try_recv() {
                                    Ok(b) => {
                                        if ws.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() { return; }
                                        n += 1;
                                    }
                                    Err(_) => break,
                                }
                            }
                            if ws.flush().await.is_err() { break; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }
    }
}

mod client {
    use super::*;
    use futures_util::StreamExt;
    use std::net::{Ipv4Addr, SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio::sync::Semaphore;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;

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

    #[derive(Clone, Copy)]
    struct Snap {
        rss_kb: u64,
        cpu_ticks: u64,
        utime: u64,
    }

    fn snap(pid: u32) -> Snap {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
        // Fields after the ")" closing comm: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f[11].parse().expect("utime");
        let stime: u64 = f[12].parse().expect("stime");
        Snap { rss_kb, cpu_ticks: utime + stime, utime }
    }

    fn tick_us() -> f64 {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        1e6 / (if hz > 0 { hz as f64 } else { 100.0 })
    }

    async fn connect_one(
        i: usize,
        o: &Opts,
        counter: Arc<AtomicU64>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let src = Ipv4Addr::new(127, 0, 0, 1 + (i % o.src_ips as usize) as u8);
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((src, 0)))?;
        let stream = sock.connect(SocketAddr::from(([127, 0, 0, 1], o.port))).await?;
        stream.set_nodelay(true)?;
        let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
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
        println!("server before: rss={} KB cpu={:.0} ms", s0.rss_kb, s0.cpu_ticks as f64 * tus / 1e3);

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
                if !matches!(r, Ok(Ok(()))) {
                    if e2.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connect {i} failed: {:?}", r.map(|x| x.map_err(|e| e.to_string())));
                    }
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
}
