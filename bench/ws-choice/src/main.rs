//! ws-choice: measure two Rust WebSocket server stacks for Herald's fan-out path.
//!
//! `ws-choice server --stack axum|fastws|raw --port P` runs a broadcast server on 127.0.0.1:P.
//! `ws-choice client --port P --conns N --frames M --server-pid PID` loads it and reports
//! server memory per idle connection, deliveries per second and server CPU per delivery.
//!
//! Loopback only. Every loop is bounded in count and in time.
//!
//! This file is the command line; `server` holds the broadcast hub and one module per
//! stack, `client` the load generator, `procfs` the reading of the server's /proc files.

mod client;
mod procfs;
mod server;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

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
        Cmd::Server {
            stack,
            port,
            chan_cap,
            max_secs,
            workers,
            nodelay,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(server::run(
                stack,
                port,
                chan_cap,
                Duration::from_secs(max_secs),
                nodelay,
            ));
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
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
