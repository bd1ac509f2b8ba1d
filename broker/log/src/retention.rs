//! Retention decisions: which sealed segments to delete, as a pure function
//! of the segments' sizes and timestamps, the policy and the time.
//!
//! Only whole sealed segments at the front of the log are ever deleted; the
//! active segment never is. The partition log carries the decision out as a
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
