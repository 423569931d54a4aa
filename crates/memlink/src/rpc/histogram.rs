//! A small fixed-bucket latency histogram that a worker records into without a lock or an
//! allocation, and a statistics request merges.
//!
//! Buckets are logarithmic with four sub-buckets per power of two (HDR-style): values below 4
//! have a bucket each, and a value `v >= 4` with top bit `e` goes to `4 * (e - 1) + ((v >> (e -
//! 2)) & 3)`. A bucket spans at most a quarter of its power of two, so a percentile read from
//! the buckets (reported as its bucket's upper bound, never below the true value) is at most
//! 25% high. Every `u64` of nanoseconds has its bucket (the last ends at 2^64 - 1 ns, 584
//! years), so even a handler that runs for hours is never reported shorter than it took; the
//! 252 buckets cost a worker 2 KiB.

use std::sync::atomic::{AtomicU64, Ordering};

/// Highest power of two with buckets of its own: a `u64`'s top bit.
const TOP_BIT: u32 = 63;
/// Number of buckets.
pub(crate) const BUCKETS: usize = 4 * TOP_BIT as usize;

/// The bucket of `value`.
pub(crate) fn bucket(value: u64) -> usize {
    if value < 4 {
        return value as usize;
    }
    // At most TOP_BIT, so the index is below BUCKETS.
    let top = 63 - value.leading_zeros();
    (4 * (top - 1) + ((value >> (top - 2)) & 3) as u32) as usize
}

/// The largest value bucket `index` holds.
pub(crate) fn upper_bound(index: usize) -> u64 {
    if index < 4 {
        return index as u64;
    }
    let top = (index / 4 + 1) as u32;
    let sub = (index % 4) as u64;
    let width = 1u64 << (top - 2);
    // `width - 1` first: the last bucket ends at u64::MAX.
    ((4 + sub) << (top - 2)) + (width - 1)
}

/// One worker's histogram: written by that worker only (a relaxed load and store, no locked
/// instruction), read by whoever answers a statistics request.
#[derive(Debug)]
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    /// Records `value`. Only one thread may record into a histogram.
    pub(crate) fn record(&self, value: u64) {
        if let Some(count) = self.counts.get(bucket(value)) {
            // Single writer: no read-modify-write needed (readers may see a count one behind).
            count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Adds this histogram's counts to `into`.
    pub(crate) fn merge_into(&self, into: &mut [u64; BUCKETS]) {
        for (sum, count) in into.iter_mut().zip(self.counts.iter()) {
            *sum += count.load(Ordering::Relaxed);
        }
    }
}

/// Percentiles of merged counts: `(samples, [p50, p90, p99, max])`, each a bucket's upper
/// bound (0 without samples).
pub(crate) fn summarize(counts: &[u64; BUCKETS]) -> (u64, [u64; 4]) {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return (0, [0; 4]);
    }
    let at = |q: f64| {
        let target = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, &count) in counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return upper_bound(index);
            }
        }
        upper_bound(BUCKETS - 1)
    };
    let max = counts.iter().rposition(|&c| c > 0).map_or(0, upper_bound);
    (total, [at(0.5), at(0.9), at(0.99), max])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious way: find the bucket whose range holds the value.
    fn naive_bucket(value: u64) -> usize {
        (0..BUCKETS)
            .find(|&i| value <= upper_bound(i))
            .unwrap_or(BUCKETS - 1)
    }

    #[test]
    fn buckets_tile_the_values_in_order() {
        for index in 1..BUCKETS {
            assert_eq!(upper_bound(index - 1) + 1, lower(index), "bucket {index}");
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(7), 7);
        assert_eq!(bucket(8), 8);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound(BUCKETS - 1), u64::MAX);
        // Three hours (beyond the 37 minutes the buckets once ended at) read as no less.
        let hours = 3 * 3600 * 1_000_000_000u64;
        assert!(upper_bound(bucket(hours)) >= hours);
        assert!(upper_bound(bucket(hours)) <= hours + hours / 4);
    }

    fn lower(index: usize) -> u64 {
        if index == 0 {
            0
        } else {
            upper_bound(index - 1) + 1
        }
    }

    #[test]
    fn percentiles_are_never_low_and_at_most_a_quarter_high() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let mut counts = [0; BUCKETS];
        h.merge_into(&mut counts);
        let (samples, [p50, p90, p99, max]) = summarize(&counts);
        assert_eq!(samples, 1000);
        for (got, truth) in [
            (p50, 500_000),
            (p90, 900_000),
            (p99, 990_000),
            (max, 1_000_000),
        ] {
            assert!(got >= truth && got <= truth + truth / 4, "{got} vs {truth}");
        }
        assert_eq!(summarize(&[0; BUCKETS]), (0, [0; 4]));
    }

    proptest! {
        #[test]
        fn bucket_agrees_with_the_naive_search(value in any::<u64>()) {
            prop_assert_eq!(bucket(value), naive_bucket(value));
            prop_assert!(value <= upper_bound(bucket(value)));
        }
    }
}
