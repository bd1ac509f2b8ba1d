//! Recovery, corruption and boundary tests of the partition log on the real
//! file system: flipped bits, torn tails, damaged or missing indexes,
//! opening without rescanning sealed segments, bad input, and the Raft
//! index ↔ offset mapping at segment boundaries, truncation points and the
//! retention boundary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{batch, entry, small_config};
use strata_log::entry::ENTRY_HEADER_LEN;
use strata_log::segment::SEGMENT_HEADER_LEN;
use strata_log::{
    EntryKind, FileStorage, LogConfig, LogError, LogId, ManualClock, PartitionLog, Payload,
};

fn open(dir: &Path, config: LogConfig, clock: &ManualClock) -> PartitionLog {
    PartitionLog::open(Arc::new(FileStorage), dir, config, Arc::new(clock.clone())).unwrap()
}

/// Appends `n` single-entry batches of 3 records each (term 1, indexes from
/// the log's end) and syncs.
fn fill(log: &mut PartitionLog, n: u64, ts: i64) {
    let start = log.last_log_id().map_or(0, |l| l.index + 1);
    for i in start..start + n {
        log.append(&[entry(1, i, batch(3, 100, ts + i as i64 * 10, i, false))])
            .unwrap();
    }
    log.sync().unwrap();
}

fn flip_byte(path: &Path, position: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, position).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, position).unwrap();
}

#[test]
fn flipped_bit_in_sealed_segment_is_reported_with_segment_and_offset_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 40, 0);
    let segs = log.segments();
    assert!(segs.len() >= 3 && segs[0].sealed);
    // Flip a byte inside the second entry's records (past its headers).
    let victim = &segs[0];
    let second = log
        .entries(victim.base_index + 1..victim.base_index + 2, usize::MAX)
        .unwrap();
    let pos = (SEGMENT_HEADER_LEN + 2 * ENTRY_HEADER_LEN + second[0].payload.len() + 100) as u64;
    flip_byte(&victim.path, pos);
    for log in [log, open(dir.path(), small_config(), &clock)] {
        match log.read(3, 1 << 20, None) {
            Err(LogError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, victim.path);
                assert_eq!(offset, 3, "the damaged batch starts at offset 3");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // Data before the damage is still served; data after it too, from its own batch.
        assert_eq!(log.read(0, 1, None).unwrap()[0].base_offset, 0);
        assert_eq!(log.read(6, 1, None).unwrap()[0].base_offset, 6);
        // The sealed segment's index is intact, so reopen did not scan it.
        assert_eq!(log.recovery_report().indexes_rebuilt, 0);
    }
}

#[test]
fn flipped_bit_in_active_tail_is_truncated_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 12, 0);
    let active = log.segments().last().unwrap().clone();
    assert!(!active.sealed);
    let last = log.last_log_id().unwrap();
    drop(log);
    // Damage the very last entry.
    flip_byte(&active.path, active.size_bytes - 5);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.last_log_id().unwrap().index, last.index - 1);
    assert!(log.recovery_report().tail_bytes_truncated > 0);
    assert_eq!(
        std::fs::metadata(&active.path).unwrap().len(),
        log.segments().last().unwrap().size_bytes
    );
}

#[test]
fn torn_tail_and_trailing_garbage_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 5, 0);
    let before = log.last_log_id().unwrap();
    let path = log.segments().last().unwrap().path.clone();
    let len = std::fs::metadata(&path).unwrap().len();
    drop(log);
    // Half of a last entry.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 50).unwrap();
    drop(f);
    let mut log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.last_log_id().unwrap().index, before.index - 1);
    // Appending continues at the right index and offset.
    let a = log
        .append(&[entry(1, before.index, batch(1, 10, 0, 99, false))])
        .unwrap();
    assert_eq!(a[0].base_offset, (before.index) * 3);
    log.sync().unwrap();
    drop(log);
    // Garbage after the last entry.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0xAB; 77]).unwrap();
    drop(f);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.last_log_id().unwrap().index, before.index);
    assert_eq!(log.recovery_report().tail_bytes_truncated, 77);
}

