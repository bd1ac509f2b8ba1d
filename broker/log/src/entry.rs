//! Log entries: the unit the partition log stores, keyed for Raft.
//!
//! Pure encoding and decoding of one entry (a 44-byte header and a payload),
//! no I/O. An entry carries its Raft log id and the partition offset it
//! starts at; only [`Payload::Batch`] entries take offsets, the others
//! (Raft blank and membership entries, replicated commands) record the next
//! offset without consuming any, so offsets stay dense.
//!
//! The header CRC covers the header and, for a batch, the batch's own length
//! and CRC fields; the batch CRC covers the rest of the batch. So one CRC
//! pass over the records verifies an entry, and a batch is stored exactly as
//! the producer encoded it. For other payloads the entry CRC covers the
//! whole payload.

use bytes::Bytes;
use strata_proto::batch::{self, BatchError, BatchLimits, VerifiedBatch};

/// Size of the fixed entry header.
pub const ENTRY_HEADER_LEN: usize = 44;
/// Bytes of a batch payload covered by the entry CRC (its length and CRC fields).
const BATCH_PREFIX_COVERED: usize = batch::CRC_COVERS_FROM;

const _: () = assert!(ENTRY_HEADER_LEN == 4 + 4 + 1 + 3 + 8 + 8 + 8 + 8);

/// A Raft log id: the term and node of the leader that created the entry,
/// and the entry's index in the partition's Raft log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LogId {
    /// Leader term.
    pub term: u64,
    /// Leader node id.
    pub node: u64,
    /// Raft log index.
    pub index: u64,
}

impl LogId {
    /// A log id.
    pub fn new(term: u64, node: u64, index: u64) -> Self {
        LogId { term, node, index }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "T{}-N{}.{}", self.term, self.node, self.index)
    }
}

/// What kind of payload an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A Raft blank (no-op) entry.
    Blank = 0,
    /// A record batch; the only kind that takes offsets.
    Batch = 1,
    /// A Raft membership change, opaque to the log.
    Membership = 2,
    /// A replicated command (e.g. trim the prefix), opaque to the log.
    Command = 3,
}

impl EntryKind {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => EntryKind::Blank,
            1 => EntryKind::Batch,
            2 => EntryKind::Membership,
            3 => EntryKind::Command,
            _ => return None,
        })
    }
}

/// The payload of an entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// No payload.
    Blank,
    /// A verified record batch, stored verbatim.
    Batch(VerifiedBatch),
    /// Serialized membership, opaque to the log.
    Membership(Bytes),
    /// Serialized command, opaque to the log.
    Command(Bytes),
}

impl Payload {
    /// The kind code stored on disk.
    pub fn kind(&self) -> EntryKind {
        match self {
            Payload::Blank => EntryKind::Blank,
            Payload::Batch(_) => EntryKind::Batch,
            Payload::Membership(_) => EntryKind::Membership,
            Payload::Command(_) => EntryKind::Command,
        }
    }

    /// The payload bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Blank => &[],
            Payload::Batch(b) => b.bytes(),
            Payload::Membership(b) | Payload::Command(b) => b,
        }
    }

    /// Records the payload takes offsets for.
    pub fn record_count(&self) -> u32 {
        match self {
            Payload::Batch(b) => b.record_count(),
            _ => 0,
        }
    }
}

/// An entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    /// Its Raft log id.
    pub log_id: LogId,
    /// Its payload.
    pub payload: Payload,
}

/// An entry read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its Raft log id.
    pub log_id: LogId,
    /// The offset of its first record, or for a non-batch entry the offset
    /// the next record will take.
    pub base_offset: u64,
    /// Its kind.
    pub kind: EntryKind,
    /// Its payload, exactly as appended.
    pub payload: Bytes,
}

/// The decoded header of a stored entry, with what the log needs to know
/// about a batch payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Its Raft log id.
    pub log_id: LogId,
    /// Its kind.
    pub kind: EntryKind,
    /// See [`Entry::base_offset`].
    pub base_offset: u64,
    /// Records in a batch payload, 0 otherwise.
    pub record_count: u32,
    /// Largest record timestamp of a batch payload.
    pub max_timestamp_ms: Option<i64>,
    /// Encoded length, header included.
    pub len: u32,
}

impl EntryMeta {
    /// The offset after this entry's records.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Why bytes do not hold a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The buffer ends before the entry does; `needed` is its full length
    /// when the header could be read.
    #[error("entry is incomplete: {available} of {needed:?} bytes")]
    Incomplete {
        /// Bytes available.
        available: usize,
        /// Bytes the entry needs, when known.
        needed: Option<usize>,
    },
    /// The bytes are not a valid entry.
    #[error("{0}")]
    Corrupt(String),
    /// The batch payload fails its own checks.
    #[error("batch payload: {0}")]
    Batch(#[from] BatchError),
}

/// Encoded size of an entry with `payload`.
pub fn encoded_len(payload: &Payload) -> usize {
    ENTRY_HEADER_LEN + payload.bytes().len()
}

fn entry_crc(header: &[u8], payload: &[u8], kind: EntryKind) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..ENTRY_HEADER_LEN]);
    match kind {
        EntryKind::Batch => h.update(&payload[..BATCH_PREFIX_COVERED.min(payload.len())]),
        _ => h.update(payload),
    }
    h.finalize()
}

