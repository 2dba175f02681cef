//! Pure accounting: latency histograms (overall and per second) and the
//! per-connection, per-room offset tracker that counts lost, duplicated and
//! out-of-order events.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Highest latency the histograms record, in µs (60 s); higher is clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Most gap offsets remembered per tracker; gaps beyond are counted lost
/// at once (a late arrival of one of them would then count as duplicate).
const MAX_REMEMBERED_GAPS: usize = 10_000;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn new_histogram() -> Histogram<u64> {
    // Bounds and 3 significant figures are valid constants: this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One second of a run, for the progress line and the plot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecondSample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Deliveries counted in that second.
    pub deliveries: u64,
    /// Latency p50 in that second, ms.
    pub p50_ms: f64,
    /// Latency p99 in that second, ms.
    pub p99_ms: f64,
}

/// Latency recorder shared by every connection task; locked only for one
/// histogram update, never across an await.
pub struct Recorder {
    inner: Mutex<Hists>,
    deliveries: AtomicU64,
}

struct Hists {
    total: Histogram<u64>,
    second: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Hists {
                total: new_histogram(),
                second: new_histogram(),
            }),
            deliveries: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    /// Records one delivery sent at `sent_us` (µs since epoch) seen at `now_us`.
    pub fn record(&self, sent_us: u64, now_us: u64) {
        let lat = now_us.saturating_sub(sent_us).clamp(1, MAX_LATENCY_US);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let mut h = self.inner.lock();
        // Values are clamped into the bounds, so recording cannot fail.
        let _ = h.total.record(lat);
        let _ = h.second.record(lat);
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Takes the current second's histogram (leaving an empty one).
    pub fn take_second(&self) -> Percentiles {
        let mut h = self.inner.lock();
        let p = Percentiles::of(&h.second);
        h.second.reset();
        p
    }

    /// Percentiles over the whole run.
    pub fn total(&self) -> Percentiles {
        Percentiles::of(&self.inner.lock().total)
    }

    /// Forgets everything recorded (e.g. after a warm-up).
    pub fn reset(&self) {
        let mut h = self.inner.lock();
        h.total.reset();
        h.second.reset();
        self.deliveries.store(0, Ordering::Relaxed);
    }
}

/// Loss, duplicate and order counts.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Accounting {
    /// Events received (in order, late or duplicated).
    pub received: u64,
    /// Events that never arrived.
    pub lost: u64,
    /// Events received more than once.
    pub duplicated: u64,
    /// Events that arrived after a later offset of the same room.
    pub out_of_order: u64,
}

impl Accounting {
    /// Adds another count into this one.
    pub fn add(&mut self, o: &Accounting) {
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
    }
}

/// What one connection saw of one room's stream, by offset.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Highest offset seen (or the join position).
    last: u64,
    /// Offsets skipped over and not (yet) received.
    gaps: BTreeSet<u64>,
    /// Gap offsets not remembered (over [`MAX_REMEMBERED_GAPS`]): lost.
    forgotten: u64,
    received: u64,
    duplicated: u64,
    out_of_order: u64,
}

impl OffsetTracker {
    /// A tracker starting after `offset` (the room's position at join).
    pub fn starting_at(offset: u64) -> Self {
        Self {
            last: offset,
            ..Self::default()
        }
    }

    /// Highest offset seen.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Counts one arrival.
    pub fn see(&mut self, offset: u64) {
        self.received += 1;
        if offset == self.last + 1 {
            self.last = offset;
        } else if offset > self.last {
            for o in self.last + 1..offset {
                if self.gaps.len() < MAX_REMEMBERED_GAPS {
                    self.gaps.insert(o);
                } else {
                    self.forgotten += 1;
                }
            }
            self.last = offset;
        } else if self.gaps.remove(&offset) {
            self.out_of_order += 1;
        } else {
            self.duplicated += 1;
        }
    }

    /// Moves on to `offset` after a refused resume (`recovered: false`),
    /// keeping the counts so far. In the same epoch the offsets skipped
    /// are counted by the caller (they are known missed, not lost here);
    /// in a new epoch the old epoch's open gaps stay lost and offsets
    /// start over.
    pub fn restart_at(&mut self, offset: u64, same_epoch: bool) {
        if same_epoch {
            self.last = self.last.max(offset);
        } else {
            self.forgotten += self.gaps.len() as u64;
            self.gaps.clear();
            self.last = offset;
        }
    }

    /// Final counts, given the room's last published offset.
    pub fn finish(&self, final_offset: u64) -> Accounting {
        Accounting {
            received: self.received,
            lost: self.gaps.len() as u64 + self.forgotten + final_offset.saturating_sub(self.last),
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_nothing_to_report() {
        let mut t = OffsetTracker::starting_at(10);
        for o in 11..=20 {
            t.see(o);
        }
        let a = t.finish(20);
        assert_eq!(
            a,
            Accounting {
                received: 10,
                ..Accounting::default()
            }
        );
    }

    #[test]
    fn gaps_tail_loss_duplicates_and_late_arrivals() {
        let mut t = OffsetTracker::starting_at(0);
        t.see(1);
        t.see(4); // 2, 3 skipped
        t.see(3); // late: out of order, no longer lost
        t.see(4); // duplicate
        t.see(1); // duplicate
        let a = t.finish(6); // 5 and 6 never came
        assert_eq!(a.received, 5);
        assert_eq!(a.lost, 1 + 2);
        assert_eq!(a.duplicated, 2);
        assert_eq!(a.out_of_order, 1);
    }

    #[test]
    fn events_before_join_are_not_lost() {
        let t = OffsetTracker::starting_at(100);
        assert_eq!(t.finish(100).lost, 0);
        assert_eq!(t.finish(90).lost, 0);
    }

    #[test]
    fn refused_resume_keeps_counts() {
        let mut t = OffsetTracker::starting_at(0);
        t.see(1);
        t.see(3); // 2 lost
        t.restart_at(10, true); // 4..=10 known missed by the caller
        t.see(11);
        let a = t.finish(11);
        assert_eq!((a.received, a.lost), (3, 1));
        t.restart_at(2, false); // new epoch: 2 stays lost, offsets restart
        t.see(2);
        t.see(3);
        let a = t.finish(3);
        assert_eq!((a.received, a.lost, a.out_of_order), (5, 1, 0));
    }

    #[test]
    fn huge_gap_is_bounded_but_counted() {
        let mut t = OffsetTracker::starting_at(0);
        t.see(MAX_REMEMBERED_GAPS as u64 + 501);
        assert_eq!(t.finish(0).lost, MAX_REMEMBERED_GAPS as u64 + 500);
    }

    #[test]
    fn percentiles_of_known_distribution() {
        let r = Recorder::default();
        for i in 1..=1000u64 {
            r.record(0, i * 1000); // 1..=1000 ms
        }
        let p = r.total();
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p90_ms - 900.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(r.deliveries(), 1000);
        let s = r.take_second();
        assert_eq!(s.count, 1000);
        assert_eq!(r.take_second().count, 0);
        assert_eq!(r.total().count, 1000);
    }

    #[test]
    fn clock_skew_never_underflows() {
        let r = Recorder::default();
        r.record(2_000, 1_000);
        assert_eq!(r.total().count, 1);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }
}
