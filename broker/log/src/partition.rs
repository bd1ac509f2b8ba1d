//! The log of one partition: an ordered list of segments in one directory,
//! plus the log-start checkpoint.
//!
//! This is the storage engine's API: append (buffered, then made durable by
//! [`PartitionLog::sync`], one fsync for any number of appends), reads by
//! offset, by Raft index and by timestamp, truncation of a conflicting
//! suffix, prefix purge, retention, and recovery on open. It is shaped to be
//! the Raft log of the partition later (entries carry Raft log ids, the
//! purge point survives restarts), but it knows nothing of openraft, gRPC,
//! topics or the network.
//!
//! Crash-safety rules it follows (argued in `docs/log-format.md`):
//! - an append is durable only after `sync` returns, and `sync` also makes
//!   new segment files' names durable;
//! - a segment is sealed by fsyncing it *before* its index files are
//!   written, each atomically;
//! - a suffix is truncated from the tail backwards, so no hole can open;
//! - a prefix purge writes the checkpoint *before* deleting any file;
//! - after a failed write or fsync the log refuses further writes until it
//!   is reopened (the page cache may no longer match the disk).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strata_proto::batch::{self, BatchLimits};

use super::checkpoint::{CHECKPOINT_FILE, StartCheckpoint};
use super::config::{Clock, ENTRY_READ_LIMIT, LogConfig, SystemClock};
use super::entry::{ENTRY_HEADER_LEN, Entry, EntryKind, LogId, NewEntry, Payload};
use super::error::{LogError, Result};
use super::retention::{RetentionHold, RetentionView, apply_hold, segments_to_delete};
use super::segment::{
    SEGMENT_HEADER_LEN, Segment, SegmentHeader, index_file_name, log_file_name, parse_file_name,
    time_index_file_name,
};
use super::storage::{FileStorage, Storage, StorageFile, read_all, write_atomic};

/// A record batch as stored, with where it sits in the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    /// Raft log id of the entry that carries it.
    pub log_id: LogId,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Number of records.
    pub record_count: u32,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// The batch exactly as the producer encoded it.
    pub bytes: Bytes,
}

impl StoredBatch {
    /// Offset of its last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }
}

/// Where an appended entry landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its Raft log id.
    pub log_id: LogId,
    /// Offset of its first record (for non-batch entries: the next offset).
    pub base_offset: u64,
    /// Records it holds.
    pub record_count: u32,
}

/// A description of one segment, for operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Path of the `.log` file.
    pub path: PathBuf,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset after its last record.
    pub next_offset: u64,
    /// Raft index of its first entry.
    pub base_index: u64,
    /// Log id of its last entry.
    pub last_log_id: Option<LogId>,
    /// Entries it holds.
    pub entry_count: u64,
    /// Records it holds.
    pub record_count: u64,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Newest record timestamp.
    pub max_timestamp_ms: Option<i64>,
    /// Creation time.
    pub created_ms: i64,
    /// Whether it is sealed (immutable, with index files).
    pub sealed: bool,
    /// Sparse offset-index points.
    pub index_points: usize,
}

/// An fsync prepared by [`PartitionLog::prepare_sync`].
#[derive(Debug)]
pub struct PendingSync {
    storage: Arc<dyn Storage>,
    file: Option<(Arc<dyn StorageFile>, PathBuf)>,
    dir: Option<PathBuf>,
    upto: Option<LogId>,
    next_offset: u64,
}

impl PendingSync {
    /// Performs the fsyncs (active segment, then directory if a segment was
    /// created).
    pub fn run(&self) -> Result<()> {
        if let Some((file, path)) = &self.file {
            file.sync_data()
                .map_err(LogError::io("fsync segment", path))?;
        }
        if let Some(dir) = &self.dir {
            self.storage
                .sync_dir(dir)
                .map_err(LogError::io("fsync directory", dir))?;
        }
        Ok(())
    }

    /// The last entry this sync makes durable.
    pub fn upto(&self) -> Option<LogId> {
        self.upto
    }
}

/// What a retention pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// Log start offset afterwards.
    pub log_start_offset: u64,
}

