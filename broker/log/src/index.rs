//! Sparse offset and time indexes of one segment: lookups and their file
//! encodings. Pure functions over data; the segment does the I/O.
//!
//! While a segment is active its indexes live only in memory (the segment is
//! scanned on open, bounded by `segment_bytes_max`). When it is sealed they
//! are written once, each file ending in a CRC, and the offset index file
//! also carries the segment's summary, so opening a partition reads the
//! small index files and never rescans a sealed segment.

use super::entry::LogId;
use super::error::FormatError;

/// One offset-index point: the entry at `position` has Raft index
/// `base_index + rel_index` and base offset `base_offset + rel_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the entry, relative to the segment's base offset.
    pub rel_offset: u32,
    /// Raft index of the entry, relative to the segment's base index.
    pub rel_index: u32,
    /// Byte position of the entry in the segment file.
    pub position: u32,
}

/// One time-index point: every batch before `position` in the segment has
/// a max timestamp below `max_timestamp_ms`, the max timestamp of the
/// segment up to and including the batch at `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp seen in the segment up to this batch.
    pub max_timestamp_ms: i64,
    /// Base offset of the batch, relative to the segment's base offset.
    pub rel_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// What a sealed segment's offset index file records about the segment, so
/// that opening it needs no scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Length of the `.log` file the index was built from.
    pub log_len: u64,
    /// Offset after the segment's last record.
    pub next_offset: u64,
    /// Log id of the segment's last entry.
    pub last_log_id: LogId,
    /// Entries in the segment.
    pub entry_count: u64,
    /// Records in the segment.
    pub record_count: u64,
    /// Largest record timestamp (`i64::MIN` if there are no records).
    pub max_timestamp_ms: i64,
}

/// Position to start scanning from to find the entry holding `rel_offset`:
/// the last index point at or below it (entries are in offset order, so
/// the batch holding the offset is at or after that point).
pub fn position_for_offset(index: &[IndexEntry], rel_offset: u32, start: u32) -> u32 {
    let n = index.partition_point(|e| e.rel_offset <= rel_offset);
    if n == 0 { start } else { index[n - 1].position }
}

/// Position to start scanning from to find the entry with `rel_index`.
pub fn position_for_index(index: &[IndexEntry], rel_index: u32, start: u32) -> u32 {
    let n = index.partition_point(|e| e.rel_index <= rel_index);
    if n == 0 { start } else { index[n - 1].position }
}

/// Position to start scanning from to find the first record with a
/// timestamp at or above `t`: the last point whose running max is below `t`
/// (every batch before it is entirely below `t`).
pub fn position_for_timestamp(index: &[TimeEntry], t: i64, start: u32) -> u32 {
    let n = index.partition_point(|e| e.max_timestamp_ms < t);
    if n == 0 { start } else { index[n - 1].position }
}

const INDEX_MAGIC: &[u8; 4] = b"STRI";
const TIME_INDEX_MAGIC: &[u8; 4] = b"STRT";
const INDEX_VERSION: u16 = 1;
const FILE_HEADER_LEN: usize = 8;
const SUMMARY_LEN: usize = 8 * 8;
const INDEX_ENTRY_LEN: usize = 12;
const TIME_ENTRY_LEN: usize = 16;
const CRC_LEN: usize = 4;

fn header(magic: &[u8; 4], out: &mut Vec<u8>) {
    out.extend_from_slice(magic);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
}

fn seal_crc(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Encodes a sealed segment's offset index file.
pub fn encode_index(summary: &SegmentSummary, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        FILE_HEADER_LEN + SUMMARY_LEN + entries.len() * INDEX_ENTRY_LEN + CRC_LEN,
    );
    header(INDEX_MAGIC, &mut out);
    for v in [
        summary.log_len,
        summary.next_offset,
        summary.last_log_id.term,
        summary.last_log_id.node,
        summary.last_log_id.index,
        summary.entry_count,
        summary.record_count,
        summary.max_timestamp_ms as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for e in entries {
        out.extend_from_slice(&e.rel_offset.to_le_bytes());
        out.extend_from_slice(&e.rel_index.to_le_bytes());
        out.extend_from_slice(&e.position.to_le_bytes());
    }
    seal_crc(&mut out);
    out
}

/// Encodes a sealed segment's time index file.
pub fn encode_time_index(entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER_LEN + entries.len() * TIME_ENTRY_LEN + CRC_LEN);
    header(TIME_INDEX_MAGIC, &mut out);
    for e in entries {
        out.extend_from_slice(&e.max_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&e.rel_offset.to_le_bytes());
        out.extend_from_slice(&e.position.to_le_bytes());
    }
    seal_crc(&mut out);
    out
}

