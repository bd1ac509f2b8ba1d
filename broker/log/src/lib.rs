//! `strata-log`, the storage engine: the on-disk log of one partition.
//!
//! [`PartitionLog`] is the API; below it, [`segment`] owns one segment file
//! and its indexes, [`entry`] the entry encoding, [`index`] the sparse
//! indexes, [`checkpoint`] the log-start file, [`retention`] the pure
//! deletion policy, and [`storage`] the single I/O seam ([`fault`] is its
//! fault-injecting twin for tests), and [`writer`] group-commits appends
//! from many callers into one fsync. The record-batch codec itself lives in
//! `strata-proto`, shared with the client.
//!
//! This crate knows nothing about Raft's library, gRPC, sled, tokio, topics or the
//! network: it stores entries keyed by Raft log ids and hands them back.

pub mod checkpoint;
pub mod config;
pub mod entry;
pub mod error;
pub mod fault;
pub mod index;
pub mod inspect;
pub mod partition;
pub mod retention;
pub mod segment;
pub mod storage;
pub mod writer;

pub use config::{Clock, LogConfig, ManualClock, SystemClock};
pub use entry::{Entry, EntryKind, LogId, NewEntry, Payload};
pub use error::{ConfigError, FormatError, LogError, Result};
pub use partition::{
    Appended, PartitionLog, RecoveryReport, RetentionReport, SegmentInfo, StoredBatch,
};
pub use retention::RetentionHold;
pub use storage::{FileStorage, Storage, StorageFile};
pub use writer::{
    Completion, PartitionWriter, SyncObserver, WriterConfig, WriterPool, WriterStats,
};
