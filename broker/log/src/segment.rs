//! One segment: a `<base offset>.log` file of entries, with its sparse
//! offset index (`.index`) and time index (`.timeindex`).
//!
//! A segment is *active* (appended to; indexes in memory, rebuilt by a scan
//! on open) or *sealed* (immutable; indexes written to their files with a
//! CRC, and trusted on open). This module owns the file layout of a segment,
//! scanning and reading its entries, and sealing; the partition log decides
//! when to roll, truncate and delete. It knows nothing about Raft beyond the
//! log ids stored in entries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::entry::{self, ENTRY_HEADER_LEN, EntryError, EntryMeta, LogId, Payload};
use super::error::{FormatError, LogError, Result};
use super::index::{self, IndexEntry, SegmentSummary, TimeEntry};
use super::storage::{Storage, StorageFile, read_all, write_atomic};

/// Size of the header at the start of every `.log` file.
pub const SEGMENT_HEADER_LEN: usize = 40;
const SEGMENT_MAGIC: &[u8; 4] = b"STRS";
const SEGMENT_VERSION: u16 = 1;
/// Bytes read per I/O when scanning or reading forward.
const READ_CHUNK: usize = 256 * 1024;

/// The header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Offset of the first record the segment can hold.
    pub base_offset: u64,
    /// Raft index of the segment's first entry.
    pub base_index: u64,
    /// Wall-clock creation time, for rolling by age.
    pub created_ms: i64,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[..4].copy_from_slice(SEGMENT_MAGIC);
        b[4..6].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.base_index.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(FormatError::TooShort {
                len: b.len(),
                min: SEGMENT_HEADER_LEN,
            });
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let crc = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
        if crc32fast::hash(&b[..32]) != crc {
            return Err(FormatError::Crc);
        }
        if &b[..4] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic("segment"));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != SEGMENT_VERSION {
            return Err(FormatError::Version(version));
        }
        Ok(SegmentHeader {
            base_offset: u64_at(8),
            base_index: u64_at(16),
            created_ms: u64_at(24) as i64,
        })
    }
}

/// `<base offset, 20 digits>.log`.
pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}
/// `<base offset, 20 digits>.index`.
pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}
/// `<base offset, 20 digits>.timeindex`.
pub fn time_index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.timeindex")
}

/// Splits `<20 digits>.<ext>` into base offset and extension.
pub fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// One segment, in memory.
#[derive(Debug)]
pub struct Segment {
    pub(crate) header: SegmentHeader,
    dir: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Bytes in the file (header included), counting entries still in `pending`.
    pub(crate) size: u64,
    /// Encoded entries not yet written to the file.
    pending: Vec<u8>,
    pub(crate) next_offset: u64,
    pub(crate) last_log_id: Option<LogId>,
    pub(crate) entry_count: u64,
    pub(crate) record_count: u64,
    pub(crate) max_timestamp_ms: Option<i64>,
    index: Vec<IndexEntry>,
    time_index: Vec<TimeEntry>,
    bytes_since_index: u64,
    bytes_since_time_index: u64,
    index_interval_bytes: u64,
    pub(crate) sealed: bool,
}

/// How a scan of a segment ended.
#[derive(Debug)]
pub struct ScanEnd {
    /// Length of the file when it was scanned.
    pub file_len: u64,
    /// Bytes of the file that hold valid entries (header included).
    pub valid_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

impl Segment {
    fn path_of(&self, name: String) -> PathBuf {
        self.dir.join(name)
    }
    /// Path of the `.log` file.
    pub fn log_path(&self) -> PathBuf {
        self.path_of(log_file_name(self.header.base_offset))
    }
    fn index_path(&self) -> PathBuf {
        self.path_of(index_file_name(self.header.base_offset))
    }
    fn time_index_path(&self) -> PathBuf {
        self.path_of(time_index_file_name(self.header.base_offset))
    }