/// What opening a partition found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments opened from their index files, without a scan.
    pub segments_trusted: usize,
    /// Segments scanned (the active one, or sealed ones with a damaged index).
    pub segments_scanned: usize,
    /// Sealed segments whose index files were rebuilt.
    pub indexes_rebuilt: usize,
    /// Bytes cut from a torn or corrupt tail.
    pub tail_bytes_truncated: u64,
    /// Files removed: leftovers of interrupted creations, purges, renames.
    pub files_removed: usize,
}

/// The log of one partition.
#[derive(Debug)]
pub struct PartitionLog {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    segments: Vec<Segment>,
    start: StartCheckpoint,
    durable: Option<LogId>,
    durable_next_offset: u64,
    dir_dirty: bool,
    poisoned: Option<String>,
    recovery: RecoveryReport,
    hold: Option<RetentionHold>,
}

impl PartitionLog {
    /// Opens (creating if needed) the partition in `dir` on the real file
    /// system and clock.
    pub fn open_dir(dir: impl AsRef<Path>, config: LogConfig) -> Result<Self> {
        Self::open(
            Arc::new(FileStorage),
            dir.as_ref(),
            config,
            Arc::new(SystemClock),
        )
    }

    /// Opens (creating if needed) the partition in `dir`, recovering from
    /// whatever a crash left: torn tails are truncated, damaged indexes of
    /// sealed segments rebuilt, interrupted purges finished. Sealed
    /// segments whose index files are intact are not read.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        config.validate().map_err(LogError::Config)?;
        let st = storage.as_ref();
        st.create_dir_all(dir)
            .map_err(LogError::io("create directory", dir))?;
        let mut report = RecoveryReport::default();
        let names = st.list(dir).map_err(LogError::io("list directory", dir))?;
        let mut log_bases = Vec::new();
        let mut index_bases = Vec::new();
        for name in &names {
            if name.ends_with(".tmp") {
                let p = dir.join(name);
                st.remove(&p).map_err(LogError::io("remove leftover", &p))?;
                report.files_removed += 1;
                continue;
            }
            match parse_file_name(name) {
                Some((base, "log")) => log_bases.push(base),
                Some((base, "index" | "timeindex")) => index_bases.push(base),
                _ if name == CHECKPOINT_FILE => {}
                // The replication layer's vote, commit hint and snapshot
                // live beside the segments they describe.
                _ if name.starts_with("raft-") => {}
                _ => {
                    tracing::warn!(dir = %dir.display(), file = %name, "ignoring unknown file in partition directory")
                }
            }
        }
        log_bases.sort_unstable();
        let ckpt_path = dir.join(CHECKPOINT_FILE);
        let start =
            match read_all(st, &ckpt_path).map_err(LogError::io("read checkpoint", &ckpt_path))? {
                Some(b) => StartCheckpoint::decode(&b).map_err(|reason| LogError::Corrupt {
                    path: ckpt_path.clone(),
                    position: 0,
                    offset: 0,
                    reason: reason.to_string(),
                })?,
                None => StartCheckpoint::default(),
            };

