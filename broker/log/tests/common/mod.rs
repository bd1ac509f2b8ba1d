//! Helpers shared by the log's integration tests: building batches and
//! entries, and a small-limits configuration that makes segments roll often.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use strata_log::{LogConfig, LogId, NewEntry, Payload};
use strata_proto::{BatchLimits, Compression, Record, encode_batch, verify_batch};

/// A verified batch of `n` records with `value_len`-byte values whose
/// content is derived from `seed`, timestamps `ts, ts+1, …`.
pub fn batch(n: usize, value_len: usize, ts: i64, seed: u64, lz4: bool) -> Payload {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            key: (i % 2 == 0).then(|| Bytes::from(format!("k{seed}-{i}"))),
            value: Bytes::from(
                (0..value_len)
                    .map(|j| (seed as usize + i * 31 + j) as u8)
                    .collect::<Vec<u8>>(),
            ),
            headers: vec![],
            timestamp_ms: ts + i as i64,
        })
        .collect();
    let mut out = Vec::new();
    let c = if lz4 {
        Compression::Lz4
    } else {
        Compression::None
    };
    encode_batch(&records, c, None, &mut out).unwrap();
    Payload::Batch(verify_batch(Bytes::from(out), &BatchLimits::UNLIMITED).unwrap())
}

pub fn entry(term: u64, index: u64, payload: Payload) -> NewEntry {
    NewEntry {
        log_id: LogId::new(term, 1, index),
        payload,
    }
}

/// Limits small enough that a few kilobytes of appends roll segments.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        segment_ms: 60_000,
        index_interval_bytes: 256,
        batch_bytes_max: 1500,
        other_entry_bytes_max: 256,
        fetch_bytes_max: 1 << 20,
        retention_bytes: None,
        retention_ms: None,
    }
}
