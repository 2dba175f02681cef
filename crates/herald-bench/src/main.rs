//! `herald-bench`: the load generator and benchmark tool for Herald.
//!
//! Each scenario opens real WebSocket clients (and HTTP publishers) against
//! one node on loopback, measures what clients see (latency from a timestamp
//! in each event, loss, duplicates and order by room offset) and, given the
//! server's pid, what the server spent (RSS, CPU time, descriptors from
//! /proc). See docs/benchmarks.md.

mod agent;
mod client;
mod conn;
mod metrics;
mod peers;
mod plot;
mod procfs;
mod publish;
mod report;
mod run;
mod scenarios;
mod wire;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use peers::{Peer, TargetKind};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator and benchmark for Herald (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server base URL; only 127.0.0.0/8 or localhost are accepted.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Where publishers send (default: `--url`). Point it at another node
    /// of a cluster to measure cross-node latency; loopback only.
    #[arg(long, global = true)]
    pub publish_url: Option<String>,
    /// The server's auth.hs256_secret, to mint client tokens locally.
    #[arg(long, global = true, env = "HBENCH_SECRET", default_value = "")]
    pub secret: String,
    /// An API key with scope `admin` (publish, and stats for `history`).
    #[arg(long, global = true, env = "HBENCH_API_KEY", default_value = "")]
    pub api_key: String,
    /// The server's pid: read its RSS, CPU time and fds from /proc.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Print one JSON object with every figure instead of the summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Also write that JSON object to this file (the summary still prints).
    #[arg(long, global = true)]
    pub json_file: Option<PathBuf>,
    /// Write an SVG of latency percentiles and deliveries/s over time.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// Client source addresses 127.0.0.1..127.0.0.N (default: one per 1,000 connections, at least 16).
    #[arg(long, global = true)]
    pub sources: Option<u32>,
    /// Added to connection numbers in user ids, so that several bench
    /// processes against one server use distinct users.
    #[arg(long, global = true, default_value_t = 0)]
    pub id_offset: u64,
    /// Connects in flight at once while ramping up. Keep it under the
    /// server's listen backlog (128 with tokio's default bind), or the
    /// kernel drops SYNs and connects wait for a 1 s retransmit.
    #[arg(long, global = true, default_value_t = 100)]
    pub concurrency: usize,
    /// Namespace of the bench's rooms (default per scenario: `bench`,
    /// `benchstore` for storm and soak, `benchhist` for history).
    #[arg(long, global = true)]
    pub namespace: Option<String>,
    /// The server under test: Herald, or a peer for side-by-side figures
    /// (`idle` and `fanout` only; see bench/peers/).
    #[arg(long, global = true, value_enum, default_value_t = TargetKind::Herald)]
    pub target: TargetKind,
    /// `--target socketio`: whose Socket.IO server is at `--url` (the
    /// client is the same; rooms' names and the publish API differ).
    #[arg(long, global = true, value_enum, default_value_t = peers::socketio::SocketIoServer::Node)]
    pub socketio_server: peers::socketio::SocketIoServer,
    /// `--target socketio`: the endpoint's path.
    #[arg(long, global = true, default_value = "/socket.io/")]
    pub socketio_path: String,
    /// Offer permessage-deflate (RFC 7692) on every WebSocket and inflate
    /// compressed messages (Herald's /ws, Socket.IO). Wire bytes are
    /// counted either way.
    #[arg(long, global = true)]
    pub deflate: bool,
    /// `--target sockudo`: the Pusher app id.
    #[arg(long, global = true, default_value = "herald-bench")]
    pub pusher_app_id: String,
    /// `--target sockudo`: the Pusher app key.
    #[arg(long, global = true, default_value = "herald-bench-key")]
    pub pusher_key: String,
    /// `--target sockudo`: the Pusher app secret (signs API requests).
    #[arg(
        long,
        global = true,
        env = "HBENCH_PUSHER_SECRET",
        default_value = "herald-bench-secret"
    )]
    pub pusher_secret: String,
}

