//! Real Redis and NATS servers for tests: a single `redis-server`, a
//! 3-master Redis Cluster, or a `nats-server` with JetStream, each on free
//! loopback ports in a temp dir, killed (and the dir removed) on drop.
//! Tests never mock Redis or NATS.
//!
//! `redis-server`, `redis-cli` and `nats-server` must be on `PATH`;
//! `.ci/run` installs them (`apt-get install -y redis-server nats-server`)
//! when missing.

//!
//! [`conformance`] holds the engine conformance suite.

#![warn(missing_docs)]

pub mod conformance;
mod nats;

pub use nats::NatsServer;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A free loopback TCP port (bound, then released), from the kernel's
/// ephemeral range: for clients that connect from it right away.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A free loopback port for a server to listen on, below the kernel's
/// ephemeral range (32768 and up) so that no client socket of a concurrent
/// test takes it between this check and the server's bind. With
/// `cluster_bus`, P + 10000 (Redis Cluster's bus port) is free too.
pub fn free_server_port(cluster_bus: bool) -> u16 {
    let seed = std::process::id() as u64 * 7919
        + COUNTER.fetch_add(1, Ordering::SeqCst) * 104_729
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    for i in 0..2000u64 {
        let port = 20_000 + ((seed + i * 7_561) % 12_000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && (!cluster_bus || free(port + 10_000)) {
            return port;
        }
    }
    panic!("no free server port between 20000 and 32000 on loopback");
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("herald-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

pub(crate) fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not listen on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `redis-cli -p PORT args...` and returns its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli (apt-get install -y redis-server)");
    if !out.status.success() || out.stdout.is_empty() {
        // Said where the test's own assertion on the output will not.
        eprintln!(
            "redis-cli -p {port} {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = temp_dir("redis");
        let clustered = extra.contains(&"--cluster-enabled");
        let mut server = Self {
            child: None,
            port: free_server_port(clustered),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // Another test process may take the same port between our check and
        // redis-server's bind; then our server exits and something else
        // answers on the port. Only a PONG from a live child of ours counts,
        // and a lost port is traded for another (a restart keeps its port
        // while it can, since the caller's clients point at it).
        for attempt in 0..5 {
            if attempt > 0 {
                self.port = free_server_port(self.extra.iter().any(|a| a == "--cluster-enabled"));
            }
            let log = std::fs::File::create(self.dir.join("redis.log")).expect("log file");
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .args(&self.extra)
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (apt-get install -y redis-server)");
            self.child = Some(child);
            if self.wait_until_ours(Duration::from_secs(10)) {
                return;
            }
            self.kill();
        }
        panic!("redis-server could not listen on a free port in 5 attempts");
    }

    /// Waits until our child answers PING on its port; false when it
    /// exited first (its port was taken).
    fn wait_until_ours(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return false;
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && redis_cli(self.port, &["PING"]).trim() == "PONG"
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {} within {within:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Kills the server (SIGKILL): its data is gone, as after a crash of a
    /// server without persistence.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters and no replicas.
pub struct RedisCluster {
    servers: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into one cluster
    /// covering all 16384 slots; returns once the cluster reports `ok`.
    pub fn start() -> Self {
        let servers: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = servers
                .iter()
                .all(|s| s.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "Redis Cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { servers }
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.servers[0].port());
        for (i, s) in self.servers.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", s.port()));
        }
        url
    }

    /// The masters.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }
}

/// `GET path` on `127.0.0.1:port` over plain HTTP/1.0; the body of a 200
/// answer, or `None`.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}
