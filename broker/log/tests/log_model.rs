//! Property test of the partition log against a simple in-memory model.
//!
//! Random sequences of append (batches, blank and command entries), sync,
//! truncate, purge (also beyond the tail, as a snapshot install does),
//! clock moves, retention and reopen, with tiny segments so that every
//! operation keeps crossing segment boundaries. After every step the log
//! must agree with the model on offsets, Raft ids, bytes, the log start
//! offset, timestamp lookups and out-of-range errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use strata_log::fault::FaultStorage;
use strata_log::{
    EntryKind, FileStorage, LogConfig, LogError, LogId, ManualClock, NewEntry, PartitionLog,
    Payload, Storage,
};
use strata_proto::{BatchLimits, decode_records};

#[derive(Debug, Clone)]
enum Spec {
    Batch {
        n: u8,
        len: u16,
        lz4: bool,
        ts_back: u16,
    },
    Blank,
    Command(u8),
}

#[derive(Debug, Clone)]
enum Op {
    Append { specs: Vec<Spec>, new_term: bool },
    Sync,
    Truncate(u16),
    Purge { pick: u16, beyond: u8, gap: u8 },
    Advance(u32),
    Retention,
    Reopen,
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        6 => (1u8..6, 0u16..250, any::<bool>(), 0u16..20_000).prop_map(|(n, len, lz4, ts_back)| Spec::Batch { n, len, lz4, ts_back }),
        1 => Just(Spec::Blank),
        1 => (0u8..200).prop_map(Spec::Command),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (proptest::collection::vec(spec(), 1..6), proptest::bool::weighted(0.1))
            .prop_map(|(specs, new_term)| Op::Append { specs, new_term }),
        3 => Just(Op::Sync),
        2 => any::<u16>().prop_map(Op::Truncate),
        2 => (any::<u16>(), 0u8..3, 0u8..5).prop_map(|(pick, beyond, gap)| Op::Purge { pick, beyond, gap }),
        2 => (0u32..40_000).prop_map(Op::Advance),
        2 => Just(Op::Retention),
        2 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct MEntry {
    log_id: LogId,
    base_offset: u64,
    kind: EntryKind,
    payload: Bytes,
    timestamps: Vec<i64>,
}

impl MEntry {
    fn next_offset(&self) -> u64 {
        self.base_offset + self.timestamps.len() as u64
    }
}

#[derive(Debug, Default)]
struct Model {
    entries: Vec<MEntry>,
    last_purged: Option<LogId>,
    start: u64,
    term: u64,
}

impl Model {
    fn last(&self) -> Option<LogId> {
        self.entries.last().map(|e| e.log_id).or(self.last_purged)
    }
    fn next_offset(&self) -> u64 {
        self.entries.last().map_or(self.start, |e| e.next_offset())
    }
}

fn config() -> LogConfig {
    LogConfig {
        retention_bytes: Some(9000),
        retention_ms: Some(30_000),
        segment_ms: 20_000,
        ..common::small_config()
    }
}

struct Harness {
    storage: Arc<dyn Storage>,
    dir: std::path::PathBuf,
    clock: ManualClock,
    log: Option<PartitionLog>,
    model: Model,
    seed: u64,
}

impl Harness {
    fn log(&mut self) -> &mut PartitionLog {
        self.log.as_mut().unwrap()
    }

