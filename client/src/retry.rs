//! Retry backoff, the one place the client decides how long to wait before
//! trying again: exponential growth from a base delay up to a ceiling, with
//! full jitter (each delay drawn uniformly between zero and the current
//! exponential bound).
//!
//! Jitter is the point: producers, consumers and admin calls that fail
//! together (a leader dies, a broker restarts) would otherwise come back
//! in lockstep and hit the new leader at the same instants. This module
//! only computes delays; the callers own their loops, attempt limits and
//! deadlines.

use std::time::Duration;

/// Exponential backoff with full jitter: the delay before retry `n` (0 for
/// the first) is uniform in `[0, min(max, base · 2^n)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Bound of the first delay.
    pub base: Duration,
    /// Largest bound any delay can reach.
    pub max: Duration,
}

/// Doublings past which the bound no longer grows (2^16 · base exceeds any
/// sensible `max`; stopping there keeps the multiplication from overflowing).
const DOUBLINGS_MAX: u32 = 16;

impl Backoff {
    /// A backoff from `base`, doubling up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The bound of the delay before retry `n` (0 for the first).
    pub fn bound(&self, n: u32) -> Duration {
        self.base
            .saturating_mul(1 << n.min(DOUBLINGS_MAX))
            .min(self.max)
    }

    /// The delay before retry `n`: uniform in `[0, bound(n)]`.
    pub fn delay(&self, n: u32) -> Duration {
        let bound = u64::try_from(self.bound(n).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=bound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_exponential_bound_and_are_jittered() {
        let b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        assert_eq!(b.bound(0), Duration::from_millis(50));
        assert_eq!(b.bound(1), Duration::from_millis(100));
        assert_eq!(b.bound(5), Duration::from_millis(1600));
        assert_eq!(b.bound(6), Duration::from_secs(2));
        assert_eq!(b.bound(u32::MAX), Duration::from_secs(2));
        for attempt in [0, 1, 5, 10, 1000] {
            let delays: Vec<Duration> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(
                delays.iter().all(|d| *d <= b.bound(attempt)),
                "attempt {attempt}: {delays:?}"
            );
            // 200 draws over at least 50 001 values: all equal means no jitter.
            assert!(
                delays.iter().any(|d| *d != delays[0]),
                "attempt {attempt}: no jitter"
            );
        }
    }

    #[test]
    fn a_zero_base_never_waits() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::ZERO);
    }
}