#[derive(Subcommand)]
enum Scenario {
    /// N connections held open: connect rate, failures, server memory per connection.
    Idle(scenarios::idle::IdleArgs),
    /// Subscribers over R rooms, HTTP publishers at a fixed rate: latency, loss.
    Fanout(scenarios::fanout::FanoutArgs),
    /// Every client also sends `send_message` into its room.
    Chat(scenarios::chat::ChatArgs),
    /// All clients dropped at once, reconnecting and resuming by offsets.
    Storm(scenarios::storm::StormArgs),
    /// A steady mix for a long time: memory and descriptor growth.
    Soak(scenarios::soak::SoakArgs),
    /// Joins and leaves on one room while it fans out: joins+leaves/s, latency.
    Members(scenarios::members::MembersArgs),
    /// Publish E events into rooms with history: bytes per stored event.
    History(scenarios::history::HistoryArgs),
    /// JWT connects against connects through the connect proxy (a
    /// built-in backend): what the proxy adds, median and p99.
    ConnectLatency(scenarios::connect::ConnectArgs),
    /// No server: the kernel's own CPU cost of one loopback send per
    /// delivery, the floor under any server's CPU per delivery.
    Floor(scenarios::floor::FloorArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    // Validate before any work: loopback only, credentials present.
    client::parse_target(&c.url)?;
    if let Some(url) = &c.publish_url {
        client::parse_target_for("--publish-url", url)?;
    }
    let herald = c.target == TargetKind::Herald;
    // Herald's Socket.IO endpoint needs Herald's credentials too.
    let herald_server = herald
        || (c.target == TargetKind::Socketio
            && c.socketio_server == peers::socketio::SocketIoServer::Herald);
    if !herald && !matches!(cli.scenario, Scenario::Idle(_) | Scenario::Fanout(_)) {
        bail!("--target {:?} supports only `idle` and `fanout`", c.target);
    }
    let needs_server = !matches!(cli.scenario, Scenario::Floor(_));
    if herald_server
        && needs_server
        && c.secret.is_empty()
        && !matches!(cli.scenario, Scenario::History(_))
    {
        bail!("--secret (the server's auth.hs256_secret) is required to mint client tokens");
    }
    if herald_server
        && needs_server
        && c.api_key.is_empty()
        && !matches!(
            cli.scenario,
            Scenario::Idle(_) | Scenario::ConnectLatency(_)
        )
    {
        bail!("--api-key (an API key with scope admin) is required for this scenario");
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("herald-bench: open-file limit {n}"),
        Err(e) => eprintln!("herald-bench: could not raise the open-file limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        match &cli.scenario {
            Scenario::Idle(a) => scenarios::idle::run(c, a).await,
            Scenario::Fanout(a) => scenarios::fanout::run(c, a).await,
            Scenario::Chat(a) => scenarios::chat::run(c, a).await,
            Scenario::Storm(a) => scenarios::storm::run(c, a).await,
            Scenario::Soak(a) => scenarios::soak::run(c, a).await,
            Scenario::Members(a) => scenarios::members::run(c, a).await,
            Scenario::History(a) => scenarios::history::run(c, a).await,
            Scenario::ConnectLatency(a) => scenarios::connect::run(c, a).await,
            Scenario::Floor(a) => scenarios::floor::run(c, a).await,
        }
    })?;
    if let Some(path) = &c.plot {
        std::fs::write(path, plot::render(&report.title(), &report.timeline))?;
        eprintln!("herald-bench: wrote {}", path.display());
    }
    if let Some(path) = &c.json_file {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing --json-file {}", path.display()))?;
        eprintln!("herald-bench: wrote {}", path.display());
    }
    if c.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    // Runtime shutdown must not wait on anything left: every task is bounded.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

impl Common {
    /// The client context for a run of `conns` connections.
    pub fn ctx(&self, conns: usize) -> Result<client::Ctx> {
        let target = client::parse_target(&self.url)?;
        let sources = self
            .sources
            .unwrap_or_else(|| client::default_sources(conns));
        Ok(
            client::Ctx::new(target, &self.secret, sources, self.id_offset)
                .with_peer(self.peer())
                .with_deflate(self.deflate),
        )
    }

    /// The peer under test, or `None` for Herald.
    pub fn peer(&self) -> Option<Peer> {
        match self.target {
            TargetKind::Herald => None,
            TargetKind::Socketio => Some(Peer::SocketIo(peers::socketio::SocketIo {
                server: self.socketio_server,
                path: self.socketio_path.clone(),
            })),
            TargetKind::Sockudo => Some(Peer::Pusher(peers::pusher::PusherApp {
                id: self.pusher_app_id.clone(),
                key: self.pusher_key.clone(),
                secret: self.pusher_secret.clone(),
            })),
        }
    }

    /// Room `n` of namespace `ns`, named as the target wants it.
    pub fn room(&self, ns: &str, n: u64) -> String {
        match self.peer() {
            Some(p) => p.room(ns, n),
            None => format!("{ns}:{n}"),
        }
    }

    /// Where publishers send, in the target's API.
    pub fn publish_api(&self) -> publish::Api {
        let base = self.publish_base();
        match self.peer() {
            Some(peer) if !peer.publishes_to_herald() => publish::Api::Peer { base, peer },
            _ => publish::Api::Herald {
                base,
                key: self.api_key.clone(),
            },
        }
    }

    /// The server process, when `--server-pid` was given.
    pub fn server(&self) -> Result<Option<procfs::Proc>> {
        self.server_pid
            .map(procfs::Proc::new)
            .transpose()
            .context("--server-pid")
    }

    /// The rooms' namespace.
    pub fn ns<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default)
    }
}

impl Common {
    /// `http://host:port` of the target (validated loopback).
    pub fn url_base(&self) -> String {
        client::parse_target(&self.url)
            .map(|t| t.http_base)
            .unwrap_or_default()
    }

    /// Base URL publishers post to.
    pub fn publish_base(&self) -> String {
        client::parse_target(self.publish_url.as_deref().unwrap_or(&self.url))
            .map(|t| t.http_base)
            .unwrap_or_default()
    }
}
