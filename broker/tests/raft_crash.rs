//! Crash safety of the files the Raft layer writes beside the segments
//! (`raft-vote`, `raft-committed`, `raft-applied`, `raft-snapshot`), on the
//! fault-injecting storage: every write is failed at every step in turn,
//! then power is cut (unsynced bytes dropped, a random part of them kept
//! torn), and the store and state machine must reopen to the old or the
//! new state — never an error, never a mix — and to the new one whenever
//! the write returned success.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use openraft::entry::RaftEntry as _;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use strata_broker::log::fault::FaultStorage;
use strata_broker::log::{
    LogConfig, LogId, PartitionLog, PartitionWriter, Storage, SystemClock, WriterConfig,
};
use strata_broker::raft::sm::{GroupSm, Machine, PartitionState};
use strata_broker::raft::store::{InstallHint, LogStore};
use strata_broker::raft::{
    RaftEntry, RaftLogId, RaftVote, SnapshotMeta, StoredMembership, Tc, encode, from_log_id,
};

fn dir() -> PathBuf {
    PathBuf::from("/data/topics/t/0")
}

fn open_store(fs: &FaultStorage) -> std::io::Result<LogStore> {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    let log = PartitionLog::open(storage, &dir(), LogConfig::default(), Arc::new(SystemClock))
        .map_err(std::io::Error::other)?;
    let writer = Arc::new(PartitionWriter::spawn(log, WriterConfig::default())?);
    LogStore::open(writer, Arc::new(Mutex::new(InstallHint::default())))
}

fn open_sm(fs: &FaultStorage) -> std::io::Result<GroupSm> {
    // The partition log creates the directory in a node; here the state
    // machine is opened alone.
    fs.create_dir_all(&dir())?;
    fs.sync_dir(Path::new("/data"))?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    GroupSm::open(
        Arc::new(fs.clone()),
        dir(),
        Machine::Partition(PartitionState::default()),
        Arc::new(Mutex::new(InstallHint::default())),
        tx,
        |_: &_| true,
    )
}

fn log_id(index: u64) -> RaftLogId {
    from_log_id(LogId::new(1, 1, index))
}

/// Runs `write` once with the storage failing after `n` operations (for
/// every `n` until the write completes), cuts the power, and hands the
/// outcome to `check` with the storage reopened.
async fn sweep<P, W, C>(seed: u64, mut prepare: P, mut write: W, check: C)
where
    P: AsyncFnMut(&FaultStorage),
    W: AsyncFnMut(&FaultStorage) -> bool,
    C: AsyncFn(&FaultStorage, bool),
{
    for n in 0.. {
        let fs = FaultStorage::new();
        prepare(&fs).await;
        fs.fail_after(n);
        let ok = write(&fs).await;
        fs.heal();
        fs.power_cut(Some(seed.wrapping_add(n)));
        check(&fs, ok).await;
        if ok {
            return;
        }
        assert!(n < 1_000, "the write never succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_is_old_or_new_after_a_power_cut_mid_write() {
    let (old, new) = (RaftVote::new(3, 1), RaftVote::new(4, 2));
    sweep(
        11,
        async |fs| {
            let mut store = open_store(fs).unwrap();
            store.save_vote(&old).await.unwrap();
        },
        async |fs| {
            let Ok(mut store) = open_store(fs) else {
                return false;
            };
            store.save_vote(&new).await.is_ok()
        },
        async |fs, ok| {
            let mut store = open_store(fs).expect("reopens after the power cut");
            let vote = store.read_vote().await.unwrap();
            if ok {
                assert_eq!(vote, Some(new), "a saved vote is durable");
            } else {
                assert!(vote == Some(old) || vote == Some(new), "{vote:?}");
            }
        },
    )
    .await;
}

/// Regression: `raft-committed` is written without fsync; a later fsync of
/// its directory (a segment roll, a vote) made the rename durable while
/// its bytes were not, and the node then refused to open the group
/// ("unexpected end of input") instead of ignoring the hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_committed_hint_is_ignored_not_fatal() {
    let fs = FaultStorage::new();
    let mut store = open_store(&fs).unwrap();
    store.save_committed(Some(log_id(7))).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(7)));
    // Another writer in the directory syncs it: the rename is durable now,
    // the hint's bytes are not.
    fs.sync_dir(&dir()).unwrap();
    fs.power_cut(None);
    drop(store);
    let mut store = open_store(&fs).expect("an unreadable hint must not stop the group");
    assert_eq!(store.read_committed().await.unwrap(), None);
}

/// Regression: the committed hint was trusted without checking that the
/// log holds the entry it names; a hint that survived a power cut while the
/// log's unsynced tail did not pointed openraft past the end of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_hint_beyond_the_log_is_ignored() {
    let fs = FaultStorage::new();
    let mut store = open_store(&fs).unwrap();
    let entries: Vec<RaftEntry> = (1..=3).map(|i| RaftEntry::new_blank(log_id(i))).collect();
    let (tx, rx) = <Tc as TypeConfigExt>::oneshot();
    store
        .append(entries, openraft::storage::IOFlushed::signal(tx))
        .await
        .unwrap();
    rx.await.unwrap().expect("the entries are durable");
    // A hint for an entry the log holds is kept…
    store.save_committed(Some(log_id(2))).await.unwrap();
    drop(store);
    let mut store = open_store(&fs).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2)));
    // …one past its end, or with another term at that index, is not.
    for bad in [log_id(9), from_log_id(LogId::new(7, 1, 3))] {
        store.save_committed(Some(bad)).await.unwrap();
        drop(store);
        store = open_store(&fs).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None, "{bad}");
    }
}