#[test]
fn missing_or_damaged_index_of_sealed_segment_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 40, 1000);
    let segs = log.segments();
    let expect: Vec<_> = (0..120)
        .step_by(7)
        .map(|o| log.read(o, 1, None).unwrap()[0].clone())
        .collect();
    let ts = log.offset_for_timestamp(1000 + 250).unwrap();
    drop(log);
    let idx0 = segs[0].path.with_extension("index");
    let tidx1 = segs[1].path.with_extension("timeindex");
    std::fs::remove_file(&idx0).unwrap();
    flip_byte(&tidx1, 10);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.recovery_report().indexes_rebuilt, 2);
    assert!(idx0.exists());
    let got: Vec<_> = (0..120)
        .step_by(7)
        .map(|o| log.read(o, 1, None).unwrap()[0].clone())
        .collect();
    assert_eq!(got, expect);
    assert_eq!(log.offset_for_timestamp(1000 + 250).unwrap(), ts);
    // And the rebuilt files are trusted next time.
    drop(log);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.recovery_report().indexes_rebuilt, 0);
    assert_eq!(log.recovery_report().segments_scanned, 1);
}

/// Opening scans only the active segment: sealed segments with intact
/// indexes are not read, however many there are.
#[test]
fn open_trusts_sealed_segments_and_scans_only_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 300, 0);
    let n = log.segments().len();
    assert!(n > 30, "{n} segments");
    drop(log);
    let log = open(dir.path(), small_config(), &clock);
    let r = log.recovery_report();
    assert_eq!(
        (r.segments_trusted, r.segments_scanned, r.indexes_rebuilt),
        (n - 1, 1, 0)
    );
    assert_eq!(log.next_offset(), 900);
}

#[test]
fn bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 3, 0);
    let size = log.size_bytes();
    // A gap in Raft indexes, anywhere in the appended slice.
    let err = log
        .append(&[entry(1, 3, Payload::Blank), entry(1, 5, Payload::Blank)])
        .unwrap_err();
    assert!(
        matches!(err, LogError::NonContiguous { expected: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("expected Raft index 4"));
    // Oversized batch and command.
    let big = batch(1, 1500, 0, 1, false);
    let err = log.append(&[entry(1, 3, big)]).unwrap_err();
    assert!(
        matches!(err, LogError::EntryTooLarge { max: 1500, .. }),
        "{err}"
    );
    let err = log
        .append(&[entry(1, 3, Payload::Command(Bytes::from(vec![0; 300])))])
        .unwrap_err();
    assert!(matches!(err, LogError::EntryTooLarge { max: 256, .. }));
    // A term going backwards.
    let err = log.append(&[entry(0, 3, Payload::Blank)]).unwrap_err();
    assert!(matches!(err, LogError::Invalid(_)));
    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.last_log_id().unwrap().index, 2);
    // Purging backwards is a no-op; truncating purged entries an error.
    log.purge(LogId::new(1, 1, 1), None).unwrap();
    log.purge(LogId::new(1, 1, 0), None).unwrap();
    assert_eq!(log.log_start_offset(), 6);
    assert!(matches!(
        log.truncate_after(Some(0)),
        Err(LogError::Invalid(_))
    ));
    assert!(matches!(
        log.truncate_after(None),
        Err(LogError::Invalid(_))
    ));
    // An invalid configuration is refused before anything is touched.
    let bad = LogConfig {
        index_interval_bytes: 0,
        ..small_config()
    };
    let err = PartitionLog::open(
        Arc::new(FileStorage),
        &dir.path().join("other"),
        bad,
        Arc::new(clock.clone()),
    )
    .unwrap_err();
    assert!(matches!(err, LogError::Config(_)));
    assert!(!dir.path().join("other").exists());
}

