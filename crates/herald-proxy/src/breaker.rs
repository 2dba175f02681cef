//! The circuit breaker of one backend URL: closed while calls succeed, open
//! after `failures` consecutive failures (every call then fails fast for
//! `cooldown`), then half-open: one probe call goes through, and its
//! outcome closes the breaker or opens it again.
//!
//! Pure state, no I/O: the client asks for a [`Ticket`] before a call and
//! reports the call's outcome through it. A ticket dropped without an
//! outcome (the caller went away mid-call) counts as neither, but a probe
//! dropped that way lets the next call probe, so the breaker never sticks
//! half-open.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the breaker decided about a call that is about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` consecutive ones have failed.
    Closed { failures: u32 },
    /// Calls fail fast until `until`; the first call after it probes.
    Open { until: Instant },
    /// The probe is in flight; other calls fail fast.
    HalfOpen,
}

/// A change of state worth a log line and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened (or opened again after a failed probe).
    Opened,
    /// A probe succeeded: the breaker closed.
    Closed,
}

/// The breaker of one URL. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Breaker {
    state: Arc<Mutex<State>>,
    threshold: u32,
    cooldown: Duration,
}

/// Permission to make one call; report its outcome with [`Ticket::success`]
/// or [`Ticket::failure`].
#[derive(Debug)]
pub struct Ticket {
    breaker: Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// (at least 1) and stays open for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// A ticket for one call, or `None` when the call must fail fast (open,
    /// or half-open with the probe in flight).
    pub fn admit(&self) -> Option<Ticket> {
        let mut state = self.state.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Ticket {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    /// Whether calls are currently refused (open or half-open).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state.lock(), State::Closed { .. })
    }

    fn record(&self, probe: bool, ok: bool) -> Option<Transition> {
        let mut state = self.state.lock();
        match (*state, probe, ok) {
            (State::HalfOpen, true, true) => {
                *state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (State::HalfOpen, true, false) => {
                *state = State::Open {
                    until: Instant::now() + self.cooldown,
                };
                Some(Transition::Opened)
            }
            (State::Closed { .. }, false, true) => {
                *state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, false, false) => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    *state = State::Open {
                        until: Instant::now() + self.cooldown,
                    };
                    Some(Transition::Opened)
                } else {
                    *state = State::Closed { failures };
                    None
                }
            }
            // A call admitted before the breaker opened, ending after: the
            // probe alone decides when it closes.
            _ => None,
        }
    }
}

impl Ticket {
    /// The call succeeded (the backend answered sensibly, a refusal
    /// included).
    pub fn success(mut self) -> Option<Transition> {
        self.reported = true;
        self.breaker.record(self.probe, true)
    }

    /// The call failed: timeout, connection error, 5xx or an answer that
    /// does not parse.
    pub fn failure(mut self) -> Option<Transition> {
        self.reported = true;
        self.breaker.record(self.probe, false)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            // The probe was abandoned: open with no cooldown left, so the
            // next call probes instead of the breaker staying half-open.
            let mut state = self.breaker.state.lock();
            if *state == State::HalfOpen {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(5);

    fn fail(b: &Breaker) -> Option<Transition> {
        b.admit().map(Ticket::failure).unwrap_or(None)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, COOLDOWN);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        // A success resets the count.
        assert_eq!(b.admit().map(Ticket::success), Some(None));
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), Some(Transition::Opened));
        assert!(b.is_open());
        assert!(b.admit().is_none(), "open: fails fast");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through() {
        let b = Breaker::new(1, COOLDOWN);
        assert_eq!(fail(&b), Some(Transition::Opened));
        tokio::time::advance(COOLDOWN - Duration::from_millis(1)).await;
        assert!(b.admit().is_none(), "still cooling down");
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.admit().expect("the probe goes through");
        assert!(b.admit().is_none(), "only one probe at a time");
        assert_eq!(probe.success(), Some(Transition::Closed));
        assert!(!b.is_open());
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_a_full_cooldown() {
        let b = Breaker::new(1, COOLDOWN);
        fail(&b);
        tokio::time::advance(COOLDOWN).await;
        assert_eq!(fail(&b), Some(Transition::Opened));
        tokio::time::advance(COOLDOWN / 2).await;
        assert!(b.admit().is_none());
        tokio::time::advance(COOLDOWN / 2).await;
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_lets_the_next_call_probe() {
        let b = Breaker::new(1, COOLDOWN);
        fail(&b);
        tokio::time::advance(COOLDOWN).await;
        drop(b.admit().expect("probe"));
        let probe = b.admit().expect("the next call probes at once");
        assert_eq!(probe.success(), Some(Transition::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_of_calls_admitted_before_opening_are_ignored() {
        let b = Breaker::new(1, COOLDOWN);
        let early = b.admit().expect("closed");
        fail(&b);
        assert_eq!(early.success(), None);
        assert!(b.is_open(), "only the probe closes the breaker");
    }
}
