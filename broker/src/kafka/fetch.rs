//! Fetch (v4–v12), ListOffsets (v1–v6) and OffsetForLeaderEpoch (v2–v4).
//!
//! Fetches are served by partition leaders, from the committed prefix
//! (below the high watermark), translated into RecordBatch v2. A fetch
//! that finds fewer than `min_bytes` waits (up to `max_wait_ms`, capped by
//! `fetch_wait_ms_max`) for any of its partitions' high watermarks to
//! move. Fetch sessions are declined (session id 0, which KIP-227 allows):
//! every fetch is a full fetch.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::Kafka;
use super::api::Work;
use super::errors::{self, code};
use super::records;
use super::wire::{Reader, Writer};
use crate::topic::Partition;

/// Kafka's FETCH_SESSION_ID_NOT_FOUND.
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

struct FetchPartition {
    index: i32,
    current_leader_epoch: i32,
    offset: i64,
    max_bytes: i32,
}

/// One partition's answer.
struct Fetched {
    index: i32,
    error: i16,
    high_watermark: i64,
    log_start_offset: i64,
    records: BytesMut,
}

/// Checks the partition is led here in the epoch the client believes.
fn led(k: &Kafka, topic: &str, index: i32, epoch: i32) -> Result<Arc<Partition>, i16> {
    let p = u32::try_from(index).map_err(|_| code::UNKNOWN_TOPIC_OR_PARTITION)?;
    let partition = k.broker.partition(topic, p).map_err(|e| errors::of(&e))?;
    let term = partition.leader_term().map_err(|e| errors::of(&e))?;
    if epoch >= 0 && k.broker.cluster().is_some() {
        let term = term as i64;
        if i64::from(epoch) < term {
            return Err(code::FENCED_LEADER_EPOCH);
        }
        if i64::from(epoch) > term {
            return Err(code::UNKNOWN_LEADER_EPOCH);
        }
    }
    Ok(partition)
}

/// Reads one partition from `offset`, translated, up to `max_bytes`.
fn read_one(k: &Kafka, topic: &str, fp: &FetchPartition, max_bytes: usize) -> Fetched {
    let mut out = Fetched {
        index: fp.index,
        error: code::NONE,
        high_watermark: -1,
        log_start_offset: -1,
        records: BytesMut::new(),
    };
    let partition = match led(k, topic, fp.index, fp.current_leader_epoch) {
        Ok(p) => p,
        Err(c) => {
            out.error = c;
            return out;
        }
    };
    let hw = partition.high_watermark();
    let lso = partition.log_start_offset();
    out.high_watermark = hw as i64;
    out.log_start_offset = lso as i64;
    if fp.offset < lso as i64 || fp.offset > hw as i64 {
        out.error = code::OFFSET_OUT_OF_RANGE;
        return out;
    }
    let offset = fp.offset as u64;
    if offset == hw || max_bytes == 0 {
        return out;
    }
    let batches = match tokio::task::block_in_place(|| partition.read(offset, max_bytes)) {
        Ok(b) => b,
        Err(e) => {
            out.error = errors::of(&e);
            return out;
        }
    };
    let mut records = 0u64;
    for b in &batches {
        // The budget counts translated (uncompressed) bytes: a compressed
        // batch can decompress to many times its stored size. At least one
        // batch goes out, as Kafka does.
        if !out.records.is_empty() && out.records.len() >= max_bytes {
            break;
        }
        let epoch = b.log_id.term as i32;
        if let Err(e) = records::encode_fetched(&b.bytes, b.base_offset, epoch, &mut out.records) {
            tracing::error!(topic, partition = fp.index, offset = b.base_offset, error = %e,
                "stored batch does not decode");
            out.error = code::CORRUPT_MESSAGE;
            out.records.clear();
            return out;
        }
        records += u64::from(b.record_count);
    }
    let m = k.broker.metrics();
    m.fetched_records
        .with_label_values(&[topic])
        .inc_by(records);
    m.fetched_bytes
        .with_label_values(&[topic])
        .inc_by(out.records.len() as u64);
    out
}

