//! The log's error type: one enum for every operation of the partition log.

use std::io;
use std::path::PathBuf;

/// What went wrong in the partition log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A read asked for an offset the partition does not hold.
    #[error(
        "offset {offset} is out of range: the partition holds offsets [{log_start_offset}, {next_offset})"
    )]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The first offset still held.
        log_start_offset: u64,
        /// The offset the next record will take.
        next_offset: u64,
    },
    /// Stored bytes fail their checks: media corruption or a bug.
    #[error("corrupt log data in {path} at byte {position} (near offset {offset}): {reason}")]
    Corrupt {
        /// The segment or index file.
        path: PathBuf,
        /// Byte position of the damaged entry.
        position: u64,
        /// Offset of the damaged entry, or of the read that found it.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// An appended entry does not follow the log's last index.
    #[error("entry {got} does not follow the log's last entry: expected Raft index {expected}")]
    NonContiguous {
        /// The index that must come next.
        expected: u64,
        /// The entry given.
        got: super::LogId,
    },
    /// An entry is larger than the configured limit.
    #[error("entry payload of {size} bytes exceeds the limit of {max} bytes")]
    EntryTooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A request that contradicts the log's state (purging backwards,
    /// truncating purged entries, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The configuration is unusable.
    #[error("invalid log configuration: {0}")]
    Config(#[from] ConfigError),
    /// The partition's writer thread has stopped.
    #[error("the partition writer has stopped")]
    WriterStopped,
    /// An earlier write or fsync failed, so what the page cache holds can no
    /// longer be trusted to match the disk; the log must be reopened.
    #[error("the log refuses writes after an earlier I/O failure ({0}); reopen it to recover")]
    Poisoned(String),
}

impl LogError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }
}

/// Why a small file of the log (a segment header, an index, the start
/// checkpoint) cannot be trusted. The caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Shorter than its fixed part.
    #[error("{len} bytes is too short (at least {min})")]
    TooShort {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        min: usize,
    },
    /// A fixed-size file of another size.
    #[error("{len} bytes, expected {expected}")]
    WrongLength {
        /// Bytes present.
        len: usize,
        /// Its fixed size.
        expected: usize,
    },
    /// The magic number is not this file kind's.
    #[error("bad magic (not a {0} file)")]
    BadMagic(&'static str),
    /// A format version this build does not read.
    #[error("unsupported format version {0}")]
    Version(u16),
    /// The checksum does not match the content.
    #[error("CRC mismatch")]
    Crc,
    /// Flags this build does not know.
    #[error("unknown flags {0:#x}")]
    Flags(u16),
    /// Index points out of order or past the segment's end.
    #[error("{0} points are out of order or past the segment's end")]
    Unordered(&'static str),
    /// The body is not a whole number of fixed-size entries.
    #[error("length is not a whole number of entries")]
    PartialEntry,
}

/// A [`crate::LogConfig`] whose limits cannot work together; the message
/// names the setting and the bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Result alias of the log.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
