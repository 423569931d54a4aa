//! The monotonic clock as a number every process on the machine agrees on.
//!
//! A request's deadline travels to the server as an absolute `CLOCK_MONOTONIC` time in
//! nanoseconds: the same clock for every process on one machine (it does not jump with the wall
//! clock, and is shared across pid namespaces). `std::time::Instant` reads that same clock on
//! Linux but does not say its value, so an *anchor* taken once per process converts between the
//! two without a clock read per conversion: `ns(t) = anchor_ns + (t - anchor_instant)`. The
//! anchor's nanoseconds are read *before* its `Instant`, so a converted time is never later than
//! the true one (at most the gap between the two reads, tens of nanoseconds, earlier): a deadline
//! sent to a server never gives it more time than the caller waits.
//!
//! # References
//! `clock_gettime(2)` (`CLOCK_MONOTONIC`); through the vDSO, so no system call.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds of `CLOCK_MONOTONIC` now.
#[doc(alias = "clock_gettime")]
pub(crate) fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    // A monotonic time is never negative; it fits a u64 for 584 years of uptime.
    (t.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec.max(0) as u64)
}

static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();

fn anchor() -> (u64, Instant) {
    *ANCHOR.get_or_init(|| {
        let ns = monotonic_ns();
        (ns, Instant::now())
    })
}

/// `at` as nanoseconds of `CLOCK_MONOTONIC`, never later than the true value (see the module
/// doc). No clock read after the first call in a process.
pub(crate) fn instant_to_ns(at: Instant) -> u64 {
    let (anchor_ns, anchor_at) = anchor();
    if at >= anchor_at {
        let since = at.duration_since(anchor_at).as_nanos();
        anchor_ns.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    } else {
        let before = anchor_at.duration_since(at).as_nanos();
        anchor_ns.saturating_sub(u64::try_from(before).unwrap_or(u64::MAX))
    }
}

/// The `Instant` of `ns` nanoseconds of `CLOCK_MONOTONIC` (`None` if `Instant` cannot represent
/// it). No clock read after the first call in a process.
pub(crate) fn ns_to_instant(ns: u64) -> Option<Instant> {
    let (anchor_ns, anchor_at) = anchor();
    if ns >= anchor_ns {
        anchor_at.checked_add(Duration::from_nanos(ns - anchor_ns))
    } else {
        anchor_at.checked_sub(Duration::from_nanos(anchor_ns - ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_agree_with_the_clock_and_never_run_late() {
        let before = monotonic_ns();
        let now = Instant::now();
        let after = monotonic_ns();
        let converted = instant_to_ns(now);
        assert!(converted <= after, "{converted} > {after}");
        // Early by at most the anchor's two reads (generous bound for a loaded machine).
        assert!(
            before.saturating_sub(converted) < 50_000_000,
            "{before} vs {converted}"
        );
        let later = now + Duration::from_secs(3);
        assert_eq!(
            instant_to_ns(later) - converted,
            3_000_000_000,
            "a duration is kept exactly"
        );
        let back = ns_to_instant(instant_to_ns(later)).unwrap();
        assert!(back <= later && later - back < Duration::from_micros(1));
        // Any value a peer sends converts without a panic.
        let _ = (
            ns_to_instant(0),
            ns_to_instant(u64::MAX),
            instant_to_ns(back),
        );
    }
}
