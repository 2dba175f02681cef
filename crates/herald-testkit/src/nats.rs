//! A real `nats-server` with JetStream for tests.

use crate::{free_server_port, temp_dir, wait_for_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `nats-server` process with JetStream on, its store in a temp dir.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server with JetStream (file storage in its temp dir).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `nats-server` arguments (e.g. `--user`,
    /// `--pass`, `--auth`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_server_port(false),
            monitor_port: free_server_port(false),
            dir: temp_dir("nats"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("log file");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-js")
            .arg("-sd")
            .arg(self.dir.join("store"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (apt-get install -y nats-server)");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
        self.wait_jetstream(Duration::from_secs(10));
    }

    /// Waits until the monitoring endpoint reports JetStream on.
    fn wait_jetstream(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(body) = crate::http_get(self.monitor_port, "/jsz") {
                if body.contains("\"config\"") || body.contains("\"memory\"") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not enable JetStream within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A monitoring endpoint's body (`/varz`, `/connz`, `/jsz?streams=1`...).
    pub fn monitor(&self, path: &str) -> Option<String> {
        crate::http_get(self.monitor_port, path)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL). Its JetStream store stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store, as after a
    /// crash and restart of a server with persistence.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port with an empty store (every stream
    /// and bucket lost).
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("store"));
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