    fn empty(
        dir: &Path,
        header: SegmentHeader,
        file: Arc<dyn StorageFile>,
        index_interval_bytes: u32,
    ) -> Self {
        Segment {
            header,
            dir: dir.to_path_buf(),
            file,
            size: SEGMENT_HEADER_LEN as u64,
            pending: Vec::new(),
            next_offset: header.base_offset,
            last_log_id: None,
            entry_count: 0,
            record_count: 0,
            max_timestamp_ms: None,
            index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
            bytes_since_time_index: 0,
            index_interval_bytes: u64::from(index_interval_bytes),
            sealed: false,
        }
    }

    /// Creates a new, empty active segment file. Its creation becomes
    /// durable with the caller's next directory sync.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        header: SegmentHeader,
        index_interval_bytes: u32,
    ) -> Result<Self> {
        let path = dir.join(log_file_name(header.base_offset));
        let file = storage
            .open(&path, true)
            .map_err(LogError::io("create segment", &path))?;
        file.set_len(0)
            .map_err(LogError::io("create segment", &path))?;
        let mut seg = Segment::empty(dir, header, file, index_interval_bytes);
        seg.pending.extend_from_slice(&header.encode());
        Ok(seg)
    }

    /// Opens an existing segment file: trusts its index files when they are
    /// intact and match the file, otherwise scans it. Returns the segment
    /// and, when it was scanned, how the scan ended.
    pub fn open(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: u64,
        index_interval_bytes: u32,
        entry_bytes_max: usize,
    ) -> Result<(Self, Option<ScanEnd>), (PathBuf, String)> {
        let path = dir.join(log_file_name(base_offset));
        let fail = |reason: String| (path.clone(), reason);
        let file = storage
            .open(&path, false)
            .map_err(|e| fail(e.to_string()))?;
        let len = file.len().map_err(|e| fail(e.to_string()))?;
        let mut hb = vec![0u8; SEGMENT_HEADER_LEN.min(len as usize)];
        file.read_exact_at(&mut hb, 0)
            .map_err(|e| fail(e.to_string()))?;
        let header =
            SegmentHeader::decode(&hb).map_err(|e| fail(format!("segment header: {e}")))?;
        if header.base_offset != base_offset {
            return Err(fail(format!(
                "header says base offset {} but the file is named for {base_offset}",
                header.base_offset
            )));
        }
        let mut seg = Segment::empty(dir, header, file, index_interval_bytes);
        if let Some(()) = seg.load_indexes(storage, len) {
            return Ok((seg, None));
        }
        let end = seg.scan(len, entry_bytes_max);
        Ok((seg, Some(end)))
    }

    /// Loads the sealed index files if both are intact and describe a file
    /// of exactly `len` bytes.
    fn load_indexes(&mut self, storage: &dyn Storage, len: u64) -> Option<()> {
        let ib = read_all(storage, &self.index_path()).ok()??;
        let tb = read_all(storage, &self.time_index_path()).ok()??;
        let (summary, index) = index::decode_index(&ib).ok()?;
        let time_index = index::decode_time_index(&tb).ok()?;
        let h = &self.header;
        let plausible = summary.log_len == len
            && summary.entry_count > 0
            && summary.next_offset >= h.base_offset
            && summary.last_log_id.index >= h.base_index
            && summary.last_log_id.index - h.base_index <= u64::from(u32::MAX)
            && time_index
                .last()
                .is_none_or(|t| u64::from(t.position) < len);
        if !plausible {
            return None;
        }
        self.size = len;
        self.pending.clear();
        self.next_offset = summary.next_offset;
        self.last_log_id = Some(summary.last_log_id);
        self.entry_count = summary.entry_count;
        self.record_count = summary.record_count;
        self.max_timestamp_ms = (summary.record_count > 0).then_some(summary.max_timestamp_ms);
        self.index = index;
        self.time_index = time_index;
        self.sealed = true;
        Some(())
    }

