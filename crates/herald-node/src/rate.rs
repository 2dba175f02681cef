//! Token buckets: one per connection for its frames, and one per user
//! (tenant and user id) for opening SSE streams.

use herald_core::Tenant;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Whether the bucket has refilled to `burst` by `now`: forgetting it
    /// then changes nothing.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.tokens + elapsed.as_secs_f64() * self.rate >= self.burst
    }

    /// Takes one token if there is one, as of `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long a client may stay over the limit before it is closed with 4008.
pub(crate) const RATE_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// Buckets kept before the full ones are forgotten.
const PRUNE_FLOOR: usize = 1024;

/// One token bucket per user (tenant and user id), for opening SSE streams:
/// each open takes a token, so one user cannot open streams as fast as it
/// likes. Buckets that refilled are forgotten once many are kept, so memory
/// follows the users active in the last `burst / rate` seconds.
#[derive(Debug)]
pub(crate) struct UserRates {
    rate: u32,
    burst: u32,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_user: HashMap<(Tenant, String), TokenBucket>,
    /// Size at which the full buckets are dropped next.
    prune_at: usize,
}

impl UserRates {
    /// Buckets of `rate` tokens per second, `burst` at most.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(Buckets {
                by_user: HashMap::new(),
                prune_at: PRUNE_FLOOR,
            }),
        }
    }

    /// Takes one token from the user's bucket, as of `now`.
    pub(crate) fn try_take(&self, tenant: &Tenant, user: &str, now: Instant) -> bool {
        let mut b = self.buckets.lock();
        if b.by_user.len() >= b.prune_at {
            b.by_user.retain(|_, bucket| !bucket.is_full(now));
            // Doubling keeps pruning amortised when most buckets are busy.
            b.prune_at = (b.by_user.len() * 2).max(PRUNE_FLOOR);
        }
        let (rate, burst) = (self.rate, self.burst);
        b.by_user
            .entry((tenant.clone(), user.to_owned()))
            .or_insert_with(|| TokenBucket::new(rate, burst))
            .try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!(b.try_take(start));
        assert!(b.try_take(start));
        assert!(b.try_take(start));
        assert!(!b.try_take(start));
        assert!(b.try_take(start + Duration::from_millis(100)));
        assert!(!b.try_take(start + Duration::from_millis(100)));
    }

    #[test]
    fn user_buckets_are_apart_and_forgotten_when_full() {
        let rates = UserRates::new(1, 2);
        let start = Instant::now();
        let t = Tenant::default_tenant();
        assert!(rates.try_take(&t, "a", start));
        assert!(rates.try_take(&t, "a", start));
        assert!(!rates.try_take(&t, "a", start), "burst of 2 spent");
        assert!(rates.try_take(&t, "b", start), "another user has its own");
        let other = Tenant::from_option(Some("t2"));
        assert!(rates.try_take(&other, "a", start), "and another tenant");
        let later = start + Duration::from_secs(5);
        assert!(rates.try_take(&t, "a", later), "refilled");
        // Three users so far; fill up to the pruning size.
        for i in 3..PRUNE_FLOOR {
            rates.try_take(&t, &format!("u{i}"), later);
        }
        let much_later = later + Duration::from_secs(60);
        rates.try_take(&t, "new", much_later);
        assert_eq!(rates.buckets.lock().by_user.len(), 1, "full buckets pruned");
    }
}
