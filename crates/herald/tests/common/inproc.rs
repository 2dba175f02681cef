//! A node inside the test process: `herald_server::serve_on` on a listener
//! bound to `127.0.0.1:0` (so no other process can take the port between
//! choosing and binding it), on a thread of its own with its own 2-worker
//! tokio runtime (the test's runtime and the node's never share workers),
//! logging to the node's own file, drained and joined on drop.
//!
//! What stays process-level (`TestNode::start_process`): signals and exit
//! codes, `HERALD_*` environment overrides (process-global), and
//! `/metrics` (the Prometheus recorder is installed once per process, so
//! in-process nodes would share it).

use parking_lot::Mutex;
use std::fs::File;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing_subscriber::util::SubscriberInitExt;

/// Pending connections the kernel queues for the test listener (the
/// binary uses 4096; tests that open many sockets at once need more than
/// std's 128).
const BACKLOG: u32 = 1024;
/// How long drop waits for the drained node's thread to end.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// A running in-process node.
pub(crate) struct InProcess {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Says when the thread is done; a Mutex keeps `TestNode` `Sync`.
    done: Mutex<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Starts `config` and returns the node with the port it listens on.
    pub(crate) fn start(
        config: herald_server::Config,
        log_path: &Path,
    ) -> Result<(InProcess, u16), String> {
        let log = File::create(log_path).map_err(|e| format!("create log file: {e}"))?;
        // One subscriber per node, set as the default of every thread of
        // its runtime: each node's log stays in its own file.
        let subscriber = Arc::new(
            tracing_subscriber::fmt()
                .with_writer(Arc::new(log))
                .with_ansi(false)
                .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
                .finish(),
        );
        let (port_tx, port_rx) = mpsc::channel::<Result<u16, String>>();
        let (done_tx, done) = mpsc::channel::<()>();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("herald-node".into())
            .spawn(move || {
                let _log = subscriber.clone().set_default();
                let worker_subscriber = subscriber.clone();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(move || {
                        // The guard would reset the default when dropped;
                        // the thread ends with the runtime anyway.
                        std::mem::forget(worker_subscriber.clone().set_default());
                    })
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = port_tx.send(Err(format!("build runtime: {e}")));
                        return;
                    }
                };
                let listener = runtime.block_on(async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind("127.0.0.1:0".parse().expect("loopback address"))?;
                    socket.listen(BACKLOG)
                });
                let listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = port_tx.send(Err(format!("bind 127.0.0.1:0: {e}")));
                        return;
                    }
                };
                let port = listener.local_addr().map(|a| a.port());
                let _ = port_tx.send(port.map_err(|e| format!("local addr: {e}")));
                let stop = async move {
                    // A dropped sender (the TestNode is gone) stops it too.
                    let _ = shutdown_rx.await;
                };
                if let Err(e) = runtime.block_on(herald_server::serve_on(config, listener, stop)) {
                    eprintln!("in-process herald stopped with an error: {e}");
                }
                // serve_on drained and returned; whatever is left (a
                // blocking read of a Redis connection) is not waited for.
                runtime.shutdown_background();
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("spawn node thread: {e}"))?;
        let port = port_rx
            .recv()
            .map_err(|_| "node thread ended before binding".to_owned())??;
        Ok((
            InProcess {
                shutdown: Some(shutdown),
                done: Mutex::new(done),
                thread: Some(thread),
            },
            port,
        ))
    }

    /// Whether `serve_on` has returned (e.g. refused its config).
    pub(crate) fn exited(&self) -> bool {
        let done = self.done.lock();
        !matches!(done.try_recv(), Err(mpsc::TryRecvError::Empty))
    }

    /// Starts the drain without waiting for it (drop waits), so several
    /// nodes stop at the same time.
    pub(crate) fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.begin_stop();
        // Joined only once it has said it is done, so a node stuck in its
        // drain cannot hang the test binary.
        let done = self.done.lock();
        match done.recv_timeout(STOP_WAIT) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("in-process herald did not stop within {STOP_WAIT:?}; left running");
            }
        }
    }
}
