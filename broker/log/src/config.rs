//! Limits and policies of one partition log, with their documented defaults,
//! and the clock the log reads time from.
//!
//! Every limit the log enforces lives here; [`LogConfig::validate`] rejects
//! combinations that could not work before anything is opened.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::entry::ENTRY_HEADER_LEN;
use super::error::ConfigError;
use super::segment::SEGMENT_HEADER_LEN;

/// Largest segment the format allows: positions in the index are `u32`.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 31;

/// Largest batch any configuration may accept: 64 MiB.
pub const BATCH_BYTES_LIMIT: u32 = 64 << 20;

/// The length bound applied when reading entries back. It depends on the
/// format, not on the current configuration, so lowering a topic's batch
/// limit never makes existing, larger entries look corrupt.
pub const ENTRY_READ_LIMIT: usize = ENTRY_HEADER_LEN + BATCH_BYTES_LIMIT as usize;

/// Configuration of one partition log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// The active segment rolls once the next entry would take it past this
    /// size. Default 128 MiB (Redpanda's default): the active segment is
    /// scanned on open, so this bounds recovery time. At most 2 GiB.
    pub segment_bytes_max: u64,
    /// The active segment rolls once it is this old (and holds records), so
    /// time retention can delete it on quiet topics. Default 7 days.
    pub segment_ms: i64,
    /// Bytes of log between two sparse index points. Default 4 KiB: a 128
    /// MiB segment gets 32,768 points (384 KiB of offset index).
    pub index_interval_bytes: u32,
    /// Largest record batch accepted for append. Default 1 MiB.
    pub batch_bytes_max: u32,
    /// Largest payload of a non-batch entry (membership, command). Default 64 KiB.
    pub other_entry_bytes_max: u32,
    /// Upper bound on the bytes one read returns (a read still returns one
    /// whole batch when that batch alone is larger). Default 16 MiB.
    pub fetch_bytes_max: u32,
    /// Delete the oldest sealed segments while the partition would still
    /// hold at least this many bytes without them. `None`: no size limit
    /// (the default).
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    /// `None`: keep forever. Default 7 days.
    pub retention_ms: Option<i64>,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 128 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            index_interval_bytes: 4096,
            batch_bytes_max: 1024 * 1024,
            other_entry_bytes_max: 64 * 1024,
            fetch_bytes_max: 16 * 1024 * 1024,
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
        }
    }
}

impl LogConfig {
    /// Largest encoded entry this configuration can produce.
    pub fn entry_bytes_max(&self) -> usize {
        ENTRY_HEADER_LEN + self.batch_bytes_max.max(self.other_entry_bytes_max) as usize
    }

    /// Checks that the limits are usable together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let min_segment = (SEGMENT_HEADER_LEN + self.entry_bytes_max()) as u64;
        if self.segment_bytes_max > SEGMENT_BYTES_LIMIT {
            return Err(ConfigError(format!(
                "segment_bytes_max {} exceeds the format's limit of {SEGMENT_BYTES_LIMIT}",
                self.segment_bytes_max
            )));
        }
        if self.segment_bytes_max < min_segment {
            return Err(ConfigError(format!(
                "segment_bytes_max {} cannot hold one entry of the largest allowed size ({min_segment} bytes)",
                self.segment_bytes_max
            )));
        }
        if self.segment_ms <= 0 {
            return Err(ConfigError(format!(
                "segment_ms must be positive, got {}",
                self.segment_ms
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(ConfigError("index_interval_bytes must be positive".into()));
        }
        if self.batch_bytes_max > BATCH_BYTES_LIMIT
            || self.other_entry_bytes_max > BATCH_BYTES_LIMIT
        {
            return Err(ConfigError(format!(
                "batch_bytes_max and other_entry_bytes_max may not exceed {BATCH_BYTES_LIMIT}"
            )));
        }
        if self.batch_bytes_max < strata_proto::batch::BATCH_HEADER_LEN as u32 {
            return Err(ConfigError(format!(
                "batch_bytes_max {} is smaller than a batch header",
                self.batch_bytes_max
            )));
        }
        if self.fetch_bytes_max == 0 {
            return Err(ConfigError("fetch_bytes_max must be positive".into()));
        }
        if let Some(ms) = self.retention_ms
            && ms <= 0
        {
            return Err(ConfigError(format!(
                "retention_ms must be positive, got {ms}"
            )));
        }
        Ok(())
    }
}

/// Where the log reads wall-clock time (segment age, retention).
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        strata_proto::now_ms()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }
    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    /// Moves the clock forward.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(LogConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_segment_smaller_than_one_batch() {
        let c = LogConfig {
            segment_bytes_max: 1000,
            ..LogConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("cannot hold one entry")
        );
        let c = LogConfig {
            segment_bytes_max: 1 << 32,
            ..LogConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("exceeds the format's limit")
        );
    }
}
