//! What the loop records for the metrics and the dashboard beside its
//! member state: how long its passes take (a Prometheus histogram) and
//! until when this node's lease is proved.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds of the loop-duration histogram's buckets, in seconds.
pub const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Telemetry {
    /// Passes per bucket (not cumulative), the last for those above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    last_us: AtomicU64,
    /// When this node's lease, if it holds it, expires at the earliest
    /// (the renewal's send time plus the TTL).
    lease_until: Mutex<Option<Instant>>,
}

/// A snapshot of the histogram: cumulative counts per bucket, `+Inf` last.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopHistogram {
    pub cumulative: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
    pub last_s: Option<f64>,
}

impl Telemetry {
    pub fn record_pass(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.last_us.store(us.max(1), Ordering::Relaxed);
    }

    pub fn loop_histogram(&self) -> LoopHistogram {
        let mut acc = 0;
        let cumulative: Vec<u64> = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        let last = self.last_us.load(Ordering::Relaxed);
        LoopHistogram {
            count: acc,
            cumulative,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            last_s: (last > 0).then(|| last as f64 / 1e6),
        }
    }

    pub fn lease_proved(&self, sent: Instant, ttl: Duration) {
        *self.lease_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent + ttl);
    }

    pub fn lease_dropped(&self) {
        *self.lease_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The time left on this node's own lease (zero once passed), if it
    /// proved one.
    pub fn lease_remaining(&self, now: Instant) -> Option<Duration> {
        self.lease_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_inf_last() {
        let t = Telemetry::default();
        assert_eq!(t.loop_histogram().last_s, None);
        t.record_pass(Duration::from_millis(3));
        t.record_pass(Duration::from_millis(30));
        t.record_pass(Duration::from_secs(60));
        let h = t.loop_histogram();
        assert_eq!(h.count, 3);
        assert_eq!(h.cumulative.len(), BUCKETS.len() + 1);
        assert_eq!(h.cumulative[0], 1); // <= 5 ms
        assert_eq!(h.cumulative[2], 1); // <= 25 ms
        assert_eq!(h.cumulative[3], 2); // <= 50 ms
        assert_eq!(h.cumulative[BUCKETS.len() - 1], 2);
        assert_eq!(h.cumulative[BUCKETS.len()], 3);
        assert!((h.sum_s - 60.033).abs() < 1e-6);
        assert_eq!(h.last_s, Some(60.0));
    }

    #[test]
    fn lease_remaining_counts_down_and_saturates() {
        let t = Telemetry::default();
        let now = Instant::now();
        assert_eq!(t.lease_remaining(now), None);
        t.lease_proved(now, Duration::from_secs(5));
        assert_eq!(
            t.lease_remaining(now + Duration::from_secs(2)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            t.lease_remaining(now + Duration::from_secs(9)),
            Some(Duration::ZERO)
        );
        t.lease_dropped();
        assert_eq!(t.lease_remaining(now), None);
    }
}
