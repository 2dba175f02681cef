//! Writing what fan-out queued, spread over the runtime's workers.
//!
//! Fan-out queues an event for every member under the room's lock, then
//! writes once the lock is let go: for a publication, once the broker let
//! go of its room lock too (the sink returns the writes as
//! [`herald_core::broker::Writes`], which the engine runs after releasing
//! it, or on a worker task). A loopback write costs about 10 µs of
//! kernel time (the receiving side's TCP work is charged to the sender), so
//! one core needs about 10 ms for a room of 1,000. A large room's writes are
//! therefore split into chunks run as tasks, which the runtime's other
//! workers pick up; a small room's are written inline. Each connection's
//! queue keeps its own order, so chunks may run in any order.

use crate::conn::Connection;
use herald_core::broker::Writes;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

/// Connections written by one task. Small enough that a room of 1,000
/// spreads over every core, large enough that a task's start-up is noise
/// next to its writes.
const CHUNK: usize = 128;

/// Writes connections' queued frames, in chunks across the runtime.
#[derive(Clone)]
pub(crate) struct Flusher {
    tasks: TaskTracker,
}

impl Flusher {
    /// Chunk tasks are tracked by the node's `tasks`.
    pub(crate) fn new(tasks: TaskTracker) -> Self {
        Self { tasks }
    }

    /// What is queued for each of `conns`, to write once the broker's
    /// locks are released (nothing to run when `conns` is empty).
    pub(crate) fn writes(&self, conns: Vec<Arc<Connection>>) -> Writes {
        if conns.is_empty() {
            return Writes::none();
        }
        let flusher = self.clone();
        Writes::new(move || flusher.flush(conns))
    }

    /// Writes what is queued for each of `conns`.
    pub(crate) fn flush(&self, mut conns: Vec<Arc<Connection>>) {
        if conns.len() > CHUNK {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                while conns.len() > CHUNK {
                    let chunk = conns.split_off(conns.len() - CHUNK);
                    self.tasks
                        .spawn_on(async move { flush_all(&chunk) }, &runtime);
                }
            }
        }
        flush_all(&conns);
    }
}

fn flush_all(conns: &[Arc<Connection>]) {
    for conn in conns {
        conn.queue.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Outbound, SendQueue, SocketWriter};
    use crate::transport::Transport;
    use herald_core::Identity;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Counts the items it is asked to write, and takes them all.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl SocketWriter for Counting {
        fn write_now(&self, items: &[Outbound], _offset: &mut usize) -> std::io::Result<usize> {
            self.0.fetch_add(items.len(), Ordering::Relaxed);
            Ok(items.len())
        }
    }

    fn conns(n: usize, writer: &Arc<Counting>) -> Vec<Arc<Connection>> {
        (0..n)
            .map(|i| {
                let queue = SendQueue::with_writer(16, 1 << 20, writer.clone());
                let conn = Connection::new(
                    format!("c{i}"),
                    Identity::new(format!("u{i}")),
                    &Transport::WEBSOCKET,
                    &herald_protocol::HERALD_JSON,
                    queue,
                    Instant::now(),
                    0,
                );
                let frame = Outbound::control(bytes::Bytes::from_static(b"{}"));
                conn.queue.enqueue(frame);
                Arc::new(conn)
            })
            .collect()
    }

    #[test]
    fn without_a_runtime_everything_is_written_inline() {
        let writer = Arc::new(Counting::default());
        Flusher::new(TaskTracker::new()).flush(conns(300, &writer));
        assert_eq!(writer.0.load(Ordering::Relaxed), 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_room_is_written_in_chunks_by_tracked_tasks() {
        let writer = Arc::new(Counting::default());
        let tasks = TaskTracker::new();
        let all = conns(1000, &writer);
        Flusher::new(tasks.clone()).flush(all.clone());
        // The last chunk was written inline; the others by tasks.
        assert!(writer.0.load(Ordering::Relaxed) >= 1000 % CHUNK);
        tasks.close();
        tasks.wait().await;
        assert_eq!(writer.0.load(Ordering::Relaxed), 1000);
        assert!(all.iter().all(|c| c.queue.is_empty()));
    }
}
