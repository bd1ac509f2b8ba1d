//! Crash tests with the fault-injecting storage.
//!
//! Seeded random runs of append / sync / truncate / purge, with I/O
//! failures injected after a random number of operations and power cuts
//! (unsynced bytes dropped, or a random part of them kept and partly zeroed)
//! at random points. After every cut the log is reopened and must hold
//! every entry that a successful `sync` reported durable, nothing that was
//! never appended, nothing half-written, and a purge point between the last
//! acknowledged purge and the last attempted one. Each failing seed is
//! printed so it can be replayed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_log::fault::{FaultStorage, SplitMix};
use strata_log::{EntryKind, LogError, LogId, ManualClock, NewEntry, PartitionLog, Payload};

#[derive(Clone, Debug, PartialEq)]
struct MEntry {
    log_id: LogId,
    base_offset: u64,
    kind: EntryKind,
    payload: Bytes,
    records: u64,
}

/// What the test knows: every entry that may be in the log (index = position),
/// how many of them were acknowledged durable, and the purge points.
#[derive(Default)]
struct Model {
    entries: Vec<MEntry>,
    durable_len: usize,
    purged_ok: Option<u64>,
    purged_attempt: Option<u64>,
    term: u64,
}

impl Model {
    fn next_offset(&self, log_start: u64) -> u64 {
        self.entries
            .last()
            .map_or(log_start, |e| e.base_offset + e.records)
    }
}

fn open(fs: &FaultStorage, clock: &ManualClock) -> PartitionLog {
    PartitionLog::open(
        Arc::new(fs.clone()),
        Path::new("/crash/p0"),
        common::small_config(),
        Arc::new(clock.clone()),
    )
    .unwrap_or_else(|e| panic!("reopen after crash failed: {e}"))
}

/// Checks the reopened log against the model, then makes the model match
/// what survived.
fn check_after_crash(seed: u64, step: usize, log: &PartitionLog, m: &mut Model) {
    let ctx = format!("seed {seed} step {step}");
    let got = log
        .entries(0..u64::MAX, usize::MAX)
        .unwrap_or_else(|e| panic!("{ctx}: read entries: {e}"));
    let last = log.last_log_id();
    let purged = log.last_purged().map(|p| p.index);
    assert!(
        purged >= m.purged_ok && purged <= m.purged_attempt.max(m.purged_ok),
        "{ctx}: purge point {purged:?} outside [{:?}, {:?}]",
        m.purged_ok,
        m.purged_attempt
    );
    if m.durable_len > 0 {
        let durable_last = m.entries[m.durable_len - 1].log_id;
        assert!(
            last.is_some_and(|l| l.index >= durable_last.index),
            "{ctx}: durable entry {durable_last} lost; log ends at {last:?}"
        );
    }
    for g in &got {
        let i = g.log_id.index as usize;
        let want = m
            .entries
            .get(i)
            .unwrap_or_else(|| panic!("{ctx}: entry {} was never appended", g.log_id));
        assert_eq!(
            (g.log_id, g.base_offset, g.kind, &g.payload),
            (want.log_id, want.base_offset, want.kind, &want.payload),
            "{ctx}: entry {i} differs"
        );
    }
    if let (Some(first), Some(p)) = (got.first(), purged) {
        assert_eq!(
            first.log_id.index,
            p + 1,
            "{ctx}: first entry after purge point"
        );
    }
    // The log is readable from start to end without corruption errors.
    let mut offset = log.log_start_offset();
    while offset < log.next_offset() {
        let r = log
            .read(offset, 1 << 16, None)
            .unwrap_or_else(|e| panic!("{ctx}: read at {offset}: {e}"));
        assert!(!r.is_empty(), "{ctx}: replay stalled at {offset}");
        offset = r.last().unwrap().last_offset() + 1;
    }
    // Adopt what survived: it is durable now (open syncs it).
    let keep = last.map_or(0, |l| l.index as usize + 1);
    m.entries.truncate(keep);
    m.durable_len = m.entries.len();
    m.purged_ok = purged;
    m.purged_attempt = purged;
}

