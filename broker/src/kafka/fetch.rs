//! Fetch (v4–v12), ListOffsets (v1–v6) and OffsetForLeaderEpoch (v2–v4).
//!
//! Fetches are served by partition leaders, from the committed prefix
//! (below the high watermark), translated into RecordBatch v2. A fetch
//! that finds fewer than `min_bytes` waits (up to `max_wait_ms`, capped by
//! `fetch_wait_ms_max`) for any of its partitions' high watermarks to
//! move. Fetch sessions (KIP-227) are kept per node: a session remembers
//! its partitions and fetch offsets, so an incremental fetch names only
//! what changed and is answered with only the partitions that have
//! records, a new high watermark or log start, or an error. At most
//! `kafka_fetch_sessions_max` sessions live at once (the least recently
//! used goes first) and one unused for two minutes is dropped.

use std::collections::HashMap;
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
/// Kafka's INVALID_FETCH_SESSION_EPOCH.
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
/// A session unused this long is dropped.
const SESSION_IDLE: Duration = Duration::from_secs(120);

/// One partition of a fetch session: what the client last asked for and
/// what it was last told.
#[derive(Debug, Clone)]
struct SessionPartition {
    fetch: FetchPartition,
    sent_hw: i64,
    sent_lso: i64,
}

/// A fetch session.
#[derive(Debug)]
pub struct Session {
    /// The epoch the next incremental request must carry.
    next_epoch: i32,
    /// Partitions, in the order they were added.
    partitions: Vec<(String, SessionPartition)>,
    last_used: std::time::Instant,
}

/// The node's fetch sessions by id.
pub type Sessions = HashMap<i32, Session>;

#[derive(Debug, Clone)]
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
        let (session_id, session_epoch) = if v >= 7 {
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
        let forgotten = if v >= 7 {
            r.array(|r| {
                let t = r.string()?;
                let p = r.array(|r| r.i32())?;
                r.tags()?;
                Ok((t, p))
            })?
        } else {
            Vec::new()
        };
        if v >= 11 {
            let _rack = r.string()?;
        }
        r.tags()?;

        let flexible = r.flexible;
        let write = |error: i16, session: i32, results: &[(String, Vec<Fetched>)]| {
            let mut w = Writer::new(flexible);
            w.i32(0);
            if v >= 7 {
                w.i16(error);
                w.i32(session);
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
        // What to read, and the session this fetch belongs to (0: none).
        let (session, incremental, topics) =
            match open_session(&k, session_id, session_epoch, topics, &forgotten) {
                Ok(x) => x,
                Err(code) => return Ok(Some(write(code, 0, &[]))),
            };

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
                let results = close_round(&k, session, incremental, results);
                return Ok(Some(write(code::NONE, session, &results)));
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

type Asked = Vec<(String, Vec<FetchPartition>)>;

/// Applies a request to the node's sessions (KIP-227): returns the session
/// id to answer with (0: none), whether the fetch is incremental, and the
/// partitions to read.
fn open_session(
    k: &Kafka,
    id: i32,
    epoch: i32,
    topics: Asked,
    forgotten: &[(String, Vec<i32>)],
) -> Result<(i32, bool, Asked), i16> {
    let mut all = k.fetch_sessions.lock();
    all.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
    let fresh = |all: &mut Sessions, topics: &Asked| -> i32 {
        let max = k.broker.config().kafka_fetch_sessions_max;
        if max == 0 {
            return 0;
        }
        while all.len() >= max {
            let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            all.remove(&oldest);
        }
        let mut new_id = 0;
        while new_id <= 0 || all.contains_key(&new_id) {
            new_id = fastrand::i32(1..);
        }
        let partitions = topics
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter().map(|p| {
                    (
                        t.clone(),
                        SessionPartition {
                            fetch: p.clone(),
                            sent_hw: -1,
                            sent_lso: -1,
                        },
                    )
                })
            })
            .collect();
        all.insert(
            new_id,
            Session {
                next_epoch: 1,
                partitions,
                last_used: std::time::Instant::now(),
            },
        );
        new_id
    };
    match (id, epoch) {
        // A full fetch without a session.
        (0, -1) => Ok((0, false, topics)),
        // A full fetch that opens a session.
        (0, 0) => Ok((fresh(&mut all, &topics), false, topics)),
        // Close the session; this one is a full fetch without one.
        (id, -1) => {
            all.remove(&id);
            Ok((0, false, topics))
        }
        // Close the session and open a new one with this full fetch.
        (id, 0) => {
            all.remove(&id);
            Ok((fresh(&mut all, &topics), false, topics))
        }
        (id, epoch) => {
            let s = all.get_mut(&id).ok_or(FETCH_SESSION_ID_NOT_FOUND)?;
            if epoch != s.next_epoch {
                return Err(INVALID_FETCH_SESSION_EPOCH);
            }
            s.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
            s.last_used = std::time::Instant::now();
            s.partitions.retain(|(t, p)| {
                !forgotten
                    .iter()
                    .any(|(ft, fp)| ft == t && fp.contains(&p.fetch.index))
            });
            for (t, ps) in topics {
                for p in ps {
                    match s
                        .partitions
                        .iter_mut()
                        .find(|(st, sp)| *st == t && sp.fetch.index == p.index)
                    {
                        Some((_, sp)) => sp.fetch = p,
                        None => s.partitions.push((
                            t.clone(),
                            SessionPartition {
                                fetch: p,
                                sent_hw: -1,
                                sent_lso: -1,
                            },
                        )),
                    }
                }
            }
            let mut asked: Asked = Vec::new();
            for (t, sp) in &s.partitions {
                match asked.iter_mut().find(|(at, _)| at == t) {
                    Some((_, ps)) => ps.push(sp.fetch.clone()),
                    None => asked.push((t.clone(), vec![sp.fetch.clone()])),
                }
            }
            Ok((id, true, asked))
        }
    }
}

/// Records what a session's client is told, and for an incremental fetch
/// keeps only the partitions with something new.
fn close_round(
    k: &Kafka,
    session: i32,
    incremental: bool,
    results: Vec<(String, Vec<Fetched>)>,
) -> Vec<(String, Vec<Fetched>)> {
    if session == 0 {
        return results;
    }
    let mut all = k.fetch_sessions.lock();
    let Some(s) = all.get_mut(&session) else {
        return results;
    };
    let mut out = Vec::with_capacity(results.len());
    for (topic, parts) in results {
        let mut kept = Vec::with_capacity(parts.len());
        for f in parts {
            let Some((_, sp)) = s
                .partitions
                .iter_mut()
                .find(|(t, sp)| *t == topic && sp.fetch.index == f.index)
            else {
                continue;
            };
            let news = !f.records.is_empty()
                || f.error != code::NONE
                || f.high_watermark != sp.sent_hw
                || f.log_start_offset != sp.sent_lso;
            sp.sent_hw = f.high_watermark;
            sp.sent_lso = f.log_start_offset;
            if news || !incremental {
                kept.push(f);
            }
        }
        if !kept.is_empty() {
            out.push((topic, kept));
        }
    }
    out
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