    /// Rebuilds the in-memory state by reading every entry, stopping at the
    /// first one that is incomplete, fails its checks, or does not follow
    /// its predecessor (Raft index + 1, base offset = next offset).
    fn scan(&mut self, len: u64, entry_bytes_max: usize) -> ScanEnd {
        self.size = len;
        self.pending.clear();
        let mut cursor = Cursor::new(self, SEGMENT_HEADER_LEN as u64, entry_bytes_max);
        let mut metas = Vec::new();
        let mut stopped = None;
        let mut next_offset = self.header.base_offset;
        let mut next_index = self.header.base_index;
        loop {
            match cursor.next_entry() {
                Ok(None) => break,
                Ok(Some((meta, position, _))) => {
                    if meta.log_id.index != next_index || meta.base_offset != next_offset {
                        stopped = Some(format!(
                            "entry at byte {position} is {} with base offset {}, expected index {next_index} and offset {next_offset}",
                            meta.log_id, meta.base_offset
                        ));
                        break;
                    }
                    next_index += 1;
                    next_offset = meta.next_offset();
                    metas.push((meta, position));
                }
                Err(e) => {
                    stopped = Some(e.to_string());
                    break;
                }
            }
        }
        let valid_len = metas
            .last()
            .map_or(SEGMENT_HEADER_LEN as u64, |(m, p)| p + u64::from(m.len));
        self.size = SEGMENT_HEADER_LEN as u64;
        for (meta, position) in &metas {
            debug_assert_eq!(*position, self.size);
            self.note_entry(meta);
        }
        ScanEnd {
            file_len: len,
            valid_len,
            stopped,
        }
    }

    /// Records an entry written (or found) at the current end.
    fn note_entry(&mut self, meta: &EntryMeta) {
        // Rolling keeps these within u32 (see `fits`); a segment of only
        // non-batch entries cannot roll, and 4 GiB of those is a broken
        // invariant, not an operating condition.
        assert!(
            self.size <= u64::from(u32::MAX)
                && meta.next_offset() - self.header.base_offset <= u64::from(u32::MAX)
                && meta.log_id.index - self.header.base_index <= u64::from(u32::MAX),
            "segment {} outgrew its u32 relative fields",
            self.header.base_offset
        );
        let position = self.size as u32;
        let rel_offset = (meta.base_offset - self.header.base_offset) as u32;
        if self.entry_count > 0 && self.bytes_since_index >= self.index_interval_bytes {
            self.index.push(IndexEntry {
                rel_offset,
                rel_index: (meta.log_id.index - self.header.base_index) as u32,
                position,
            });
            self.bytes_since_index = 0;
        }
        if let Some(ts) = meta.max_timestamp_ms {
            let new_max = self.max_timestamp_ms.is_none_or(|m| ts > m);
            let due = self.time_index.is_empty()
                || self.bytes_since_time_index >= self.index_interval_bytes;
            if new_max && due {
                self.time_index.push(TimeEntry {
                    max_timestamp_ms: ts,
                    rel_offset,
                    position,
                });
                self.bytes_since_time_index = 0;
            }
            self.max_timestamp_ms = Some(self.max_timestamp_ms.map_or(ts, |m| m.max(ts)));
        }
        self.bytes_since_index += u64::from(meta.len);
        self.bytes_since_time_index += u64::from(meta.len);
        self.size += u64::from(meta.len);
        self.entry_count += 1;
        self.record_count += u64::from(meta.record_count);
        self.next_offset = meta.next_offset();
        self.last_log_id = Some(meta.log_id);
    }

    /// Whether an entry of `len` bytes taking the log to `next_offset` and
    /// Raft index `index` still fits the relative (`u32`) index fields and
    /// the size limit.
    pub fn fits(&self, len: usize, next_offset: u64, index: u64, segment_bytes_max: u64) -> bool {
        self.size + len as u64 <= segment_bytes_max
            && next_offset - self.header.base_offset <= u64::from(u32::MAX)
            && index - self.header.base_index <= u64::from(u32::MAX)
    }

    /// Encodes an entry at the end of the segment (buffered until
    /// [`Self::flush`]).
    pub fn push(&mut self, log_id: LogId, payload: &Payload) -> EntryMeta {
        assert!(
            !self.sealed,
            "append to sealed segment {}",
            self.header.base_offset
        );
        let meta = EntryMeta {
            log_id,
            kind: payload.kind(),
            base_offset: self.next_offset,
            record_count: payload.record_count(),
            max_timestamp_ms: match payload {
                Payload::Batch(b) => Some(b.header().max_timestamp_ms),
                _ => None,
            },
            len: entry::encoded_len(payload) as u32,
        };
        entry::encode(log_id, meta.base_offset, payload, &mut self.pending);
        self.note_entry(&meta);
        meta
    }