    fn reopen(&mut self) {
        self.log = None;
        self.log = Some(
            PartitionLog::open(
                self.storage.clone(),
                &self.dir,
                config(),
                Arc::new(self.clock.clone()),
            )
            .unwrap(),
        );
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { specs, new_term } => {
                if *new_term || self.model.term == 0 {
                    self.model.term += 1;
                }
                let index = self.model.last().map_or(0, |l| l.index + 1);
                let now = {
                    use strata_log::Clock;
                    self.clock.now_ms()
                };
                let mut news = Vec::new();
                for (index, s) in (index..).zip(specs) {
                    self.seed += 1;
                    let payload = match s {
                        Spec::Batch {
                            n,
                            len,
                            lz4,
                            ts_back,
                        } => common::batch(
                            *n as usize,
                            *len as usize,
                            now - i64::from(*ts_back),
                            self.seed,
                            *lz4,
                        ),
                        Spec::Blank => Payload::Blank,
                        Spec::Command(n) => Payload::Command(Bytes::from(vec![*n; *n as usize])),
                    };
                    news.push(NewEntry {
                        log_id: LogId::new(self.model.term, 1, index),
                        payload,
                    });
                }
                let appended = self.log().append(&news).unwrap();
                for (e, a) in news.iter().zip(&appended) {
                    let base_offset = self.model.next_offset();
                    assert_eq!(
                        a.base_offset, base_offset,
                        "offset assigned to {}",
                        e.log_id
                    );
                    let timestamps = match &e.payload {
                        Payload::Batch(b) => b
                            .records(&BatchLimits::UNLIMITED)
                            .unwrap()
                            .iter()
                            .map(|r| r.timestamp_ms)
                            .collect(),
                        _ => vec![],
                    };
                    self.model.entries.push(MEntry {
                        log_id: e.log_id,
                        base_offset,
                        kind: e.payload.kind(),
                        payload: Bytes::copy_from_slice(e.payload.bytes()),
                        timestamps,
                    });
                }
            }
            Op::Sync => {
                let d = self.log().sync().unwrap();
                assert_eq!(d, self.model.last());
            }
            Op::Truncate(pick) => {
                let lo = self.model.last_purged.map(|p| p.index);
                let Some(last) = self.model.last() else {
                    return;
                };
                // Candidates: None (if nothing purged), or any index in [purged, last].
                let first = lo.unwrap_or(0);
                let span = last.index - first + 2;
                let k = u64::from(*pick) % span;
                let after = if lo.is_none() && k == span - 1 {
                    None
                } else {
                    Some(first + k.min(span - 2))
                };
                self.log().truncate_after(after).unwrap();
                self.model
                    .entries
                    .retain(|e| after.is_some_and(|a| e.log_id.index <= a));
            }
            Op::Purge { pick, beyond, gap } => {
                let Some(last) = self.model.last() else {
                    return;
                };
                let floor = self.model.last_purged.map_or(0, |p| p.index + 1);
                let top = last.index + u64::from(*beyond);
                if top < floor {
                    return;
                }
                let target = floor + u64::from(*pick) % (top - floor + 1);
                let hint = self.model.next_offset() + u64::from(*gap);
                let upto = match self.model.entries.iter().find(|e| e.log_id.index == target) {
                    Some(e) => e.log_id,
                    None => LogId::new(self.model.term.max(1), 1, target),
                };
                self.log().purge(upto, Some(hint)).unwrap();
                let new_start = if target > last.index {
                    hint
                } else if target == last.index {
                    self.model.next_offset()
                } else {
                    self.model
                        .entries
                        .iter()
                        .find(|e| e.log_id.index == target + 1)
                        .unwrap()
                        .base_offset
                };
                self.model.entries.retain(|e| e.log_id.index > target);
                self.model.last_purged = Some(upto);
                self.model.start = new_start;
            }
            Op::Advance(ms) => self.clock.advance(i64::from(*ms)),
            Op::Retention => {
                // Rolling an aged active segment is part of retention; do it
                // first so `before` shows what retention chose from.
                self.log().roll_if_due().unwrap();
                let before = self.log().segments();
                let old_start = self.model.start;
                let report = self.log().enforce_retention().unwrap();
                let after = self.log().segments();
                let deleted = report.segments_deleted;
                assert!(report.log_start_offset >= old_start, "log start moved back");
                assert_eq!(report.log_start_offset, self.log().log_start_offset());
                // Only whole sealed segments from the front were deleted.
                let sealed_before: Vec<_> =
                    before.iter().map(|s| (s.base_offset, s.sealed)).collect();
                assert!(deleted <= after.len() + deleted);
                if deleted > 0 {
                    let last_deleted = before[deleted - 1].clone();
                    assert!(
                        before[..deleted].iter().all(|s| s.sealed),
                        "{sealed_before:?}"
                    );
                    let upto = last_deleted.last_log_id.unwrap();
                    let cur = self.model.last_purged.map_or(0, |p| p.index + 1);
                    if upto.index + 1 > cur {
                        let new_start = self
                            .model
                            .entries
                            .iter()
                            .find(|e| e.log_id.index > upto.index)
                            .map_or(self.model.next_offset(), |e| e.base_offset);
                        self.model.entries.retain(|e| e.log_id.index > upto.index);
                        self.model.last_purged = Some(upto);
                        self.model.start = new_start;
                    }
                }
                // The rule: what remains could not lose its oldest segment.
                let remaining = self.log().segments();
                if let Some(first) = remaining.first().filter(|s| s.sealed) {
                    use strata_log::Clock;
                    let total: u64 = remaining.iter().map(|s| s.size_bytes).sum();
                    let cfg = config();
                    let too_big = total - first.size_bytes >= cfg.retention_bytes.unwrap();
                    let too_old = first
                        .max_timestamp_ms
                        .is_some_and(|t| self.clock.now_ms() - t > cfg.retention_ms.unwrap());
                    assert!(
                        !(too_big || too_old),
                        "retention left a deletable segment: {first:?}"
                    );
                }
            }
            Op::Reopen => self.reopen(),
        }
    }

