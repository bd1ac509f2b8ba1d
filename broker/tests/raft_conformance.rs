//! openraft's storage conformance suite, run against the Raft log store on
//! the segment log and the group state machine (on disk, in a temp dir).

use std::sync::Arc;

use parking_lot::Mutex;

use openraft::StorageError;
use openraft::errors::ErrorSource;
use openraft::testing::log::{StoreBuilder, Suite};
use strata_broker::log::{FileStorage, LogConfig, PartitionLog, PartitionWriter, WriterConfig};
use strata_broker::raft::Tc;
use strata_broker::raft::sm::{GroupSm, Machine, PartitionState};
use strata_broker::raft::store::{InstallHint, LogStore};

struct Builder;

fn err(e: impl std::fmt::Display) -> StorageError<Tc> {
    StorageError::read(ErrorSource::from_string(e))
}

impl StoreBuilder<Tc, LogStore, GroupSm, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, GroupSm), StorageError<Tc>> {
        let tmp = tempfile::tempdir().map_err(err)?;
        let dir = tmp.path().join("p0");
        let log = PartitionLog::open_dir(&dir, LogConfig::default()).map_err(err)?;
        let writer = Arc::new(PartitionWriter::spawn(log, WriterConfig::default()).map_err(err)?);
        let hint = Arc::new(Mutex::new(InstallHint::default()));
        let store = LogStore::open(writer, hint.clone()).map_err(err)?;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let sm = GroupSm::open(
            Arc::new(FileStorage),
            dir,
            Machine::Partition(PartitionState::default()),
            hint,
            tx,
            |_: &_| false,
        )
        .map_err(err)?;
        Ok((tmp, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<Tc>> {
    Suite::test_all(Builder).await?;
    Ok(())
}