/// Regression guard: blank and membership entries take no offsets, also
/// when they sit at segment boundaries, truncation points and the purge
/// point — where other brokers had their index↔offset bugs.
#[test]
fn index_to_offset_mapping_at_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    let mut index = 0;
    // Blank first (a new leader's entry), then batches until a roll, then a
    // membership entry right at the start of the new segment.
    log.append(&[entry(1, index, Payload::Blank)]).unwrap();
    index += 1;
    while log.segments().len() < 2 {
        log.append(&[entry(1, index, batch(2, 300, 0, index, false))])
            .unwrap();
        index += 1;
    }
    let seg1 = log.segments()[1].clone();
    assert_eq!(
        seg1.base_index,
        index - 1,
        "the roll happened at the last batch"
    );
    log.append(&[entry(
        2,
        index,
        Payload::Membership(Bytes::from_static(b"voters=1,2,3")),
    )])
    .unwrap();
    index += 1;
    log.append(&[entry(2, index, batch(1, 10, 0, 1, false))])
        .unwrap();
    log.sync().unwrap();
    let e = log.entries(seg1.base_index..index + 1, usize::MAX).unwrap();
    let kinds: Vec<_> = e.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EntryKind::Batch, EntryKind::Membership, EntryKind::Batch]
    );
    assert_eq!(
        e[1].base_offset,
        e[0].base_offset + 2,
        "membership takes no offset"
    );
    assert_eq!(e[2].base_offset, e[1].base_offset);
    // Truncate right before the membership entry, at the segment's first
    // entry: the new tail is the roll batch; offsets continue densely.
    log.truncate_after(Some(seg1.base_index)).unwrap();
    assert_eq!(log.next_offset(), e[1].base_offset);
    let a = log
        .append(&[
            entry(3, seg1.base_index + 1, Payload::Blank),
            entry(3, seg1.base_index + 2, batch(1, 1, 0, 5, false)),
        ])
        .unwrap();
    assert_eq!(a[1].base_offset, e[1].base_offset);
    // Truncate exactly at a segment boundary: the whole second segment goes.
    log.truncate_after(Some(seg1.base_index - 1)).unwrap();
    assert_eq!(log.segments().len(), 1);
    assert_eq!(log.next_offset(), seg1.base_offset);
    // Purge exactly at the boundary (the first segment's last entry): the
    // log start is the next offset, and reads below it fail with that start.
    log.append(&[entry(3, seg1.base_index, batch(1, 1, 0, 6, false))])
        .unwrap();
    log.sync().unwrap();
    let first_last = log.segments()[0].last_log_id.unwrap();
    log.purge(first_last, None).unwrap();
    assert_eq!(log.log_start_offset(), seg1.base_offset);
    assert!(matches!(
        log.read(0, 1, None),
        Err(LogError::OffsetOutOfRange { log_start_offset, .. }) if log_start_offset == seg1.base_offset
    ));
    drop(log);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.log_start_offset(), seg1.base_offset);
    assert_eq!(log.first_index(), Some(first_last.index + 1));
}

#[test]
fn purge_beyond_the_tail_continues_at_the_snapshot_point() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 4, 0);
    // As after installing a snapshot at index 20 whose next offset is 500.
    log.purge(LogId::new(4, 2, 20), Some(500)).unwrap();
    assert!(log.segments().is_empty());
    assert_eq!((log.log_start_offset(), log.next_offset()), (500, 500));
    assert_eq!(log.last_log_id(), Some(LogId::new(4, 2, 20)));
    let err = log.append(&[entry(4, 22, Payload::Blank)]).unwrap_err();
    assert!(matches!(err, LogError::NonContiguous { expected: 21, .. }));
    let a = log
        .append(&[entry(4, 21, batch(2, 5, 0, 1, false))])
        .unwrap();
    assert_eq!(a[0].base_offset, 500);
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!((log.log_start_offset(), log.next_offset()), (500, 502));
    assert_eq!(log.first_index(), Some(21));
}

