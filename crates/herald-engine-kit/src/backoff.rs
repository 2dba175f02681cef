//! Waits between failed attempts of a reconnecting loop (the Redis ingest
//! consumer's, the bridges'): exponential from 100 ms, capped at 5 s, with
//! jitter so that the nodes of a cluster do not retry in step.

use rand::Rng;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

/// Consecutive failures and the next wait.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait before the next attempt, in [d/2, d] where d doubles with
    /// each failure up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let full = FIRST.saturating_mul(1 << shift).min(CAP);
        let half = full / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_stays_under_the_cap() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= FIRST / 2 && first <= FIRST);
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d <= CAP, "{d:?}");
        }
        assert!(b.next_delay() >= CAP / 2);
        assert!(b.failing());
        b.reset();
        assert!(!b.failing());
        assert!(b.next_delay() <= FIRST);
    }
}