        let entry_max = ENTRY_READ_LIMIT;
        let mut segments: Vec<Segment> = Vec::with_capacity(log_bases.len());
        let n = log_bases.len();
        for (i, &base) in log_bases.iter().enumerate() {
            let last = i + 1 == n;
            let opened = Segment::open(st, dir, base, config.index_interval_bytes, entry_max);
            let (mut seg, scan) = match opened {
                Ok(x) => x,
                Err((path, reason)) if last => {
                    // A segment created just before a crash: its header (and
                    // so every entry) never became durable.
                    tracing::warn!(path = %path.display(), %reason, "removing unreadable last segment");
                    remove_segment_files(st, dir, base)?;
                    report.files_removed += 1;
                    continue;
                }
                Err((path, reason)) => {
                    return Err(LogError::Corrupt {
                        path,
                        position: 0,
                        offset: base,
                        reason,
                    });
                }
            };
            match scan {
                None => report.segments_trusted += 1,
                Some(end) => {
                    report.segments_scanned += 1;
                    let file_len = end.file_len;
                    if !last {
                        if let Some(reason) = end.stopped {
                            return Err(LogError::Corrupt {
                                path: seg.log_path(),
                                position: end.valid_len,
                                offset: seg.next_offset,
                                reason: format!(
                                    "sealed segment with a damaged index is also damaged itself: {reason}"
                                ),
                            });
                        }
                        tracing::warn!(path = %seg.log_path().display(), "rebuilding damaged index of sealed segment");
                        seg.seal(st)?;
                        report.indexes_rebuilt += 1;
                    } else {
                        // The active segment: drop stale index files, cut a torn tail.
                        for p in [
                            dir.join(index_file_name(base)),
                            dir.join(time_index_file_name(base)),
                        ] {
                            if st.exists(&p).map_err(LogError::io("stat", &p))? {
                                st.remove(&p)
                                    .map_err(LogError::io("remove stale index", &p))?;
                                report.files_removed += 1;
                            }
                        }
                        if end.valid_len < file_len {
                            tracing::warn!(
                                path = %seg.log_path().display(),
                                valid_len = end.valid_len,
                                file_len,
                                reason = end.stopped.as_deref().unwrap_or(""),
                                "truncating torn or corrupt tail"
                            );
                            report.tail_bytes_truncated += file_len - end.valid_len;
                        }
                        if seg.entry_count == 0 {
                            remove_segment_files(st, dir, base)?;
                            report.files_removed += 1;
                            continue;
                        }
                        if end.valid_len < file_len {
                            seg.truncate_to(end.valid_len, entry_max)?;
                        }
                    }
                }
            }
            segments.push(seg);
        }
        for base in index_bases {
            if log_bases.binary_search(&base).is_err() {
                remove_segment_files(st, dir, base)?;
                report.files_removed += 1;
            }
        }
        // Finish a purge that a crash interrupted.
        if let Some(p) = start.last_purged {
            while segments
                .first()
                .is_some_and(|s| s.last_log_id.is_some_and(|l| l.index <= p.index))
            {
                let s = segments.remove(0);
                s.remove_files(st)?;
                report.files_removed += 1;
            }
        }
        st.sync_dir(dir)
            .map_err(LogError::io("fsync directory", dir))?;
        check_contiguous(&segments, &start)?;
        // What recovery kept may sit only in the page cache (after a process
        // crash): make it durable before calling it durable.
        if let Some(last) = segments.last_mut()
            && !last.sealed
        {
            last.sync()?;
        }
        let mut log = PartitionLog {
            storage,
            dir: dir.to_path_buf(),
            config,
            clock,
            segments,
            start,
            durable: None,
            durable_next_offset: 0,
            dir_dirty: false,
            poisoned: None,
            recovery: report,
            hold: None,
        };
        if log.start.last_purged.is_none()
            && let Some(first) = log.segments.first()
        {
            log.start.log_start_offset = first.header.base_offset;
        }
        log.durable = log.last_log_id();
        log.durable_next_offset = log.next_offset();
        tracing::debug!(dir = %dir.display(), report = ?log.recovery, "partition log opened");
        Ok(log)
    }

    /// What the last open found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The storage seam this log does its I/O through; the Raft layer
    /// writes its files beside the segments through it too.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration (limits and retention) of an open log.
    /// The new limits apply to later appends, rolls and retention passes;
    /// existing segments are not rewritten.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate().map_err(LogError::Config)?;
        self.config = config;
        Ok(())
    }

    /// First offset a read may return.
    pub fn log_start_offset(&self) -> u64 {
        self.start.log_start_offset
    }

    /// Offset the next record will take (the log end offset).
    pub fn next_offset(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.start.log_start_offset, |s| s.next_offset)
    }

    /// Offset after the last durable record.
    pub fn durable_next_offset(&self) -> u64 {
        self.durable_next_offset
    }

    /// Log id of the last entry (or of the purge point, if the log is empty).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.segments
            .last()
            .and_then(|s| s.last_log_id)
            .or(self.start.last_purged)
    }

    /// Log id of the last durable entry.
    pub fn durable_log_id(&self) -> Option<LogId> {
        self.durable
    }

    /// Whether the log holds the entry `id` names: an entry at its index
    /// with the same log id (a lost or overwritten tail does not count).
    pub fn holds(&self, id: LogId) -> bool {
        self.entries(id.index..id.index + 1, usize::MAX)
            .is_ok_and(|e| e.first().is_some_and(|e| e.log_id == id))
    }

    /// The last purged log id, if anything was purged.
    pub fn last_purged(&self) -> Option<LogId> {
        self.start.last_purged
    }

    /// Raft index of the first readable entry, if any.
    pub fn first_index(&self) -> Option<u64> {
        let first = self.segments.first().map(|s| s.header.base_index);
        match self.start.last_purged {
            Some(p) => first.map(|f| f.max(p.index + 1)),
            None => first,
        }
    }

    /// Total bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes()).sum()
    }

    /// Every segment, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .iter()
            .map(|s| SegmentInfo {
                path: s.log_path(),
                base_offset: s.header.base_offset,
                next_offset: s.next_offset,
                base_index: s.header.base_index,
                last_log_id: s.last_log_id,
                entry_count: s.entry_count,
                record_count: s.record_count,
                size_bytes: s.size_bytes(),
                max_timestamp_ms: s.max_timestamp_ms,
                created_ms: s.header.created_ms,
                sealed: s.sealed,
                index_points: s.index_points(),
            })
            .collect()
    }

    fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(LogError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Poisons the log on an I/O failure during a write path.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e @ (LogError::Io { .. } | LogError::Corrupt { .. })) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    /// Appends entries after the last one. Offsets are assigned here, from
    /// the log's own content. Nothing is durable until [`Self::sync`]; the
    /// entries are readable as soon as this returns. Every entry is checked
    /// before anything is written, so a bad entry changes nothing.
    pub fn append(&mut self, entries: &[NewEntry]) -> Result<Vec<Appended>> {
        self.check_writable()?;
        let mut prev = self.last_log_id();
        for e in entries {
            if let Some(p) = prev {
                if e.log_id.index != p.index + 1 {
                    return Err(LogError::NonContiguous {
                        expected: p.index + 1,
                        got: e.log_id,
                    });
                }
                if e.log_id.term < p.term {
                    return Err(LogError::Invalid(format!(
                        "entry {} has a lower term than its predecessor {p}",
                        e.log_id
                    )));
                }
            }
            let (size, max) = match &e.payload {
                Payload::Batch(b) => (b.len(), self.config.batch_bytes_max as usize),
                p => (p.bytes().len(), self.config.other_entry_bytes_max as usize),
            };
            if size > max {
                return Err(LogError::EntryTooLarge { size, max });
            }
            prev = Some(e.log_id);
        }
        let now = self.clock.now_ms();
        let r = self.append_unchecked(entries, now);
        self.guard(r)
    }

    fn append_unchecked(&mut self, entries: &[NewEntry], now: i64) -> Result<Vec<Appended>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let len = ENTRY_HEADER_LEN + e.payload.bytes().len();
            let next_after = self.next_offset() + u64::from(e.payload.record_count());
            let need_new = match self.segments.last_mut() {
                None => true,
                Some(s) if s.sealed => true,
                Some(s) => {
                    let full = !s.fits(
                        len,
                        next_after,
                        e.log_id.index,
                        self.config.segment_bytes_max,
                    );
                    let old = now.saturating_sub(s.header.created_ms) >= self.config.segment_ms;
                    // Only a segment holding records rolls, so segment base
                    // offsets (and file names) are unique.
                    if s.record_count > 0 && (full || old) {
                        s.seal(self.storage.as_ref())?;
                        true
                    } else {
                        false
                    }
                }
            };
            if need_new {
                let header = SegmentHeader {
                    base_offset: self.next_offset(),
                    base_index: e.log_id.index,
                    created_ms: now,
                };
                let seg = Segment::create(
                    self.storage.as_ref(),
                    &self.dir,
                    header,
                    self.config.index_interval_bytes,
                )?;
                self.segments.push(seg);
                self.dir_dirty = true;
            }
            let Some(seg) = self.segments.last_mut() else {
                unreachable!("a segment was just ensured");
            };
            let meta = seg.push(e.log_id, &e.payload);
            out.push(Appended {
                log_id: meta.log_id,
                base_offset: meta.base_offset,
                record_count: meta.record_count,
            });
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.flush()?;
        }
        Ok(out)
    }

    /// Makes every append so far durable (one fsync of the active segment,
    /// plus one of the directory if a segment was created). Returns the log
    /// id of the last durable entry.
    pub fn sync(&mut self) -> Result<Option<LogId>> {
        let pending = self.prepare_sync()?;
        let r = pending.run();
        self.finish_sync(pending, r)
    }

    /// First half of [`Self::sync`]: notes what must be fsynced. The fsync
    /// itself ([`PendingSync::run`]) needs no access to the log, so a
    /// writer can run it without holding a lock that readers wait on, then
    /// call [`Self::finish_sync`]. No other write may happen in between.
    pub fn prepare_sync(&mut self) -> Result<PendingSync> {
        self.check_writable()?;
        let mut file = None;
        if let Some(seg) = self.segments.last_mut()
            && !seg.sealed
        {
            let r = seg.flush();
            self.guard(r)?;
            let Some(seg) = self.segments.last() else {
                unreachable!()
            };
            file = Some((seg.file_handle(), seg.log_path()));
        }
        Ok(PendingSync {
            storage: self.storage.clone(),
            file,
            dir: std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone()),
            upto: self.last_log_id(),
            next_offset: self.next_offset(),
        })
    }

    /// Second half of [`Self::sync`]: records the outcome of
    /// [`PendingSync::run`]. On failure the log is poisoned.
    pub fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: Result<()>,
    ) -> Result<Option<LogId>> {
        self.guard(result)?;
        if pending
            .upto
            .is_some_and(|u| self.durable.is_none_or(|d| d.index <= u.index))
        {
            self.durable = pending.upto;
            self.durable_next_offset = pending.next_offset;
        }
        Ok(self.durable)
    }

    fn out_of_range(&self, offset: u64) -> LogError {
        LogError::OffsetOutOfRange {
            offset,
            log_start_offset: self.log_start_offset(),
            next_offset: self.next_offset(),
        }
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` of batches (capped by `fetch_bytes_max`; always at least
    /// one batch), not past `end_offset` (e.g. the high watermark). Reading
    /// at the log end returns nothing; below the log start or past the end
    /// is [`LogError::OffsetOutOfRange`]. Every batch is verified before it
    /// is returned.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        end_offset: Option<u64>,
    ) -> Result<Vec<StoredBatch>> {
        let next = self.next_offset();
        if offset < self.log_start_offset() || offset > next {
            return Err(self.out_of_range(offset));
        }
        let end = end_offset.unwrap_or(next).min(next);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let budget = max_bytes.clamp(1, self.config.fetch_bytes_max as usize);
        let mut used = 0usize;
        let first = self
            .segments
            .partition_point(|s| s.header.base_offset <= offset)
            .saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate().skip(first) {
            let pos = if i == first {
                seg.position_for_offset(offset)
            } else {
                SEGMENT_HEADER_LEN as u64
            };
            let mut cursor = seg
                .cursor(pos, ENTRY_READ_LIMIT)
                .with_chunk(budget + ENTRY_HEADER_LEN);
            while let Some((meta, _, bytes)) = cursor.next_entry()? {
                if meta.kind != EntryKind::Batch || meta.next_offset() <= offset {
                    continue;
                }
                if meta.base_offset >= end {
                    return Ok(out);
                }
                let len = bytes.len() - ENTRY_HEADER_LEN;
                if !out.is_empty() && used + len > budget {
                    return Ok(out);
                }
                // The cursor verified the entry and its batch (CRC included).
                let Some(max_timestamp_ms) = meta.max_timestamp_ms else {
                    unreachable!("a decoded batch entry has a max timestamp");
                };
                out.push(StoredBatch {
                    log_id: meta.log_id,
                    base_offset: meta.base_offset,
                    record_count: meta.record_count,
                    max_timestamp_ms,
                    bytes: bytes.slice(ENTRY_HEADER_LEN..),
                });
                used += len;
                if used >= budget {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Reads entries with Raft index in `range`, skipping purged ones, up to
    /// `max_bytes` of payload (at least one entry).
    pub fn entries(&self, range: Range<u64>, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let (Some(first), Some(last)) = (self.first_index(), self.last_log_id()) else {
            return Ok(out);
        };
        let lo = range.start.max(first);
        let hi = range.end.min(last.index + 1);
        if lo >= hi {
            return Ok(out);
        }
        let mut used = 0usize;
        let si = self
            .segments
            .partition_point(|s| s.header.base_index <= lo)
            .saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate().skip(si) {
            let pos = if i == si {
                seg.position_for_index(lo)
            } else {
                SEGMENT_HEADER_LEN as u64
            };
            let mut cursor = seg.cursor(pos, ENTRY_READ_LIMIT);
            while let Some((meta, _, bytes)) = cursor.next_entry()? {
                let idx = meta.log_id.index;
                if idx < lo {
                    continue;
                }
                if idx >= hi {
                    return Ok(out);
                }
                let len = bytes.len() - ENTRY_HEADER_LEN;
                if !out.is_empty() && used + len > max_bytes {
                    return Ok(out);
                }
                used += len;
                out.push(Entry {
                    log_id: meta.log_id,
                    base_offset: meta.base_offset,
                    kind: meta.kind,
                    payload: bytes.slice(ENTRY_HEADER_LEN..),
                });
            }
        }
        Ok(out)
    }

    /// The first offset at or after the log start whose record timestamp is
    /// at or above `timestamp_ms`, in log order; `None` if there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let start = self.log_start_offset();
        for seg in &self.segments {
            if seg.next_offset <= start || seg.max_timestamp_ms.is_none_or(|m| m < timestamp_ms) {
                continue;
            }
            let mut cursor = seg.cursor(seg.position_for_timestamp(timestamp_ms), ENTRY_READ_LIMIT);
            while let Some((meta, position, bytes)) = cursor.next_entry()? {
                if meta.kind != EntryKind::Batch
                    || meta.next_offset() <= start
                    || meta.max_timestamp_ms.is_none_or(|m| m < timestamp_ms)
                {
                    continue;
                }
                let corrupt = |reason: String| LogError::Corrupt {
                    path: seg.log_path(),
                    position,
                    offset: meta.base_offset,
                    reason,
                };
                let verified =
                    batch::verify_batch(bytes.slice(ENTRY_HEADER_LEN..), &BatchLimits::UNLIMITED)
                        .map_err(|e| corrupt(e.to_string()))?;
                let records = verified
                    .records(&BatchLimits::UNLIMITED)
                    .map_err(|e| corrupt(e.to_string()))?;
                for (i, r) in records.iter().enumerate() {
                    let offset = meta.base_offset + i as u64;
                    if offset >= start && r.timestamp_ms >= timestamp_ms {
                        return Ok(Some(offset));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Position of the entry with Raft index `raft_index` in `seg`, and its
    /// base offset.
    fn locate(&self, seg: &Segment, raft_index: u64) -> Result<(u64, u64)> {
        let mut cursor = seg.cursor(seg.position_for_index(raft_index), ENTRY_READ_LIMIT);
        while let Some((meta, position, _)) = cursor.next_entry()? {
            if meta.log_id.index == raft_index {
                return Ok((position, meta.base_offset));
            }
        }
        panic!(
            "Raft index {raft_index} not found in segment {} (base index {}, last {:?})",
            seg.header.base_offset, seg.header.base_index, seg.last_log_id
        );
    }

    /// Deletes every entry after Raft index `after` (`None`: every entry),
    /// durably, before returning. Entries at or below the purge point cannot
    /// be truncated.
    pub fn truncate_after(&mut self, after: Option<u64>) -> Result<()> {
        self.check_writable()?;
        if let Some(p) = self.start.last_purged
            && after.is_none_or(|a| a < p.index)
        {
            return Err(LogError::Invalid(format!(
                "cannot truncate after {after:?}: entries up to {p} are purged"
            )));
        }
        let Some(last) = self.last_log_id() else {
            return Ok(());
        };
        if after.is_some_and(|a| a >= last.index) {
            return Ok(());
        }
        let r = self.truncate_unchecked(after);
        self.guard(r)?;
        if self
            .durable
            .is_some_and(|d| after.is_none_or(|a| d.index > a))
        {
            self.durable = self.last_log_id();
            self.durable_next_offset = self.next_offset();
        }
        Ok(())
    }

    fn truncate_unchecked(&mut self, after: Option<u64>) -> Result<()> {
        let st = self.storage.clone();
        // Whole segments go first, newest first, each durably, so a crash
        // leaves a contiguous (if longer) log, never one with a hole.
        while let Some(seg) = self.segments.last() {
            if after.is_some_and(|a| seg.header.base_index <= a) {
                break;
            }
            seg.remove_files(st.as_ref())?;
            st.sync_dir(&self.dir)
                .map_err(LogError::io("fsync directory", &self.dir))?;
            self.segments.pop();
        }
        let Some(a) = after else { return Ok(()) };
        let Some(seg) = self.segments.last() else {
            return Ok(());
        };
        if seg.last_log_id.is_some_and(|l| l.index > a) {
            let (position, _) = self.locate(seg, a + 1)?;
            let entry_max = ENTRY_READ_LIMIT;
            let Some(seg) = self.segments.last_mut() else {
                unreachable!()
            };
            if seg.sealed {
                seg.unseal(st.as_ref())?;
            }
            seg.truncate_to(position, entry_max)?;
        }
        // Truncating right at the purge point can leave a segment holding
        // only purged entries.
        self.drop_purged_segments()
    }

    /// Removes entries up to and including `upto` from the front. `upto`
    /// may lie beyond the last entry (a Raft snapshot install): the log is
    /// then emptied and continues at `upto.index + 1`, with offsets from
    /// `next_offset_hint` (the offset after the snapshot). The checkpoint is
    /// written before any file is deleted. Purging at or below the current
    /// purge point does nothing.
    pub fn purge(&mut self, upto: LogId, next_offset_hint: Option<u64>) -> Result<()> {
        self.check_writable()?;
        if self
            .start
            .last_purged
            .is_some_and(|p| upto.index <= p.index)
        {
            return Ok(());
        }
        let last = self.last_log_id();
        let new_start = match last {
            Some(l) if upto.index < l.index => {
                let si = self
                    .segments
                    .partition_point(|s| s.header.base_index <= upto.index + 1)
                    - 1;
                self.locate(&self.segments[si], upto.index + 1)?.1
            }
            Some(l) if upto.index == l.index => self.next_offset(),
            _ => next_offset_hint.unwrap_or(self.next_offset()),
        };
        if new_start < self.start.log_start_offset {
            return Err(LogError::Invalid(format!(
                "purging to {upto} would move the log start offset back from {} to {new_start}",
                self.start.log_start_offset
            )));
        }
        let r = self.purge_unchecked(upto, new_start);
        self.guard(r)?;
        if self.durable.is_none_or(|d| d.index < upto.index) {
            self.durable = Some(upto);
        }
        self.durable_next_offset = self.durable_next_offset.max(new_start);
        Ok(())
    }

    fn purge_unchecked(&mut self, upto: LogId, new_start: u64) -> Result<()> {
        let st = self.storage.clone();
        let ckpt = StartCheckpoint {
            last_purged: Some(upto),
            log_start_offset: new_start,
        };
        let path = self.dir.join(CHECKPOINT_FILE);
        write_atomic(st.as_ref(), &path, &ckpt.encode())
            .map_err(LogError::io("write checkpoint", &path))?;
        self.start = ckpt;
        self.drop_purged_segments()
    }

    /// Deletes the segments that lie wholly at or below the purge point,
    /// keeping the invariant that every segment holds an unpurged entry.
    fn drop_purged_segments(&mut self) -> Result<()> {
        let Some(p) = self.start.last_purged else {
            return Ok(());
        };
        let n = self
            .segments
            .iter()
            .take_while(|s| s.last_log_id.is_some_and(|l| l.index <= p.index))
            .count();
        if n > 0 {
            for s in self.segments.drain(..n) {
                s.remove_files(self.storage.as_ref())?;
            }
            self.storage
                .sync_dir(&self.dir)
                .map_err(LogError::io("fsync directory", &self.dir))?;
        }
        Ok(())
    }

    /// Seals the active segment if it holds records and is older than
    /// `segment_ms`, so time retention can delete it on a quiet partition.
    pub fn roll_if_due(&mut self) -> Result<bool> {
        self.check_writable()?;
        let now = self.clock.now_ms();
        let st = self.storage.clone();
        let Some(seg) = self.segments.last_mut() else {
            return Ok(false);
        };
        if seg.sealed
            || seg.record_count == 0
            || now.saturating_sub(seg.header.created_ms) < self.config.segment_ms
        {
            return Ok(false);
        }
        let r = seg.seal(st.as_ref()).map(|()| true);
        self.guard(r)
    }

    /// How many front segments retention (policy and hold) would delete
    /// now, the bytes the hold keeps, and the views it decided on.
    fn retention_decision(&self) -> (usize, u64, Vec<RetentionView>) {
        let now = self.clock.now_ms();
        let views: Vec<RetentionView> = self
            .segments
            .iter()
            .map(|s| RetentionView {
                size_bytes: s.size_bytes(),
                max_timestamp_ms: s.max_timestamp_ms,
                sealed: s.sealed,
            })
            .collect();
        let n = segments_to_delete(
            &views,
            self.config.retention_bytes,
            self.config.retention_ms,
            now,
        );
        let next: Vec<u64> = self.segments.iter().map(|s| s.next_offset).collect();
        let (n, held) = apply_hold(&views, &next, n, self.hold, now);
        (n, held, views)
    }

    fn retention_candidates(&self) -> (usize, Vec<RetentionView>) {
        let (n, _, views) = self.retention_decision();
        (n, views)
    }

    /// Sets (or clears) the consumer hold retention respects from now on.
    pub fn set_retention_hold(&mut self, hold: Option<RetentionHold>) {
        self.hold = hold;
    }

    /// Bytes retention would delete now but keeps for the hold.
    pub fn held_bytes(&self) -> u64 {
        self.retention_decision().1
    }

    /// Where retention would cut the log now, without cutting it: the last
    /// log id of the newest segment it would delete and the offset after
    /// it (the new log start). A replicated log proposes this as a command
    /// so every replica trims at the same point.
    pub fn retention_point(&self) -> Option<(LogId, u64)> {
        let (n, _) = self.retention_candidates();
        let seg = self.segments.get(n.checked_sub(1)?)?;
        Some((seg.last_log_id?, seg.next_offset))
    }

    /// Applies the retention policy: rolls an aged active segment, then
    /// deletes the oldest sealed segments that are past `retention_ms` or
    /// beyond `retention_bytes`.
    pub fn enforce_retention(&mut self) -> Result<RetentionReport> {
        self.roll_if_due()?;
        let (n, views) = self.retention_candidates();
        let mut report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..Default::default()
        };
        if n == 0 {
            return Ok(report);
        }
        let Some(upto) = self.segments[n - 1].last_log_id else {
            unreachable!("sealed segments are never empty");
        };
        report.segments_deleted = n;
        report.bytes_deleted = views[..n].iter().map(|v| v.size_bytes).sum();
        self.purge(upto, None)?;
        report.log_start_offset = self.log_start_offset();
        tracing::info!(dir = %self.dir.display(), ?report, "retention deleted segments");
        Ok(report)
    }
}

fn remove_segment_files(st: &dyn Storage, dir: &Path, base: u64) -> Result<()> {
    for name in [
        index_file_name(base),
        time_index_file_name(base),
        log_file_name(base),
    ] {
        let p = dir.join(name);
        st.remove(&p)
            .map_err(LogError::io("remove segment file", &p))?;
    }
    Ok(())
}

/// Each segment must start where its predecessor ended, and the first one
/// no later than just after the purge point.
fn check_contiguous(segments: &[Segment], start: &StartCheckpoint) -> Result<()> {
    let gap = |s: &Segment, reason: String| LogError::Corrupt {
        path: s.log_path(),
        position: 0,
        offset: s.header.base_offset,
        reason,
    };
    if let (Some(first), Some(p)) = (segments.first(), start.last_purged)
        && first.header.base_index > p.index + 1
    {
        return Err(gap(
            first,
            format!(
                "first segment starts at index {} but the log was purged only up to {p}",
                first.header.base_index
            ),
        ));
    }
    for w in segments.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let a_last = a.last_log_id.map_or(0, |l| l.index);
        if b.header.base_index != a_last + 1 || b.header.base_offset != a.next_offset {
            return Err(gap(
                b,
                format!(
                    "segment starts at index {} offset {}, but its predecessor ends at index {a_last} offset {}",
                    b.header.base_index, b.header.base_offset, a.next_offset
                ),
            ));
        }
    }
    Ok(())
}