    fn check(&mut self) {
        let m = &self.model;
        let log = self.log.as_ref().unwrap();
        assert_eq!(log.last_log_id(), m.last(), "last log id");
        assert_eq!(log.next_offset(), m.next_offset(), "next offset");
        assert_eq!(log.log_start_offset(), m.start, "log start offset");
        assert_eq!(log.last_purged(), m.last_purged, "last purged");
        let got = log.entries(0..u64::MAX, usize::MAX).unwrap();
        assert_eq!(got.len(), m.entries.len(), "entry count");
        for (g, e) in got.iter().zip(&m.entries) {
            assert_eq!(
                (g.log_id, g.base_offset, g.kind),
                (e.log_id, e.base_offset, e.kind)
            );
            assert_eq!(g.payload, e.payload, "payload of {}", e.log_id);
        }
        // Sub-ranges by Raft index.
        if let Some(first) = m.entries.first() {
            let i = first.log_id.index + (m.entries.len() as u64) / 2;
            let sub = log.entries(i..i + 3, usize::MAX).unwrap();
            let want: Vec<_> = m
                .entries
                .iter()
                .filter(|e| (i..i + 3).contains(&e.log_id.index))
                .map(|e| e.log_id)
                .collect();
            assert_eq!(sub.iter().map(|e| e.log_id).collect::<Vec<_>>(), want);
        }
        // Reads by offset: every batch from its first and its last offset.
        let batches: Vec<&MEntry> = m
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Batch)
            .collect();
        for b in &batches {
            for o in [b.base_offset, b.next_offset() - 1] {
                let r = log.read(o, 1, None).unwrap();
                assert_eq!(r.len(), 1);
                assert_eq!(r[0].base_offset, b.base_offset);
                assert_eq!(r[0].bytes, b.payload);
                assert_eq!(r[0].log_id, b.log_id);
            }
        }
        // A sequential replay returns every batch once, in order.
        let mut offset = m.start;
        let mut seen = Vec::new();
        while offset < m.next_offset() {
            let r = log.read(offset, 2000, None).unwrap();
            assert!(!r.is_empty(), "replay stalled at {offset}");
            for b in &r {
                seen.push(b.base_offset);
                offset = b.last_offset() + 1;
            }
        }
        assert_eq!(
            seen,
            batches.iter().map(|b| b.base_offset).collect::<Vec<_>>()
        );
        // Reading is bounded by end_offset.
        if let Some(b) = batches.get(1) {
            let r = log.read(m.start, usize::MAX, Some(b.base_offset)).unwrap();
            assert!(r.iter().all(|x| x.base_offset < b.base_offset));
            assert_eq!(r.len(), 1);
        }
        // Out of range on both sides, with the valid range in the error.
        assert!(log.read(m.next_offset(), 100, None).unwrap().is_empty());
        match log.read(m.next_offset() + 1, 100, None) {
            Err(LogError::OffsetOutOfRange {
                log_start_offset,
                next_offset,
                ..
            }) => {
                assert_eq!((log_start_offset, next_offset), (m.start, m.next_offset()));
            }
            other => panic!("expected out of range, got {other:?}"),
        }
        if m.start > 0 {
            assert!(matches!(
                log.read(m.start - 1, 100, None),
                Err(LogError::OffsetOutOfRange { log_start_offset, .. }) if log_start_offset == m.start
            ));
        }
        // Timestamp lookups.
        let all_ts: Vec<(u64, i64)> = batches
            .iter()
            .flat_map(|b| {
                b.timestamps
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| (b.base_offset + i as u64, *t))
            })
            .filter(|(o, _)| *o >= m.start)
            .collect();
        let probes: Vec<i64> = all_ts
            .iter()
            .step_by(7)
            .map(|(_, t)| *t)
            .chain([i64::MIN, i64::MAX])
            .collect();
        for t in probes {
            let want = all_ts.iter().find(|(_, ts)| *ts >= t).map(|(o, _)| *o);
            assert_eq!(log.offset_for_timestamp(t).unwrap(), want, "timestamp {t}");
        }
        // Decoding what a read returns gives the records back.
        if let Some(b) = batches.last() {
            let r = log.read(b.base_offset, 1, None).unwrap();
            let recs = decode_records(r[0].bytes.clone(), &BatchLimits::default()).unwrap();
            assert_eq!(recs.len(), b.timestamps.len());
        }
    }
}

fn run(storage: Arc<dyn Storage>, dir: &Path, ops: &[Op]) {
    let clock = ManualClock::new(1_700_000_000_000);
    let log = PartitionLog::open(storage.clone(), dir, config(), Arc::new(clock.clone())).unwrap();
    let mut h = Harness {
        storage,
        dir: dir.to_path_buf(),
        clock,
        log: Some(log),
        model: Model::default(),
        seed: 0,
    };
    for op in ops {
        h.apply(op);
        h.check();
    }
    // Whatever happened, a final reopen must agree too.
    h.reopen();
    h.check();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model_in_memory(ops in proptest::collection::vec(op(), 1..70)) {
        run(Arc::new(FaultStorage::new()), Path::new("/p/0"), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model_on_disk(ops in proptest::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        run(Arc::new(FileStorage), dir.path(), &ops);
    }
}
