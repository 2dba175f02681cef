//! Writing what fan-out queued, spread over the runtime's workers.
//!
//! Fan-out queues an event for every member under the room's lock, then
//! writes once the lock is let go. A loopback write costs about 10 µs of
//! kernel time (the receiving side's TCP work is charged to the sender), so
//! one core needs about 10 ms for a room of 1,000. A large room's writes are
//! therefore split into chunks run as tasks, which the runtime's other
//! workers pick up; a small room's are written inline. Each connection's
//! queue keeps its own order, so chunks may run in any order.

use crate::conn::Connection;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

/// Connections written by one task. Small enough that a room of 1,000
/// spreads over every core, large enough that a task's start-up is noise
/// next to its writes.
const CHUNK: usize = 128;

/// Writes connections' queued frames, in chunks across the runtime.
pub(crate) struct Flusher {
    tasks: TaskTracker,
}

impl Flusher {
    /// Chunk tasks are tracked by the node's `tasks`.
    pub(crate) fn new(tasks: TaskTracker) -> Self {
        Self { tasks }
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