/// Time retention works on a quiet partition: the aged active segment is
/// rolled and then deleted, and the log start offset only moves forward.
#[test]
fn time_retention_deletes_quiet_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let config = LogConfig {
        retention_ms: Some(10_000),
        segment_ms: 5_000,
        ..small_config()
    };
    let mut log = open(dir.path(), config.clone(), &clock);
    log.append(&[entry(1, 0, batch(3, 10, 1_000_000, 1, false))])
        .unwrap();
    log.sync().unwrap();
    assert_eq!(log.enforce_retention().unwrap().segments_deleted, 0);
    clock.advance(20_000);
    let r = log.enforce_retention().unwrap();
    assert_eq!((r.segments_deleted, r.log_start_offset), (1, 3));
    assert!(log.segments().is_empty());
    assert_eq!(log.next_offset(), 3);
    // The next append continues the offsets and indexes.
    let a = log
        .append(&[entry(1, 1, batch(1, 10, 1_020_000, 2, false))])
        .unwrap();
    assert_eq!(a[0].base_offset, 3);
}

#[test]
fn size_retention_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        retention_bytes: Some(10_000),
        ..small_config()
    };
    let mut log = open(dir.path(), config, &clock);
    fill(&mut log, 200, 0);
    let before = log.size_bytes();
    let r = log.enforce_retention().unwrap();
    assert!(r.segments_deleted > 0);
    assert_eq!(before - r.bytes_deleted, log.size_bytes());
    let segs = log.segments();
    assert!(log.size_bytes() >= 10_000);
    assert!(log.size_bytes() - segs[0].size_bytes < 10_000);
    assert_eq!(log.log_start_offset(), segs[0].base_offset);
}

#[test]
fn timestamp_lookup_and_fetch_limits() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 50, 10_000); // batch i: timestamps 10_000 + 10i + {0,1,2}
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(10_001).unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(10_003).unwrap(), Some(3));
    assert_eq!(
        log.offset_for_timestamp(10_000 + 10 * 37 + 2).unwrap(),
        Some(37 * 3 + 2)
    );
    assert_eq!(
        log.offset_for_timestamp(10_000 + 10 * 49 + 3).unwrap(),
        None
    );
    // A byte limit smaller than a batch still returns one whole batch.
    let one = log.read(4, 1, None).unwrap();
    assert_eq!((one.len(), one[0].base_offset), (1, 3));
    // fetch_bytes_max caps large requests.
    let batch_len = one[0].bytes.len();
    let capped = LogConfig {
        fetch_bytes_max: (batch_len * 3) as u32,
        ..small_config()
    };
    drop(log);
    let log = open(dir.path(), capped, &clock);
    assert_eq!(log.read(0, usize::MAX, None).unwrap().len(), 3);
}

/// Entries larger than the reader's chunk (256 KiB), one after another:
/// each one's header arrives in a fresh chunk that cannot hold the whole
/// entry. Recovery must keep them all and Raft reads must return them all
/// (a reader that refilled only once cut the log at the second one).
#[test]
fn entries_larger_than_the_read_chunk_survive_reopen_and_raft_reads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig::default();
    let mut log = open(dir.path(), config.clone(), &clock);
    let n = 6u64;
    for i in 0..n {
        // ~270-330 KB each, varied so headers land at varied positions.
        let value_len = 270_000 + i as usize * 12_345;
        log.append(&[entry(1, i, batch(1, value_len, i as i64, i, false))])
            .unwrap();
    }
    log.sync().unwrap();
    let read_all = |log: &PartitionLog| {
        let got = log.entries(0..n, usize::MAX).unwrap();
        assert_eq!(got.len() as u64, n);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.log_id.index, i as u64);
        }
        got.iter().map(|e| e.payload.clone()).collect::<Vec<_>>()
    };
    let before = read_all(&log);
    drop(log);
    let log = open(dir.path(), config, &clock);
    assert_eq!(
        log.last_log_id().map(|l| l.index),
        Some(n - 1),
        "reopen cut the log"
    );
    assert_eq!(log.next_offset(), n);
    assert_eq!(read_all(&log), before);
}