/// Appends the encoding of an entry to `out`.
pub fn encode(log_id: LogId, base_offset: u64, payload: &Payload, out: &mut Vec<u8>) {
    let body = payload.bytes();
    let len = ENTRY_HEADER_LEN + body.len();
    let len32 = u32::try_from(len).unwrap_or_else(|_| {
        panic!("entry of {len} bytes: the caller must enforce batch_bytes_max")
    });
    let start = out.len();
    out.extend_from_slice(&len32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.push(payload.kind() as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&log_id.term.to_le_bytes());
    out.extend_from_slice(&log_id.node.to_le_bytes());
    out.extend_from_slice(&log_id.index.to_le_bytes());
    out.extend_from_slice(&base_offset.to_le_bytes());
    debug_assert_eq!(out.len() - start, ENTRY_HEADER_LEN);
    let crc = entry_crc(&out[start..], body, payload.kind());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads only the length field of the entry at the start of `buf`.
pub fn peek_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| u32_at(buf, 0) as usize)
}

/// Decodes and fully verifies the entry at the start of `buf` (header CRC,
/// and for a batch the batch header and CRC). `entry_bytes_max` bounds the
/// length field, so a damaged length is reported as corruption rather than
/// as a request for gigabytes.
pub fn decode(buf: &[u8], entry_bytes_max: usize) -> Result<EntryMeta, EntryError> {
    if buf.len() < ENTRY_HEADER_LEN {
        return Err(EntryError::Incomplete {
            available: buf.len(),
            needed: None,
        });
    }
    let len = u32_at(buf, 0) as usize;
    if len < ENTRY_HEADER_LEN || len > entry_bytes_max {
        return Err(EntryError::Corrupt(format!(
            "entry length {len} outside [{ENTRY_HEADER_LEN}, {entry_bytes_max}]"
        )));
    }
    if buf.len() < len {
        return Err(EntryError::Incomplete {
            available: buf.len(),
            needed: Some(len),
        });
    }
    let kind = EntryKind::from_code(buf[8])
        .ok_or_else(|| EntryError::Corrupt(format!("unknown entry kind {}", buf[8])))?;
    let payload = &buf[ENTRY_HEADER_LEN..len];
    if kind == EntryKind::Batch && payload.len() < BATCH_PREFIX_COVERED {
        return Err(EntryError::Corrupt(
            "batch entry shorter than a batch header".into(),
        ));
    }
    let stored = u32_at(buf, 4);
    let computed = entry_crc(buf, payload, kind);
    if stored != computed {
        return Err(EntryError::Corrupt(format!(
            "entry CRC mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}"
        )));
    }
    if buf[9..12] != [0, 0, 0] {
        return Err(EntryError::Corrupt(
            "reserved entry bytes are not zero".into(),
        ));
    }
    let log_id = LogId::new(u64_at(buf, 12), u64_at(buf, 20), u64_at(buf, 28));
    let base_offset = u64_at(buf, 36);
    let (record_count, max_timestamp_ms) = match kind {
        EntryKind::Batch => {
            let h = batch::verify_slice(payload, &BatchLimits::UNLIMITED)?;
            (h.record_count, Some(h.max_timestamp_ms))
        }
        _ => (0, None),
    };
    if base_offset.checked_add(u64::from(record_count)).is_none() {
        return Err(EntryError::Corrupt(format!(
            "base offset {base_offset} overflows"
        )));
    }
    Ok(EntryMeta {
        log_id,
        kind,
        base_offset,
        record_count,
        max_timestamp_ms,
        len: len as u32,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use strata_proto::{Compression, Record, encode_batch, verify_batch};

    fn batch_payload(n: usize) -> Payload {
        let recs: Vec<Record> = (0..n)
            .map(|i| Record {
                key: None,
                value: Bytes::from(vec![i as u8; 10]),
                headers: vec![],
                timestamp_ms: 100 + i as i64,
            })
            .collect();
        let mut out = Vec::new();
        encode_batch(&recs, Compression::None, None, &mut out).unwrap();
        Payload::Batch(verify_batch(Bytes::from(out), &BatchLimits::default()).unwrap())
    }

    #[test]
    fn round_trip_every_kind() {
        for p in [
            Payload::Blank,
            batch_payload(3),
            Payload::Membership(Bytes::from_static(b"{voters:[1,2,3]}")),
            Payload::Command(Bytes::from_static(b"trim")),
        ] {
            let mut out = Vec::new();
            encode(LogId::new(3, 2, 77), 1000, &p, &mut out);
            assert_eq!(out.len(), encoded_len(&p));
            let m = decode(&out, 1 << 20).unwrap();
            assert_eq!(m.log_id, LogId::new(3, 2, 77));
            assert_eq!(m.kind, p.kind());
            assert_eq!(m.base_offset, 1000);
            assert_eq!(m.record_count, p.record_count());
            assert_eq!(m.len as usize, out.len());
            assert_eq!(&out[ENTRY_HEADER_LEN..], p.bytes());
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        for p in [
            Payload::Blank,
            batch_payload(2),
            Payload::Command(Bytes::from_static(b"xyz")),
        ] {
            let mut out = Vec::new();
            encode(LogId::new(1, 1, 5), 9, &p, &mut out);
            for bit in 0..out.len() * 8 {
                let mut b = out.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode(&b, 1 << 20).is_err(),
                    "bit {bit} of {:?} undetected",
                    p.kind()
                );
            }
        }
    }

    #[test]
    fn truncated_entry_is_incomplete_not_corrupt() {
        let mut out = Vec::new();
        encode(LogId::new(1, 1, 5), 9, &batch_payload(2), &mut out);
        assert!(matches!(
            decode(&out[..out.len() - 1], 1 << 20),
            Err(EntryError::Incomplete { needed: Some(n), .. }) if n == out.len()
        ));
        assert!(matches!(
            decode(&out[..10], 1 << 20),
            Err(EntryError::Incomplete { needed: None, .. })
        ));
    }
}