    /// Writes buffered entries to the file (not yet durable).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let position = self.size - self.pending.len() as u64;
        self.file
            .write_all_at(&self.pending, position)
            .map_err(LogError::io("write segment", self.log_path()))?;
        self.pending.clear();
        Ok(())
    }

    /// The open file, for an fsync run outside the log's lock.
    pub fn file_handle(&self) -> Arc<dyn StorageFile> {
        self.file.clone()
    }

    /// Makes the segment's bytes durable.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file
            .sync_data()
            .map_err(LogError::io("fsync segment", self.log_path()))
    }

    /// Seals the segment: fsyncs it and writes both index files atomically.
    /// A crash part-way leaves the segment active (no valid index), which
    /// the next open handles by scanning it.
    pub fn seal(&mut self, storage: &dyn Storage) -> Result<()> {
        assert!(self.entry_count > 0, "sealing an empty segment");
        self.sync()?;
        let summary = SegmentSummary {
            log_len: self.size,
            next_offset: self.next_offset,
            last_log_id: self.last_log_id.unwrap_or_default(),
            entry_count: self.entry_count,
            record_count: self.record_count,
            max_timestamp_ms: self.max_timestamp_ms.unwrap_or(i64::MIN),
        };
        let tpath = self.time_index_path();
        write_atomic(storage, &tpath, &index::encode_time_index(&self.time_index))
            .map_err(LogError::io("write time index", &tpath))?;
        let ipath = self.index_path();
        write_atomic(storage, &ipath, &index::encode_index(&summary, &self.index))
            .map_err(LogError::io("write index", &ipath))?;
        self.sealed = true;
        Ok(())
    }

    /// Removes the index files, making the segment active again (before a
    /// truncation rewrites its tail).
    pub fn unseal(&mut self, storage: &dyn Storage) -> Result<()> {
        for p in [self.index_path(), self.time_index_path()] {
            storage
                .remove(&p)
                .map_err(LogError::io("remove index", &p))?;
        }
        storage
            .sync_dir(&self.dir)
            .map_err(LogError::io("fsync directory", &self.dir))?;
        self.sealed = false;
        Ok(())
    }

    /// Truncates the file to `len` bytes, durably, and rebuilds the
    /// in-memory state from what remains.
    pub fn truncate_to(&mut self, len: u64, entry_bytes_max: usize) -> Result<()> {
        assert!(!self.sealed, "truncating a sealed segment");
        self.flush()?;
        let path = self.log_path();
        self.file
            .set_len(len)
            .map_err(LogError::io("truncate segment", &path))?;
        self.file
            .sync_data()
            .map_err(LogError::io("fsync segment", &path))?;
        let interval = self.index_interval_bytes as u32;
        let file = self.file.clone();
        *self = Segment::empty(&self.dir.clone(), self.header, file, interval);
        let end = self.scan(len, entry_bytes_max);
        if let Some(reason) = end.stopped {
            return Err(LogError::Corrupt {
                path,
                position: end.valid_len,
                offset: self.next_offset,
                reason,
            });
        }
        Ok(())
    }

    /// Removes the segment's files (index files first, so a crash never
    /// leaves an index describing a missing log). Durable after the caller
    /// syncs the directory.
    pub fn remove_files(&self, storage: &dyn Storage) -> Result<()> {
        for p in [self.index_path(), self.time_index_path(), self.log_path()] {
            storage
                .remove(&p)
                .map_err(LogError::io("remove segment file", &p))?;
        }
        Ok(())
    }

    /// Where to start reading to find the entry holding `offset`.
    pub fn position_for_offset(&self, offset: u64) -> u64 {
        let rel = offset
            .saturating_sub(self.header.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        u64::from(index::position_for_offset(
            &self.index,
            rel,
            SEGMENT_HEADER_LEN as u32,
        ))
    }

    /// Where to start reading to find the entry with Raft index `raft_index`.
    pub fn position_for_index(&self, raft_index: u64) -> u64 {
        let rel = raft_index
            .saturating_sub(self.header.base_index)
            .min(u64::from(u32::MAX)) as u32;
        u64::from(index::position_for_index(
            &self.index,
            rel,
            SEGMENT_HEADER_LEN as u32,
        ))
    }

    /// Where to start reading to find the first record at or after `t`.
    pub fn position_for_timestamp(&self, t: i64) -> u64 {
        u64::from(index::position_for_timestamp(
            &self.time_index,
            t,
            SEGMENT_HEADER_LEN as u32,
        ))
    }

    /// A cursor over entries from `position`.
    pub fn cursor(&self, position: u64, entry_bytes_max: usize) -> Cursor<'_> {
        debug_assert!(self.pending.is_empty(), "read with unflushed entries");
        Cursor::new(self, position, entry_bytes_max)
    }

    /// Size of the file in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Number of sparse offset-index points (for inspection and tests).
    pub fn index_points(&self) -> usize {
        self.index.len()
    }
}

