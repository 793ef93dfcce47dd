//! A lock-free histogram of durations with fixed buckets, for the library's own timings
//! (container teardowns): recorded from any task, read as a [`TimeHistogram`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::status::TimeHistogram;

/// Upper bounds of the buckets, in milliseconds (Prometheus' `le`): a teardown takes a few
/// milliseconds on runc and crun, tens to hundreds on gVisor, seconds when a runtime stalls.
pub(crate) const BUCKET_BOUNDS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000];

/// Counts of durations by bucket, their number and their sum.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    /// Durations at most each bound (not cumulative; made cumulative when read).
    buckets: [AtomicU64; BUCKET_BOUNDS_MS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    pub(crate) fn record(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        if let Some(i) = BUCKET_BOUNDS_MS.iter().position(|&b| ms <= b as f64) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// What was recorded so far, with cumulative buckets.
    pub(crate) fn read(&self) -> TimeHistogram {
        let mut seen = 0;
        let buckets = BUCKET_BOUNDS_MS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                seen += n.load(Ordering::Relaxed);
                (Duration::from_millis(bound), seen)
            })
            .collect();
        // A duration recorded meanwhile may be in a bucket and not yet in the count.
        TimeHistogram {
            count: self.count.load(Ordering::Relaxed).max(seen),
            sum: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_adds_up() {
        let h = DurationHistogram::default();
        for ms in [0, 3, 3, 40, 20_000] {
            h.record(Duration::from_millis(ms));
        }
        let read = h.read();
        assert_eq!(read.count, 5);
        assert_eq!(read.sum, Duration::from_millis(20_046));
        let at = |ms| {
            read.buckets
                .iter()
                .find(|(b, _)| *b == Duration::from_millis(ms))
                .unwrap()
                .1
        };
        assert_eq!((at(1), at(2), at(5), at(50), at(10_000)), (1, 1, 3, 4, 4));
    }
}
