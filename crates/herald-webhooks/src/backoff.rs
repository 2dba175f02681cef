//! Exponential backoff with full jitter: the n-th wait is uniform in
//! `[0, min(cap, start * 2^n)]`, so receivers recovering from an outage are
//! not hit by every node at the same instant.

use std::time::Duration;

/// The retry schedule of one batch.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule starting at `start` and never above `cap`.
    pub fn new(start: Duration, cap: Duration) -> Self {
        Self {
            start,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.start.saturating_mul(factor).min(self.cap)
    }

    /// The next wait, jittered, moving the schedule on.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=millis))
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_waits_under_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let wait = b.next_wait();
            assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        // Many steps never overflow.
        for _ in 0..100 {
            b.next_wait();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