/// Regression: the hint file is debounced (one write per 500 ms), and the
/// last commit of a burst was never written when nothing followed it. A
/// metadata group that went quiet after creating a topic left a hint from
/// before the creation, and its node, killed and restarted, answered
/// "unknown topic" until a leader reached it (CI saw producers fail so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_commit_of_a_burst_reaches_the_hint_file() {
    let fs = FaultStorage::new();
    let mut store = open_store(&fs).unwrap();
    let entries: Vec<RaftEntry> = (1..=3).map(|i| RaftEntry::new_blank(log_id(i))).collect();
    let (tx, rx) = <Tc as TypeConfigExt>::oneshot();
    store
        .append(entries, openraft::storage::IOFlushed::signal(tx))
        .await
        .unwrap();
    rx.await.unwrap().expect("the entries are durable");
    for i in 1..=3 {
        store.save_committed(Some(log_id(i))).await.unwrap();
    }
    // Nothing else is committed; the file must still come to name entry 3.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut reopened = open_store(&fs).unwrap();
        let on_disk = reopened.read_committed().await.unwrap();
        if on_disk == Some(log_id(3)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hint file still names {on_disk:?} after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_hint_is_some_earlier_value_after_a_power_cut_mid_write() {
    sweep(
        23,
        async |fs| {
            let mut store = open_store(fs).unwrap();
            store.save_committed(Some(log_id(5))).await.unwrap();
            fs.sync_dir(&dir()).unwrap();
        },
        async |fs| {
            let Ok(mut store) = open_store(fs) else {
                return false;
            };
            store.save_committed(Some(log_id(9))).await.is_ok()
        },
        async |fs, _ok| {
            let mut store = open_store(fs).expect("reopens after the power cut");
            let c = store.read_committed().await.unwrap();
            // A hint only: any earlier value, or none, is allowed.
            assert!(
                [None, Some(log_id(5)), Some(log_id(9))].contains(&c),
                "{c:?}"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_old_or_new_after_a_power_cut_mid_install() {
    let image = |next_offset| {
        encode(&Machine::Partition(PartitionState {
            next_offset,
            log_start_offset: next_offset,
            ..Default::default()
        }))
        .unwrap()
    };
    let meta = |index| SnapshotMeta {
        last_log_id: Some(log_id(index)),
        last_membership: StoredMembership::default(),
    };
    let applied = async |fs: &FaultStorage| {
        let mut sm = open_sm(fs).expect("reopens after the power cut");
        sm.applied_state().await.unwrap().0.map(|l| l.index)
    };
    sweep(
        31,
        async |fs| {
            let mut sm = open_sm(fs).unwrap();
            sm.install_snapshot(&meta(10), image(100)).await.unwrap();
        },
        async |fs| {
            let Ok(mut sm) = open_sm(fs) else {
                return false;
            };
            sm.install_snapshot(&meta(20), image(200)).await.is_ok()
        },
        async |fs, ok| {
            let index = applied(fs).await;
            if ok {
                assert_eq!(index, Some(20), "an installed snapshot is durable");
            } else {
                assert!(index == Some(10) || index == Some(20), "{index:?}");
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_checkpoint_is_old_or_new_after_a_power_cut_mid_write() {
    // 1,000 applied entries trigger a checkpoint (raft-applied).
    let entries = || {
        (1..=1_000u64)
            .map(|i| Ok((RaftEntry::new_blank(log_id(i)), None)))
            .collect::<Vec<_>>()
    };
    sweep(
        47,
        async |_| {},
        async |fs| {
            let Ok(mut sm) = open_sm(fs) else {
                return false;
            };
            sm.apply(futures::stream::iter(entries())).await.is_ok()
        },
        async |fs, ok| {
            let mut sm = open_sm(fs).expect("reopens after the power cut");
            let index = sm.applied_state().await.unwrap().0.map(|l| l.index);
            if ok {
                assert_eq!(index, Some(1_000), "a written checkpoint is durable");
            } else {
                assert!(index.is_none() || index == Some(1_000), "{index:?}");
            }
        },
    )
    .await;
}

#[test]
fn raft_files_live_in_the_partition_directory() {
    // The sweep above only covers the Raft files if they go through the
    // storage seam: after a vote and a snapshot the fault storage holds them.
    let fs = FaultStorage::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut store = open_store(&fs).unwrap();
        store.save_vote(&RaftVote::new(1, 1)).await.unwrap();
        store.save_committed(Some(log_id(1))).await.unwrap();
        let mut sm = open_sm(&fs).unwrap();
        let snapshot = encode(&Machine::Partition(PartitionState::default())).unwrap();
        sm.install_snapshot(
            &SnapshotMeta {
                last_log_id: Some(log_id(1)),
                last_membership: StoredMembership::default(),
            },
            snapshot,
        )
        .await
        .unwrap();
    });
    let files = fs.files();
    for name in ["raft-vote", "raft-committed", "raft-snapshot"] {
        assert!(
            files.iter().any(|f| f == &dir().join(name)),
            "{name} not written through the storage seam: {files:?}"
        );
    }
    assert!(
        !Path::new("/data").exists(),
        "nothing written to the real disk"
    );
}
