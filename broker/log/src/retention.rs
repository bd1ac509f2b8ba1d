//! Retention decisions: which sealed segments to delete, as a pure function
//! of the segments' sizes and timestamps, the policy and the time.
//!
//! Only whole sealed segments at the front of the log are ever deleted; the
//! active segment never is. A [`RetentionHold`] (the lowest offset a
//! holding consumer group has not consumed) keeps segments retention would
//! delete, within its own size and age limits. The partition log carries the decision out as a
//! prefix purge, so the log start offset only moves forward.

/// What retention needs to know about one segment, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionView {
    /// File size in bytes.
    pub size_bytes: u64,
    /// Newest record timestamp in the segment (`None`: no records).
    pub max_timestamp_ms: Option<i64>,
    /// Whether the segment is sealed (only sealed segments may go).
    pub sealed: bool,
}

/// A consumer's pin on a partition: records from `offset` on are kept
/// although retention would delete them, unless the segments kept for it
/// (those retention would delete) exceed `max_bytes` or hold a newest
/// record older than `max_ms`; then the oldest of them go anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionHold {
    /// The first offset not yet consumed.
    pub offset: u64,
    /// Most bytes kept for the hold; `None`: no limit.
    pub max_bytes: Option<u64>,
    /// Oldest newest-record age kept for the hold; `None`: no limit.
    pub max_ms: Option<i64>,
}

/// Of the first `n` segments (those retention deletes), how many still go
/// under `hold`, and the bytes the hold keeps. `next_offsets[i]` is the
/// offset after segment `i`.
pub fn apply_hold(
    segments: &[RetentionView],
    next_offsets: &[u64],
    n: usize,
    hold: Option<RetentionHold>,
    now_ms: i64,
) -> (usize, u64) {
    let Some(h) = hold else { return (n, 0) };
    // Segments wholly below the hold offset are consumed: they go.
    let mut k = next_offsets[..n]
        .iter()
        .take_while(|next| **next <= h.offset)
        .count();
    // Held segments past the age limit go too (oldest first).
    while k < n
        && h.max_ms.is_some_and(|m| {
            segments[k]
                .max_timestamp_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > m)
        })
    {
        k += 1;
    }
    // And the oldest held ones while the hold keeps more than its limit.
    let mut held: u64 = segments[k..n].iter().map(|s| s.size_bytes).sum();
    while k < n && h.max_bytes.is_some_and(|m| held > m) {
        held -= segments[k].size_bytes;
        k += 1;
    }
    (k, held)
}

/// How many segments, from the front, retention deletes.
///
/// A segment goes when it is sealed and either its newest record is older
/// than `retention_ms`, or the partition without it would still hold at
/// least `retention_bytes` (Kafka's rule: size retention never takes the
/// partition below the limit). Deletion stops at the first segment that
/// stays, so no hole opens in the log.
pub fn segments_to_delete(
    segments: &[RetentionView],
    retention_bytes: Option<u64>,
    retention_ms: Option<i64>,
    now_ms: i64,
) -> usize {
    let mut remaining: u64 = segments.iter().map(|s| s.size_bytes).sum();
    let mut n = 0;
    for s in segments {
        if !s.sealed {
            break;
        }
        let too_old = retention_ms.is_some_and(|r| {
            s.max_timestamp_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > r)
        });
        let too_big = retention_bytes.is_some_and(|r| remaining - s.size_bytes >= r);
        if !(too_old || too_big) {
            break;
        }
        remaining -= s.size_bytes;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_keeps_unconsumed_segments_within_its_limits() {
        let s = [seg(100, 10, true), seg(100, 20, true), seg(100, 30, true)];
        let next = [10, 20, 30];
        let hold = |offset, max_bytes, max_ms| {
            Some(RetentionHold {
                offset,
                max_bytes,
                max_ms,
            })
        };
        assert_eq!(apply_hold(&s, &next, 3, None, 100), (3, 0));
        // Consumed up to 15: the first segment goes, the rest are kept.
        assert_eq!(
            apply_hold(&s, &next, 3, hold(15, None, None), 100),
            (1, 200)
        );
        assert_eq!(
            apply_hold(&s, &next, 3, hold(20, None, None), 100),
            (2, 100)
        );
        assert_eq!(apply_hold(&s, &next, 3, hold(0, None, None), 100), (0, 300));
        // Only what retention deletes is affected.
        assert_eq!(apply_hold(&s, &next, 1, hold(0, None, None), 100), (0, 100));
        // Limits: at most 150 bytes held; nothing older than 75 ms.
        assert_eq!(
            apply_hold(&s, &next, 3, hold(0, Some(150), None), 100),
            (2, 100)
        );
        assert_eq!(
            apply_hold(&s, &next, 3, hold(0, None, Some(75)), 100),
            (2, 100)
        );
        assert_eq!(
            apply_hold(&s, &next, 3, hold(0, Some(0), None), 100),
            (3, 0)
        );
    }

    fn seg(size: u64, ts: i64, sealed: bool) -> RetentionView {
        RetentionView {
            size_bytes: size,
            max_timestamp_ms: Some(ts),
            sealed,
        }
    }

    #[test]
    fn size_retention_keeps_at_least_the_limit() {
        let s = [
            seg(100, 0, true),
            seg(100, 0, true),
            seg(100, 0, true),
            seg(50, 0, false),
        ];
        assert_eq!(segments_to_delete(&s, Some(150), None, 0), 2);
        assert_eq!(segments_to_delete(&s, Some(250), None, 0), 1);
        assert_eq!(segments_to_delete(&s, Some(351), None, 0), 0);
        assert_eq!(
            segments_to_delete(&s, Some(0), None, 0),
            3,
            "never the active segment"
        );
    }

    #[test]
    fn time_retention_stops_at_first_young_segment() {
        let s = [seg(1, 10, true), seg(1, 500, true), seg(1, 20, true)];
        assert_eq!(segments_to_delete(&s, None, Some(100), 200), 1);
        assert_eq!(segments_to_delete(&s, None, Some(100), 700), 3);
        assert_eq!(segments_to_delete(&s, None, None, i64::MAX), 0);
    }
}
