//! Wall-clock time as the wire carries it: milliseconds since the Unix
//! epoch, the unit of every record timestamp, retention setting and
//! timestamp lookup.
//!
//! One definition, shared by every side that stamps records (producers,
//! the CLI, the ML trainer), so they cannot disagree on the unit or on what
//! a clock set before 1970 reads as. Monotonic time (timeouts, latencies)
//! is `std::time::Instant` and does not belong here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by the wall clock. A clock set before
/// the epoch reads as 0 rather than failing: a timestamp is information
/// for the reader, never a reason to refuse a record.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_counts_milliseconds_since_the_epoch() {
        let now = now_ms();
        // Between 2020-01-01 and 3000-01-01 in milliseconds: outside it, the
        // unit is wrong (seconds, microseconds) or the clock read failed.
        assert!(
            (1_577_836_800_000..32_503_680_000_000).contains(&now),
            "{now}"
        );
    }
}
