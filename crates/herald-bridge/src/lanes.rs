//! Per-room pipelining: a bridge's messages are spread over [`LANES`]
//! lanes by room, each lane publishing its messages one after the other in
//! the order received. Rooms run concurrently (up to [`LANES`] publishes in
//! flight), one room's messages in order, so throughput is not one round
//! trip at a time.

use std::future::Future;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Lanes per bridge: publishes in flight at most.
pub(crate) const LANES: usize = 64;
/// Messages queued per lane before the reader waits (backpressure).
const LANE_QUEUE: usize = 16;

/// The senders of one bridge's lanes.
pub(crate) struct Lanes<J> {
    senders: Vec<mpsc::Sender<J>>,
}

impl<J: Send + 'static> Lanes<J> {
    /// Starts [`LANES`] workers on `tasks`, each running `work` on its jobs
    /// in order until `cancel` fires or the lanes are dropped. A job still
    /// queued at cancel is handed to `abandon` (a JetStream message is then
    /// given back at once).
    pub(crate) fn spawn<W, F, A, G>(
        work: W,
        abandon: A,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self
    where
        W: Fn(J) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + Send,
        A: Fn(J) -> G + Clone + Send + 'static,
        G: Future<Output = ()> + Send,
    {
        let mut senders = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, mut rx) = mpsc::channel::<J>(LANE_QUEUE);
            let (work, abandon, cancel) = (work.clone(), abandon.clone(), cancel.clone());
            tasks.spawn(async move {
                loop {
                    let job = tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        j = rx.recv() => match j {
                            Some(j) => j,
                            None => return,
                        },
                    };
                    work(job).await;
                }
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    abandon(job).await;
                }
            });
            senders.push(tx);
        }
        Self { senders }
    }

    /// Queues `job` on lane `lane` (waiting while that lane is full);
    /// `false` when the lane has stopped (cancelled).
    pub(crate) async fn send(&self, lane: usize, job: J) -> bool {
        match self.senders.get(lane % self.senders.len().max(1)) {
            Some(tx) => tx.send(job).await.is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn one_lane_keeps_its_order_and_lanes_run_concurrently() {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let lanes = Lanes::spawn(
            move |(lane, n): (usize, u32)| {
                let record = record.clone();
                async move {
                    // Lane 0 is slow: lane 1 must not wait for it.
                    if lane == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    record.lock().push((lane, n));
                }
            },
            |_| async {},
            &cancel,
            &tasks,
        );
        for n in 0..5 {
            assert!(lanes.send(0, (0, n)).await);
            assert!(lanes.send(1, (1, n)).await);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().len() < 10 {
            assert!(tokio::time::Instant::now() < deadline, "lanes stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen = seen.lock().clone();
        for lane in [0, 1] {
            let order: Vec<u32> = seen.iter().filter(|j| j.0 == lane).map(|j| j.1).collect();
            assert_eq!(order, vec![0, 1, 2, 3, 4]);
        }
        // Lane 1 finished before slow lane 0 did.
        let last_of_1 = seen.iter().rposition(|j| j.0 == 1).unwrap();
        assert!(last_of_1 < 9, "{seen:?}");
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