/// Fetch: see the module doc.
pub fn fetch(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        let _replica = r.i32()?;
        let max_wait_ms = r.i32()?;
        let min_bytes = r.i32()?;
        let max_bytes = r.i32()?;
        let _isolation = r.i8()?;
        let (session_id, _session_epoch) = if v >= 7 {
            (r.i32()?, r.i32()?)
        } else {
            (0, -1)
        };
        let topics = r.array(|r| {
            let topic = r.string()?;
            let parts = r.array(|r| {
                let index = r.i32()?;
                let current_leader_epoch = if v >= 9 { r.i32()? } else { -1 };
                let offset = r.i64()?;
                if v >= 12 {
                    let _last_fetched_epoch = r.i32()?;
                }
                if v >= 5 {
                    let _log_start = r.i64()?;
                }
                let max_bytes = r.i32()?;
                r.tags()?;
                Ok(FetchPartition {
                    index,
                    current_leader_epoch,
                    offset,
                    max_bytes,
                })
            })?;
            r.tags()?;
            Ok((topic, parts))
        })?;
        if v >= 7 {
            let _forgotten = r.array(|r| {
                let _t = r.string()?;
                let _p = r.array(|r| r.i32())?;
                r.tags()?;
                Ok(())
            })?;
        }
        if v >= 11 {
            let _rack = r.string()?;
        }
        r.tags()?;

        let flexible = r.flexible;
        let write = |error: i16, results: &[(String, Vec<Fetched>)]| {
            let mut w = Writer::new(flexible);
            w.i32(0);
            if v >= 7 {
                w.i16(error);
                w.i32(0);
            }
            w.array(results, |w, (topic, parts)| {
                w.string(topic);
                w.array(parts, |w, f| {
                    w.i32(f.index);
                    w.i16(f.error);
                    w.i64(f.high_watermark);
                    w.i64(f.high_watermark); // last stable offset: no transactions
                    if v >= 5 {
                        w.i64(f.log_start_offset);
                    }
                    w.null_array(); // aborted transactions
                    if v >= 11 {
                        w.i32(-1);
                    }
                    w.nullable_bytes(Some(&f.records));
                    w.tags();
                });
                w.tags();
            });
            w.tags();
            w
        };
        if session_id != 0 {
            return Ok(Some(write(FETCH_SESSION_ID_NOT_FOUND, &[])));
        }

        let cap = k.broker.config().fetch_wait_ms_max;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((max_wait_ms.max(0) as u64).min(cap));
        let total_max = if max_bytes <= 0 {
            usize::MAX
        } else {
            max_bytes as usize
        };
        loop {
            // Watch before reading, so a write between the read and the
            // wait is not missed.
            let mut watches = Vec::new();
            for (topic, parts) in &topics {
                for fp in parts {
                    if let Ok(p) = k.broker.partition(topic, fp.index.max(0) as u32) {
                        watches.push(p.watch_high_watermark());
                    }
                }
            }
            let mut total = 0usize;
            let mut errored = false;
            let mut results = Vec::with_capacity(topics.len());
            for (topic, parts) in &topics {
                let mut out = Vec::with_capacity(parts.len());
                for fp in parts {
                    let budget =
                        (fp.max_bytes.max(0) as usize).min(total_max.saturating_sub(total));
                    let f = read_one(&k, topic, fp, budget);
                    total += f.records.len();
                    errored |= f.error != code::NONE;
                    out.push(f);
                }
                results.push((topic.clone(), out));
            }
            let now = tokio::time::Instant::now();
            if total >= min_bytes.max(1) as usize
                || errored
                || now >= deadline
                || watches.is_empty()
            {
                return Ok(Some(write(code::NONE, &results)));
            }
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changed => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    })
}

/// ListOffsets: earliest (−2), latest (−1) or the first offset at or
/// after a timestamp.
pub fn list_offsets(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        let _replica = r.i32()?;
        if v >= 2 {
            let _isolation = r.i8()?;
        }
        let topics = r.array(|r| {
            let name = r.string()?;
            let parts = r.array(|r| {
                let index = r.i32()?;
                let epoch = if v >= 4 { r.i32()? } else { -1 };
                let ts = r.i64()?;
                r.tags()?;
                Ok((index, epoch, ts))
            })?;
            r.tags()?;
            Ok((name, parts))
        })?;
        r.tags()?;
        let mut w = Writer::new(r.flexible);
        if v >= 2 {
            w.i32(0);
        }
        w.array(&topics, |w, (name, parts)| {
            w.string(name);
            w.array(parts, |w, (index, epoch, ts)| {
                let found = led(&k, name, *index, *epoch).and_then(|p| {
                    let o = match *ts {
                        -2 => p.log_start_offset(),
                        -1 => p.high_watermark(),
                        t if t >= 0 => p.offset_for_timestamp(t).map_err(|e| errors::of(&e))?,
                        _ => return Err(code::INVALID_REQUEST),
                    };
                    Ok((o, p.leader_term().map_or(-1, |t| t as i32)))
                });
                w.i32(*index);
                match found {
                    Ok((o, e)) => {
                        w.i16(code::NONE);
                        w.i64(-1);
                        w.i64(o as i64);
                        if v >= 4 {
                            w.i32(e);
                        }
                    }
                    Err(c) => {
                        w.i16(c);
                        w.i64(-1);
                        w.i64(-1);
                        if v >= 4 {
                            w.i32(-1);
                        }
                    }
                }
                w.tags();
            });
            w.tags();
        });
        w.tags();
        Ok(Some(w))
    })
}

/// OffsetForLeaderEpoch: the end offset of an epoch. Clients read only
/// the committed prefix, which Raft never truncates, so for any epoch up
/// to the current term the answer is the high watermark (a consumer's
/// position is never past a divergence).
pub fn offset_for_leader_epoch(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        if v >= 3 {
            let _replica = r.i32()?;
        }
        let topics = r.array(|r| {
            let name = r.string()?;
            let parts = r.array(|r| {
                let index = r.i32()?;
                let current = r.i32()?;
                let epoch = r.i32()?;
                r.tags()?;
                Ok((index, current, epoch))
            })?;
            r.tags()?;
            Ok((name, parts))
        })?;
        r.tags()?;
        let mut w = Writer::new(r.flexible);
        w.i32(0);
        w.array(&topics, |w, (name, parts)| {
            w.string(name);
            w.array(parts, |w, (index, current, epoch)| {
                let found = led(&k, name, *index, *current).and_then(|p| {
                    let term = p.leader_term().map_or(0, |t| t as i32);
                    if *epoch > term && k.broker.cluster().is_some() {
                        return Err(code::UNKNOWN_LEADER_EPOCH);
                    }
                    Ok(((*epoch).min(term), p.high_watermark() as i64))
                });
                match found {
                    Ok((e, end)) => {
                        w.i16(code::NONE);
                        w.i32(*index);
                        w.i32(e);
                        w.i64(end);
                    }
                    Err(c) => {
                        w.i16(c);
                        w.i32(*index);
                        w.i32(-1);
                        w.i64(-1);
                    }
                }
                w.tags();
            });
            w.tags();
        });
        w.tags();
        Ok(Some(w))
    })
}
