//! The cluster registry's metrics, the same names for every engine (no
//! labels: node ids are not bounded), and the broker command timer
//! ([`Command`]) every engine wraps its round trips in.

use metrics::{counter, describe_counter, describe_gauge, gauge};
use std::sync::Once;

const NODES_ALIVE: &str = "herald_cluster_nodes_alive";
const NODES_REAPED: &str = "herald_cluster_nodes_reaped_total";
const LOCKS_LOST: &str = "herald_cluster_locks_lost_total";

/// Describes the metrics once per process, registered at zero.
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_gauge!(NODES_ALIVE, "Nodes whose heartbeat is current");
        describe_counter!(
            NODES_REAPED,
            "Dead nodes whose registry entries this node cleaned up"
        );
        describe_counter!(
            LOCKS_LOST,
            "Exclusive sessions closed because another connection took the lock"
        );
        counter!(NODES_REAPED).increment(0);
        counter!(LOCKS_LOST).increment(0);
    });
}

/// Sets how many nodes have a current heartbeat.
pub fn nodes_alive(n: usize) {
    gauge!(NODES_ALIVE).set(n as f64);
}

/// Counts a dead node whose entries this node cleaned up.
pub fn node_reaped() {
    counter!(NODES_REAPED).increment(1);
}

/// Counts an exclusive session closed because its lock was taken.
pub fn lock_lost() {
    counter!(LOCKS_LOST).increment(1);
}

/// Histogram of broker command round trips, by `engine` and `command`.
pub const COMMAND_DURATION: &str = "herald_broker_command_duration_seconds";
/// Failed broker commands (an error answer, a timeout, no connection), by
/// `engine` and `command`.
pub const COMMAND_ERRORS: &str = "herald_broker_command_errors_total";

/// One kind of broker command (`engine` and `command` are from a fixed
/// set per engine, documented in operations.md section 7), timed with
/// [`Command::time`]. The metric handles are made on first use and kept,
/// so a timed call costs two clock reads and no registry lookup.
pub struct Command {
    engine: &'static str,
    command: &'static str,
    handles: std::sync::OnceLock<(metrics::Histogram, metrics::Counter)>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("engine", &self.engine)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Command {
    /// The command `command` of `engine`; usable in a `static`.
    pub const fn new(engine: &'static str, command: &'static str) -> Self {
        Self {
            engine,
            command,
            handles: std::sync::OnceLock::new(),
        }
    }

    /// The command's name (its `command` label).
    pub fn name(&self) -> &'static str {
        self.command
    }

    fn handles(&self) -> &(metrics::Histogram, metrics::Counter) {
        self.handles.get_or_init(|| {
            let (engine, command) = (self.engine, self.command);
            (
                metrics::histogram!(COMMAND_DURATION, "engine" => engine, "command" => command),
                metrics::counter!(COMMAND_ERRORS, "engine" => engine, "command" => command),
            )
        })
    }

    /// Registers the error counter at zero and describes both metrics, so
    /// a fresh node shows the series before the first failure.
    pub fn register(&self) {
        describe_commands();
        self.handles().1.increment(0);
    }

    /// Runs `fut`, recording its duration and counting an `Err` as an
    /// error of this command.
    pub async fn time<T, E>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = fut.await;
        self.record(started.elapsed(), result.is_ok());
        result
    }

    /// Counts an error of this command that was refused before it was
    /// sent (no connection), so it has no duration.
    pub fn refused(&self) {
        self.handles().1.increment(1);
    }

    /// Records one command that took `elapsed` and succeeded or not (for
    /// call sites whose outcome is not a `Result`).
    pub fn record(&self, elapsed: std::time::Duration, ok: bool) {
        let (histogram, errors) = self.handles();
        histogram.record(elapsed.as_secs_f64());
        if !ok {
            errors.increment(1);
        }
    }
}

/// Describes the broker command metrics once per process.
pub fn describe_commands() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_histogram!(
            COMMAND_DURATION,
            metrics::Unit::Seconds,
            "Broker command round trips, by engine and command"
        );
        describe_counter!(
            COMMAND_ERRORS,
            "Broker commands that failed (error answer, timeout, no connection), by engine and command"
        );
    });
}

/// Registers every command of `commands` at zero (see [`Command::register`]).
pub fn register_commands(commands: &[&Command]) {
    for c in commands {
        c.register();
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    static CMD: Command = Command::new("test", "publish");

    #[tokio::test]
    async fn time_passes_the_result_through() {
        assert_eq!(CMD.time(async { Ok::<_, ()>(7) }).await, Ok(7));
        assert_eq!(CMD.time(async { Err::<(), _>("no") }).await, Err("no"));
        assert_eq!(CMD.name(), "publish");
    }
}