/// Checks magic, version, CRC and that the body is whole `unit`s after
/// `fixed` bytes; returns the body.
fn checked_body<'a>(
    bytes: &'a [u8],
    magic: &[u8; 4],
    fixed: usize,
    unit: usize,
) -> Result<&'a [u8], FormatError> {
    if bytes.len() < FILE_HEADER_LEN + fixed + CRC_LEN {
        return Err(FormatError::TooShort {
            len: bytes.len(),
            min: FILE_HEADER_LEN + fixed + CRC_LEN,
        });
    }
    if &bytes[..4] != magic {
        return Err(FormatError::BadMagic("index"));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != INDEX_VERSION {
        return Err(FormatError::Version(version));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err(FormatError::Crc);
    }
    let body = &body[FILE_HEADER_LEN..];
    if !(body.len() - fixed).is_multiple_of(unit) {
        return Err(FormatError::PartialEntry);
    }
    Ok(body)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes an offset index file; `Err` says why it cannot be trusted.
pub fn decode_index(bytes: &[u8]) -> Result<(SegmentSummary, Vec<IndexEntry>), FormatError> {
    let body = checked_body(bytes, INDEX_MAGIC, SUMMARY_LEN, INDEX_ENTRY_LEN)?;
    let s = |i: usize| u64_at(body, i * 8);
    let summary = SegmentSummary {
        log_len: s(0),
        next_offset: s(1),
        last_log_id: LogId::new(s(2), s(3), s(4)),
        entry_count: s(5),
        record_count: s(6),
        max_timestamp_ms: s(7) as i64,
    };
    let entries: Vec<IndexEntry> = body[SUMMARY_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|c| IndexEntry {
            rel_offset: u32_at(c, 0),
            rel_index: u32_at(c, 4),
            position: u32_at(c, 8),
        })
        .collect();
    let ordered = entries.windows(2).all(|w| {
        w[0].rel_offset <= w[1].rel_offset
            && w[0].rel_index < w[1].rel_index
            && w[0].position < w[1].position
    });
    if !ordered
        || entries
            .last()
            .is_some_and(|e| u64::from(e.position) >= summary.log_len)
    {
        return Err(FormatError::Unordered("index"));
    }
    Ok((summary, entries))
}

/// Decodes a time index file; `Err` says why it cannot be trusted.
pub fn decode_time_index(bytes: &[u8]) -> Result<Vec<TimeEntry>, FormatError> {
    let body = checked_body(bytes, TIME_INDEX_MAGIC, 0, TIME_ENTRY_LEN)?;
    let entries: Vec<TimeEntry> = body
        .chunks_exact(TIME_ENTRY_LEN)
        .map(|c| TimeEntry {
            max_timestamp_ms: u64_at(c, 0) as i64,
            rel_offset: u32_at(c, 8),
            position: u32_at(c, 12),
        })
        .collect();
    let ordered = entries.windows(2).all(|w| {
        w[0].max_timestamp_ms < w[1].max_timestamp_ms
            && w[0].rel_offset <= w[1].rel_offset
            && w[0].position < w[1].position
    });
    if !ordered {
        return Err(FormatError::Unordered("time index"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ie(o: u32, i: u32, p: u32) -> IndexEntry {
        IndexEntry {
            rel_offset: o,
            rel_index: i,
            position: p,
        }
    }

    #[test]
    fn lookups_pick_the_last_point_at_or_below() {
        // Entries at 40 (offset 0), 100 (a blank at offset 10), 200 (batch at 10), 300 (offset 25).
        let idx = [ie(10, 3, 100), ie(10, 4, 200), ie(25, 7, 300)];
        assert_eq!(position_for_offset(&idx, 5, 40), 40);
        // Offset 10 is in the batch at 200; starting at 200 is safe because
        // entries with base offset <= 10 all come at or before it.
        assert_eq!(position_for_offset(&idx, 10, 40), 200);
        assert_eq!(position_for_offset(&idx, 24, 40), 200);
        assert_eq!(position_for_offset(&idx, 99, 40), 300);
        assert_eq!(position_for_index(&idx, 2, 40), 40);
        assert_eq!(position_for_index(&idx, 3, 40), 100);
        assert_eq!(position_for_index(&idx, 6, 40), 200);
        let t = [
            TimeEntry {
                max_timestamp_ms: 50,
                rel_offset: 0,
                position: 40,
            },
            TimeEntry {
                max_timestamp_ms: 90,
                rel_offset: 10,
                position: 200,
            },
        ];
        assert_eq!(position_for_timestamp(&t, 50, 40), 40);
        assert_eq!(position_for_timestamp(&t, 51, 40), 40);
        assert_eq!(position_for_timestamp(&t, 91, 40), 200);
    }

    #[test]
    fn index_files_round_trip_and_reject_damage() {
        let summary = SegmentSummary {
            log_len: 1000,
            next_offset: 77,
            last_log_id: LogId::new(2, 1, 50),
            entry_count: 12,
            record_count: 70,
            max_timestamp_ms: -5,
        };
        let entries = vec![ie(0, 0, 40), ie(10, 4, 500)];
        let bytes = encode_index(&summary, &entries);
        assert_eq!(decode_index(&bytes).unwrap(), (summary, entries));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_index(&b).is_err(), "flip at byte {i} undetected");
        }
        assert!(decode_index(&bytes[..bytes.len() - 1]).is_err());
        let t = vec![TimeEntry {
            max_timestamp_ms: 3,
            rel_offset: 0,
            position: 40,
        }];
        let tb = encode_time_index(&t);
        assert_eq!(decode_time_index(&tb).unwrap(), t);
        assert!(
            decode_time_index(&bytes).is_err(),
            "an offset index is not a time index"
        );
    }
}