/// Returns (crashes, crashes whose recovery cut a torn tail).
fn run(seed: u64, steps: usize) -> (u64, u64) {
    let mut crashes = (0u64, 0u64);
    let mut rng = SplitMix::new(seed);
    let fs = FaultStorage::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let mut log = open(&fs, &clock);
    let mut m = Model {
        term: 1,
        ..Model::default()
    };
    let mut payload_seed = seed << 20;
    let trace = std::env::var("STRATA_CRASH_TRACE").is_ok();
    if trace {
        eprintln!("== seed {seed}");
    }
    for step in 0..steps {
        let roll = rng.below(100);
        if trace {
            eprintln!(
                "step {step}: op {roll}; segments {:?}",
                log.segments()
                    .iter()
                    .map(|s| (
                        s.base_offset,
                        s.base_index,
                        s.last_log_id.map(|l| l.index),
                        s.sealed,
                        s.size_bytes
                    ))
                    .collect::<Vec<_>>()
            );
        }
        match roll {
            0..=44 => {
                let n = 1 + rng.below(4) as usize;
                let mut news = Vec::new();
                let start_index = log.last_log_id().map_or(0, |l| l.index + 1);
                for k in 0..n {
                    payload_seed += 1;
                    let payload = match rng.below(6) {
                        0 => Payload::Blank,
                        1 => Payload::Command(Bytes::from(vec![
                            k as u8;
                            1 + rng.below(100) as usize
                        ])),
                        _ => common::batch(
                            1 + rng.below(5) as usize,
                            rng.below(200) as usize,
                            1_700_000_000_000,
                            payload_seed,
                            rng.below(2) == 0,
                        ),
                    };
                    news.push(NewEntry {
                        log_id: LogId::new(m.term, 1, start_index + k as u64),
                        payload,
                    });
                }
                let log_start = log.log_start_offset();
                let result = log.append(&news);
                if let Ok(appended) = &result {
                    assert_eq!(appended.len(), news.len());
                }
                if matches!(result, Err(LogError::Poisoned(_))) {
                    // Refused outright: nothing was written.
                    continue;
                }
                // Appended, or failed part-way: the entries may now be in the log.
                m.entries.truncate(start_index as usize);
                for e in &news {
                    let base_offset = m.next_offset(log_start);
                    m.entries.push(MEntry {
                        log_id: e.log_id,
                        base_offset,
                        kind: e.payload.kind(),
                        payload: Bytes::copy_from_slice(e.payload.bytes()),
                        records: u64::from(e.payload.record_count()),
                    });
                }
                if let Err(e) = result {
                    assert!(
                        matches!(e, LogError::Io { .. } | LogError::Poisoned(_)),
                        "seed {seed}: {e}"
                    );
                }
            }
            45..=64 => {
                if log.sync().is_ok() {
                    m.durable_len = m.entries.len();
                    assert_eq!(
                        log.durable_log_id(),
                        m.entries.last().map(|e| e.log_id).or(log.last_purged())
                    );
                }
            }
            65..=71 => {
                let lo = m.purged_ok.unwrap_or(0);
                let hi = log.last_log_id().map_or(0, |l| l.index);
                if hi > lo && m.purged_attempt == m.purged_ok {
                    let after = lo + rng.below(hi - lo + 1);
                    let after = if m.purged_ok.is_some() {
                        after.max(lo)
                    } else {
                        after
                    };
                    match log.truncate_after(Some(after)) {
                        Ok(()) => {
                            m.entries.truncate(after as usize + 1);
                            m.durable_len = m.durable_len.min(m.entries.len());
                        }
                        Err(_) => m.durable_len = m.durable_len.min(after as usize + 1),
                    }
                    m.term += 1;
                }
            }
            72..=77 => {
                let lo = m.purged_ok.map_or(0, |p| p + 1);
                let hi = log.last_log_id().map_or(0, |l| l.index);
                if hi >= lo && (lo as usize) < m.entries.len() {
                    let target = lo + rng.below(hi - lo + 1);
                    let upto = m.entries[target as usize].log_id;
                    m.purged_attempt = Some(m.purged_attempt.map_or(target, |a| a.max(target)));
                    if log.purge(upto, None).is_ok() {
                        m.purged_ok = Some(target);
                    }
                }
            }
            78..=82 => fs.fail_after(rng.below(25)),
            83..=86 => clock.advance(rng.below(120_000) as i64),
            _ => {
                drop(log);
                let torn = (rng.below(2) == 0).then(|| rng.next_u64());
                fs.power_cut(torn);
                fs.heal();
                log = open(&fs, &clock);
                crashes.0 += 1;
                crashes.1 += u64::from(log.recovery_report().tail_bytes_truncated > 0);
                check_after_crash(seed, step, &log, &mut m);
            }
        }
    }
    drop(log);
    fs.power_cut(Some(rng.next_u64()));
    fs.heal();
    let log = open(&fs, &clock);
    check_after_crash(seed, steps, &log, &mut m);
    crashes
}

#[test]
fn power_cuts_never_lose_durable_appends_nor_keep_partial_ones() {
    let seeds: u64 = std::env::var("STRATA_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("STRATA_CRASH_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut crashes, mut torn) = (0, 0);
    for seed in first..first + seeds {
        let (c, t) = run(seed, 150);
        crashes += c;
        torn += t;
    }
    // The run must really have exercised recovery, torn tails included.
    assert!(crashes > seeds * 5, "only {crashes} crashes");
    assert!(
        torn > seeds / 2,
        "only {torn} of {crashes} recoveries cut a torn tail"
    );
    eprintln!("{crashes} crashes, {torn} recoveries cut a torn tail");
}

/// Regression: a power cut right after a segment roll, before the new
/// segment's directory entry was synced, must not lose the sealed segment
/// nor leave a half-created one behind.
#[test]
fn power_cut_right_after_roll() {
    let fs = FaultStorage::new();
    let clock = ManualClock::new(0);
    let mut log = open(&fs, &clock);
    let mut i = 0;
    while log.segments().len() < 2 {
        log.append(&[common::entry(1, i, common::batch(3, 200, 0, i, false))])
            .unwrap();
        i += 1;
    }
    let durable = log.sync().unwrap();
    log.append(&[common::entry(1, i, common::batch(3, 200, 0, i, false))])
        .unwrap();
    drop(log);
    fs.power_cut(None);
    let log = open(&fs, &clock);
    assert_eq!(log.last_log_id(), durable);
    assert!(log.segments()[0].sealed);
}