/// Reads entries forward from a position, in chunks, verifying each.
pub struct Cursor<'a> {
    seg: &'a Segment,
    position: u64,
    buf: Bytes,
    buf_start: u64,
    entry_bytes_max: usize,
    chunk: usize,
}

impl<'a> Cursor<'a> {
    fn new(seg: &'a Segment, position: u64, entry_bytes_max: usize) -> Self {
        Cursor {
            seg,
            position,
            buf: Bytes::new(),
            buf_start: position,
            entry_bytes_max,
            chunk: READ_CHUNK,
        }
    }

    /// Reads ahead in chunks of about `bytes` (at least the default chunk),
    /// so a large fetch takes few reads.
    pub fn with_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(READ_CHUNK);
        self
    }

    fn refill(&mut self, at_least: usize) -> Result<()> {
        let end = self.seg.size;
        let want = at_least.max(self.chunk) as u64;
        let len = want.min(end - self.position) as usize;
        let mut buf = vec![0u8; len];
        self.seg
            .file
            .read_exact_at(&mut buf, self.position)
            .map_err(LogError::io("read segment", self.seg.log_path()))?;
        self.buf = Bytes::from(buf);
        self.buf_start = self.position;
        Ok(())
    }

    fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.seg.log_path(),
            position: self.position,
            offset: self.seg.header.base_offset,
            reason,
        }
    }

    /// The next entry: its metadata, its position, and its full encoding.
    pub fn next_entry(&mut self) -> Result<Option<(EntryMeta, u64, Bytes)>> {
        if self.position >= self.seg.size {
            return Ok(None);
        }
        loop {
            let rel = (self.position - self.buf_start) as usize;
            let avail = self.buf.get(rel..).unwrap_or(&[]);
            match entry::decode(avail, self.entry_bytes_max) {
                Ok(meta) => {
                    let position = self.position;
                    let bytes = self.buf.slice(rel..rel + meta.len as usize);
                    self.position += u64::from(meta.len);
                    return Ok(Some((meta, position, bytes)));
                }
                Err(EntryError::Incomplete { needed, .. }) => {
                    // A first look may see only part of the header (and so
                    // ask for the header); the header then tells the whole
                    // entry's length, which may exceed a chunk. Refill until
                    // the buffer holds what the decoder needs: each round
                    // asks for more, so this ends.
                    let need = needed.unwrap_or(ENTRY_HEADER_LEN);
                    if self.position + need as u64 > self.seg.size {
                        return Err(self.corrupt(format!(
                            "entry of {need} bytes runs past the segment's end ({} bytes)",
                            self.seg.size
                        )));
                    }
                    if avail.len() >= need {
                        return Err(self.corrupt(format!(
                            "entry reported incomplete with {} of {need} bytes present",
                            avail.len()
                        )));
                    }
                    self.refill(need)?;
                }
                Err(e) => {
                    let mut err = self.corrupt(e.to_string());
                    if let (LogError::Corrupt { offset, .. }, Some(b)) =
                        (&mut err, avail.get(36..44))
                    {
                        // The header's base offset, if the header is readable at all.
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        *offset = u64::from_le_bytes(a);
                    }
                    return Err(err);
                }
            }
        }
    }

    /// The position of the next entry.
    pub fn position(&self) -> u64 {
        self.position
    }
}
