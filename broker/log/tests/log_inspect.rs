//! Offline inspection (`strata log dump|verify`) through the storage seam:
//! it finds partition directories under a data directory, verifies every
//! entry, reports a flipped bit with its position, and writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{batch, entry, small_config};
use strata_log::fault::FaultStorage;
use strata_log::inspect::{inspect_partition_in, partition_dirs_in};
use strata_log::{ManualClock, PartitionLog};

#[test]
fn inspection_finds_partitions_verifies_entries_and_reports_a_flipped_bit() {
    let fs = FaultStorage::new();
    let dir = Path::new("/data/topics/orders/0");
    let mut log = PartitionLog::open(
        Arc::new(fs.clone()),
        dir,
        small_config(),
        Arc::new(ManualClock::new(0)),
    )
    .unwrap();
    for i in 0..20 {
        log.append(&[entry(1, i, batch(3, 40, 0, i, false))])
            .unwrap();
    }
    log.sync().unwrap();
    drop(log);

    assert_eq!(
        partition_dirs_in(&fs, Path::new("/data")).unwrap(),
        vec![dir.to_path_buf()]
    );
    let clean = inspect_partition_in(&fs, dir, |_, _, _| {}).unwrap();
    assert!(clean.iter().all(|s| s.problems.is_empty()), "{clean:?}");
    assert_eq!(clean.iter().map(|s| s.entries).sum::<u64>(), 20);
    assert_eq!(clean.iter().map(|s| s.records).sum::<u64>(), 60);

    let first = clean[0].path.clone();
    let ops = fs.op_count();
    fs.flip_bit(&first, 200, 3).unwrap();
    let damaged = inspect_partition_in(&fs, dir, |_, _, _| {}).unwrap();
    let problems: Vec<_> = damaged.iter().flat_map(|s| s.problems.clone()).collect();
    assert_eq!(problems.len(), 1, "{damaged:?}");
    assert!(problems[0].position <= 200, "{problems:?}");
    // Reading only: the damaged file keeps its length, nothing was repaired.
    assert_eq!(fs.file_len(&first), Some(clean[0].size_bytes));
    assert!(fs.op_count() > ops);
}
