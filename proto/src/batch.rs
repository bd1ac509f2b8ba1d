//! The record-batch codec: pure functions over bytes, no I/O.
//!
//! A batch is what a producer sends and what the broker stores verbatim: a
//! fixed 52-byte header followed by the (optionally LZ4-compressed) records.
//! The CRC32 in the header covers every byte after it, so the broker can
//! verify a batch with [`verify_batch`] without decompressing it, and a
//! consumer gets back exactly the bytes the producer wrote. The layout is
//! documented byte by byte in `docs/log-format.md`; this module is the one
//! place that reads or writes it.
//!
//! Offsets are deliberately absent from the batch: the broker assigns them
//! when it appends, and keeps them beside the batch in its own entry header,
//! so that storing a batch never means rewriting it.

use bytes::Bytes;

/// Batch format version written by this code.
pub const BATCH_FORMAT_VERSION: u8 = 1;
/// Size of the fixed batch header, in bytes.
pub const BATCH_HEADER_LEN: usize = 52;
/// Byte position of the CRC field; the CRC covers `[CRC_COVERS_FROM, batch_len)`.
pub const CRC_COVERS_FROM: usize = 8;
/// `producer_id` value meaning "not an idempotent producer".
pub const NO_PRODUCER_ID: u64 = u64::MAX;

const ATTR_COMPRESSION_MASK: u8 = 0b0000_0111;
/// Fixed part of one encoded record: length, timestamp delta, key length,
/// value length, header count.
const RECORD_FIXED_LEN: usize = 4 + 4 + 4 + 4 + 2;
/// Fixed part of one encoded record header: key length, value length.
const HEADER_FIXED_LEN: usize = 2 + 4;

const _: () = assert!(BATCH_HEADER_LEN == 52);
const _: () = assert!(CRC_COVERS_FROM == 8 && CRC_COVERS_FROM < BATCH_HEADER_LEN);

/// One record: what a producer publishes and a consumer receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Optional key (used for partitioning and, later, compaction).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers, in order; keys need not be unique.
    pub headers: Vec<Header>,
    /// Producer-assigned timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// One record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name (UTF-8, at most 65,535 bytes).
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// How the records of a batch are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as encoded.
    None,
    /// LZ4 block format; the uncompressed length is in the batch header.
    Lz4,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

/// Idempotent-producer identity carried by a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerInfo {
    /// Broker-assigned producer id (never [`NO_PRODUCER_ID`]).
    pub producer_id: u64,
    /// Producer epoch; a newer epoch fences older instances.
    pub producer_epoch: u16,
    /// Sequence number of the first record of the batch, per partition.
    pub base_sequence: u32,
}

/// Size limits applied when verifying or decoding untrusted batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest accepted encoded batch (header included).
    pub batch_bytes_max: usize,
    /// Largest accepted uncompressed record payload; bounds the memory a
    /// decoder allocates for a compressed batch.
    pub uncompressed_bytes_max: usize,
}

impl BatchLimits {
    /// No limit beyond the format's own (4 GiB); for re-verifying batches
    /// that were already admitted under some earlier limit.
    pub const UNLIMITED: BatchLimits = BatchLimits {
        batch_bytes_max: u32::MAX as usize,
        uncompressed_bytes_max: u32::MAX as usize,
    };
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            batch_bytes_max: 1024 * 1024,
            uncompressed_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// The decoded fixed header of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total encoded length of the batch, header included.
    pub batch_len: u32,
    /// CRC32 of bytes `[8, batch_len)`.
    pub crc: u32,
    /// Compression of the record payload.
    pub compression: Compression,
    /// Number of records (at least one).
    pub record_count: u32,
    /// Timestamp of the first record; the base of the per-record deltas.
    pub first_timestamp_ms: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp_ms: i64,
    /// Idempotent-producer identity, if any.
    pub producer: Option<ProducerInfo>,
    /// Length of the record payload once decompressed.
    pub uncompressed_len: u32,
}

/// Why an encoded batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header, or than the header's length field says.
    #[error("batch is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes available.
        actual: usize,
        /// Bytes the batch claims or needs.
        expected: usize,
    },
    /// The length field disagrees with the bytes given.
    #[error("batch length field says {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// Value of the length field.
        declared: usize,
        /// Bytes given.
        actual: usize,
    },
    /// Larger than the configured limit.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Batch or payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Unknown format version.
    #[error("unsupported batch format version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// Unknown compression code or reserved bits set.
    #[error("invalid batch attributes 0x{0:02x}")]
    InvalidAttributes(u8),
    /// Checksum mismatch: the bytes were damaged.
    #[error("batch CRC mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A batch must carry at least one record.
    #[error("batch has no records")]
    Empty,
    /// The header fields contradict each other or the payload.
    #[error("malformed batch: {0}")]
    Malformed(String),
}

/// Why a batch could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Nothing to encode.
    #[error("a batch needs at least one record")]
    Empty,
    /// A field does not fit its on-wire size.
    #[error("record {record}: {field} is {len} bytes, more than the format allows ({max})")]
    FieldTooLarge {
        /// Record position in the batch.
        record: usize,
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The format's maximum.
        max: usize,
    },
    /// A record timestamp is more than ±2^31 ms away from the first one.
    #[error(
        "record {record}: timestamp {timestamp_ms} is too far from the batch's first timestamp {first_ms}"
    )]
    TimestampSpread {
        /// Record position in the batch.
        record: usize,
        /// Its timestamp.
        timestamp_ms: i64,
        /// The batch's first timestamp.
        first_ms: i64,
    },
    /// The encoded batch would exceed 4 GiB.
    #[error("batch too large to encode: {0} bytes")]
    TooLarge(usize),
}

/// A batch whose header and CRC were checked by [`verify_batch`]. Only this
/// module can make one, so code that takes a `VerifiedBatch` never has to
/// check it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl VerifiedBatch {
    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as encoded.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a verified batch has a header and at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Decodes the records (decompressing if needed).
    pub fn records(&self, limits: &BatchLimits) -> Result<Vec<Record>, BatchError> {
        decode_payload(&self.header, &self.bytes, limits)
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn field_len(
    record: usize,
    field: &'static str,
    len: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::FieldTooLarge {
            record,
            field,
            len,
            max,
        });
    }
    Ok(())
}

/// Encodes `records` into one batch, appended to `out`.
///
/// The first record's timestamp is the batch's base timestamp; every other
/// timestamp must lie within ±2^31 ms of it.
pub fn encode_batch(
    records: &[Record],
    compression: Compression,
    producer: Option<ProducerInfo>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let first = records.first().ok_or(EncodeError::Empty)?;
    let first_ms = first.timestamp_ms;
    let mut max_ms = first_ms;
    let record_count =
        u32::try_from(records.len()).map_err(|_| EncodeError::TooLarge(records.len()))?;

    let mut payload = Vec::with_capacity(records.iter().map(encoded_record_len).sum());
    for (i, r) in records.iter().enumerate() {
        let delta = r
            .timestamp_ms
            .checked_sub(first_ms)
            .and_then(|d| i32::try_from(d).ok())
            .ok_or(EncodeError::TimestampSpread {
                record: i,
                timestamp_ms: r.timestamp_ms,
                first_ms,
            })?;
        max_ms = max_ms.max(r.timestamp_ms);
        let len = encoded_record_len(r);
        field_len(i, "record", len - 4, u32::MAX as usize)?;
        if let Some(key) = &r.key {
            field_len(i, "key", key.len(), i32::MAX as usize)?;
        }
        field_len(i, "value", r.value.len(), u32::MAX as usize)?;
        field_len(i, "header count", r.headers.len(), u16::MAX as usize)?;
        put_u32(&mut payload, (len - 4) as u32);
        put_i32(&mut payload, delta);
        match &r.key {
            Some(key) => {
                put_i32(&mut payload, key.len() as i32);
                payload.extend_from_slice(key);
            }
            None => put_i32(&mut payload, -1),
        }
        put_u32(&mut payload, r.value.len() as u32);
        payload.extend_from_slice(&r.value);
        put_u16(&mut payload, r.headers.len() as u16);
        for h in &r.headers {
            field_len(i, "header key", h.key.len(), u16::MAX as usize)?;
            field_len(i, "header value", h.value.len(), u32::MAX as usize)?;
            put_u16(&mut payload, h.key.len() as u16);
            payload.extend_from_slice(h.key.as_bytes());
            put_u32(&mut payload, h.value.len() as u32);
            payload.extend_from_slice(&h.value);
        }
    }
    let uncompressed_len =
        u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge(payload.len()))?;
    let body = match compression {
        Compression::None => payload,
        Compression::Lz4 => lz4_flex::block::compress(&payload),
    };
    let batch_len = BATCH_HEADER_LEN + body.len();
    let batch_len_u32 = u32::try_from(batch_len).map_err(|_| EncodeError::TooLarge(batch_len))?;

    let start = out.len();
    out.reserve(batch_len);
    put_u32(out, batch_len_u32);
    put_u32(out, 0); // CRC, filled below.
    out.push(BATCH_FORMAT_VERSION);
    out.push(compression.code());
    put_u16(out, 0);
    put_u32(out, record_count);
    put_i64(out, first_ms);
    put_i64(out, max_ms);
    let (pid, epoch, seq) = match producer {
        Some(p) => (p.producer_id, p.producer_epoch, p.base_sequence),
        None => (NO_PRODUCER_ID, 0, 0),
    };
    put_u64(out, pid);
    put_u32(out, seq);
    put_u16(out, epoch);
    put_u16(out, 0);
    put_u32(out, uncompressed_len);
    debug_assert_eq!(out.len() - start, BATCH_HEADER_LEN);
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out[start + CRC_COVERS_FROM..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, batch_len);
    Ok(())
}

fn encoded_record_len(r: &Record) -> usize {
    RECORD_FIXED_LEN
        + r.key.as_ref().map_or(0, |k| k.len())
        + r.value.len()
        + r.headers
            .iter()
            .map(|h| HEADER_FIXED_LEN + h.key.len() + h.value.len())
            .sum::<usize>()
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_i32(b: &[u8], at: usize) -> i32 {
    le_u32(b, at) as i32
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn le_i64(b: &[u8], at: usize) -> i64 {
    le_u64(b, at) as i64
}

/// Parses the fixed header without checking the CRC. `bytes` must hold at
/// least [`BATCH_HEADER_LEN`] bytes.
pub fn parse_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Truncated {
            actual: bytes.len(),
            expected: BATCH_HEADER_LEN,
        });
    }
    let batch_len = le_u32(bytes, 0);
    let version = bytes[8];
    if version != BATCH_FORMAT_VERSION {
        return Err(BatchError::UnsupportedVersion(version));
    }
    let attributes = bytes[9];
    let compression = Compression::from_code(attributes & ATTR_COMPRESSION_MASK)
        .filter(|_| attributes & !ATTR_COMPRESSION_MASK == 0)
        .ok_or(BatchError::InvalidAttributes(attributes))?;
    if le_u16(bytes, 10) != 0 || le_u16(bytes, 46) != 0 {
        return Err(BatchError::Malformed(
            "reserved header bytes are not zero".into(),
        ));
    }
    let record_count = le_u32(bytes, 12);
    if record_count == 0 {
        return Err(BatchError::Empty);
    }
    let first_timestamp_ms = le_i64(bytes, 16);
    let max_timestamp_ms = le_i64(bytes, 24);
    if max_timestamp_ms < first_timestamp_ms {
        return Err(BatchError::Malformed(format!(
            "max timestamp {max_timestamp_ms} is below the first timestamp {first_timestamp_ms}"
        )));
    }
    let producer_id = le_u64(bytes, 32);
    let producer = (producer_id != NO_PRODUCER_ID).then(|| ProducerInfo {
        producer_id,
        base_sequence: le_u32(bytes, 40),
        producer_epoch: le_u16(bytes, 44),
    });
    let uncompressed_len = le_u32(bytes, 48);
    let payload_len = (batch_len as usize).saturating_sub(BATCH_HEADER_LEN);
    if compression == Compression::None && uncompressed_len as usize != payload_len {
        return Err(BatchError::Malformed(format!(
            "uncompressed batch declares {uncompressed_len} payload bytes but carries {payload_len}"
        )));
    }
    // Every record takes at least RECORD_FIXED_LEN bytes once decompressed.
    if (record_count as u64) * (RECORD_FIXED_LEN as u64) > uncompressed_len as u64 {
        return Err(BatchError::Malformed(format!(
            "{record_count} records cannot fit in {uncompressed_len} payload bytes"
        )));
    }
    Ok(BatchHeader {
        batch_len,
        crc: le_u32(bytes, 4),
        compression,
        record_count,
        first_timestamp_ms,
        max_timestamp_ms,
        producer,
        uncompressed_len,
    })
}

/// Checks an untrusted batch without decompressing it: the length field,
/// the header fields, the limits and the CRC. On success the batch can be
/// stored verbatim.
pub fn verify_batch(bytes: Bytes, limits: &BatchLimits) -> Result<VerifiedBatch, BatchError> {
    let header = verify_slice(&bytes, limits)?;
    Ok(VerifiedBatch { header, bytes })
}

/// [`verify_batch`] over a borrowed slice: the check the broker runs again
/// on every batch it reads back from disk.
pub fn verify_slice(bytes: &[u8], limits: &BatchLimits) -> Result<BatchHeader, BatchError> {
    if bytes.len() > limits.batch_bytes_max {
        return Err(BatchError::TooLarge {
            size: bytes.len(),
            max: limits.batch_bytes_max,
        });
    }
    let header = parse_header(bytes)?;
    if header.batch_len as usize != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.batch_len as usize,
            actual: bytes.len(),
        });
    }
    if header.uncompressed_len as usize > limits.uncompressed_bytes_max {
        return Err(BatchError::TooLarge {
            size: header.uncompressed_len as usize,
            max: limits.uncompressed_bytes_max,
        });
    }
    let computed = crc32fast::hash(&bytes[CRC_COVERS_FROM..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Verifies a batch and decodes its records.
pub fn decode_records(bytes: Bytes, limits: &BatchLimits) -> Result<Vec<Record>, BatchError> {
    verify_batch(bytes, limits)?.records(limits)
}

/// Where one record's fields lie in a decompressed payload.
struct RecordSpan<'a> {
    key: Option<std::ops::Range<usize>>,
    value: std::ops::Range<usize>,
    /// (key, value) of each header.
    headers: &'a [(std::ops::Range<usize>, std::ops::Range<usize>)],
    timestamp_ms: i64,
}

/// Walks the records of a decompressed payload, checking every field's
/// framing against the record's and the payload's bounds, the declared
/// record count (exactly that many records fill the payload), key lengths
/// (-1 or ≥ 0), header keys (UTF-8) and timestamps (at most the batch's
/// max); hands each record's spans to `visit`. Nothing is allocated but the
/// reused list of header spans.
fn walk_records(
    header: &BatchHeader,
    p: &[u8],
    mut visit: impl FnMut(RecordSpan<'_>),
) -> Result<(), BatchError> {
    let mut at = 0usize;
    let need = |at: usize, n: usize, what: &str| -> Result<(), BatchError> {
        if at.checked_add(n).is_none_or(|end| end > p.len()) {
            return Err(BatchError::Malformed(format!(
                "{what} at payload byte {at} runs past the end ({} bytes)",
                p.len()
            )));
        }
        Ok(())
    };
    let mut headers = Vec::new();
    for i in 0..header.record_count {
        need(at, 4, "record length")?;
        let rec_len = le_u32(p, at) as usize;
        let rec_start = at + 4;
        need(rec_start, rec_len, "record")?;
        let rec_end = rec_start + rec_len;
        at = rec_start;
        let inner = |at: usize, n: usize, what: &str| -> Result<(), BatchError> {
            if at.checked_add(n).is_none_or(|end| end > rec_end) {
                return Err(BatchError::Malformed(format!(
                    "record {i}: {what} runs past the record's end"
                )));
            }
            Ok(())
        };
        inner(at, 8, "timestamp and key length")?;
        let delta = le_i32(p, at);
        let key_len = le_i32(p, at + 4);
        at += 8;
        let key = if key_len < 0 {
            if key_len != -1 {
                return Err(BatchError::Malformed(format!(
                    "record {i}: key length {key_len}"
                )));
            }
            None
        } else {
            inner(at, key_len as usize, "key")?;
            at += key_len as usize;
            Some(at - key_len as usize..at)
        };
        inner(at, 4, "value length")?;
        let value_len = le_u32(p, at) as usize;
        at += 4;
        inner(at, value_len, "value")?;
        let value = at..at + value_len;
        at += value_len;
        inner(at, 2, "header count")?;
        let header_count = le_u16(p, at) as usize;
        at += 2;
        headers.clear();
        for _ in 0..header_count {
            inner(at, 2, "header key length")?;
            let hk = le_u16(p, at) as usize;
            at += 2;
            inner(at, hk, "header key")?;
            if std::str::from_utf8(&p[at..at + hk]).is_err() {
                return Err(BatchError::Malformed(format!(
                    "record {i}: header key is not UTF-8"
                )));
            }
            let key = at..at + hk;
            at += hk;
            inner(at, 4, "header value length")?;
            let hv = le_u32(p, at) as usize;
            at += 4;
            inner(at, hv, "header value")?;
            headers.push((key, at..at + hv));
            at += hv;
        }
        if at != rec_end {
            return Err(BatchError::Malformed(format!(
                "record {i}: {} unused bytes inside the record",
                rec_end - at
            )));
        }
        let timestamp_ms = header.first_timestamp_ms + delta as i64;
        if timestamp_ms > header.max_timestamp_ms {
            return Err(BatchError::Malformed(format!(
                "record {i}: timestamp {timestamp_ms} exceeds the batch's max timestamp {}",
                header.max_timestamp_ms
            )));
        }
        visit(RecordSpan {
            key,
            value,
            headers: &headers,
            timestamp_ms,
        });
    }
    if at != p.len() {
        return Err(BatchError::Malformed(format!(
            "{} bytes left after the last record (the batch declares {} records)",
            p.len() - at,
            header.record_count
        )));
    }
    Ok(())
}

/// Decompresses an LZ4 payload into `buf` (resized to the declared length).
fn decompress_lz4(body: &[u8], ulen: usize, buf: &mut Vec<u8>) -> Result<(), BatchError> {
    buf.clear();
    buf.resize(ulen, 0);
    let n = lz4_flex::block::decompress_into(body, buf).map_err(|e| {
        BatchError::Malformed(format!(
            "LZ4 payload: {e} (the payload must be an LZ4 block without a size prefix)"
        ))
    })?;
    if n != ulen {
        return Err(BatchError::Malformed(format!(
            "LZ4 payload decompressed to {n} bytes, header says {ulen}"
        )));
    }
    Ok(())
}

fn check_payload_limit(header: &BatchHeader, limits: &BatchLimits) -> Result<(), BatchError> {
    let ulen = header.uncompressed_len as usize;
    if ulen > limits.uncompressed_bytes_max {
        return Err(BatchError::TooLarge {
            size: ulen,
            max: limits.uncompressed_bytes_max,
        });
    }
    Ok(())
}

fn decode_payload(
    header: &BatchHeader,
    bytes: &Bytes,
    limits: &BatchLimits,
) -> Result<Vec<Record>, BatchError> {
    check_payload_limit(header, limits)?;
    let body = bytes.slice(BATCH_HEADER_LEN..);
    let payload: Bytes = match header.compression {
        Compression::None => body,
        Compression::Lz4 => {
            let mut buf = Vec::new();
            decompress_lz4(&body, header.uncompressed_len as usize, &mut buf)?;
            Bytes::from(buf)
        }
    };
    let mut records = Vec::with_capacity(header.record_count as usize);
    walk_records(header, &payload, |r| {
        records.push(Record {
            key: r.key.map(|k| payload.slice(k)),
            value: payload.slice(r.value),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| Header {
                    key: String::from_utf8_lossy(&payload[k.clone()]).into_owned(),
                    value: payload.slice(v.clone()),
                })
                .collect(),
            timestamp_ms: r.timestamp_ms,
        });
    })?;
    Ok(records)
}

/// One record of a batch, borrowed from its (decompressed) payload: what
/// [`visit_records`] hands out, without allocating per record.
pub struct RecordView<'a> {
    payload: &'a [u8],
    key: Option<std::ops::Range<usize>>,
    value: std::ops::Range<usize>,
    headers: &'a [(std::ops::Range<usize>, std::ops::Range<usize>)],
    /// The record's timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl<'a> RecordView<'a> {
    /// The key, if any.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key.clone().map(|k| &self.payload[k])
    }

    /// The value.
    pub fn value(&self) -> &'a [u8] {
        &self.payload[self.value.clone()]
    }

    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// The headers, as (key, value) bytes (keys are UTF-8).
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.headers
            .iter()
            .map(|(k, v)| (&self.payload[k.clone()], &self.payload[v.clone()]))
    }
}

/// Verifies a batch (header and CRC) and hands each record to `visit` in
/// order, borrowed: the allocation-free counterpart of [`decode_records`]
/// for code that re-encodes records (the Kafka front-end's fetch).
/// `scratch` holds an LZ4 payload's decompressed bytes.
pub fn visit_records(
    bytes: &[u8],
    limits: &BatchLimits,
    scratch: &mut Vec<u8>,
    mut visit: impl FnMut(RecordView<'_>),
) -> Result<BatchHeader, BatchError> {
    let header = verify_slice(bytes, limits)?;
    check_payload_limit(&header, limits)?;
    let body = &bytes[BATCH_HEADER_LEN..header.batch_len as usize];
    let payload: &[u8] = match header.compression {
        Compression::None => body,
        Compression::Lz4 => {
            decompress_lz4(body, header.uncompressed_len as usize, scratch)?;
            scratch
        }
    };
    walk_records(&header, payload, |r| {
        visit(RecordView {
            payload,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp_ms: r.timestamp_ms,
        })
    })?;
    Ok(header)
}

/// What the broker runs on every batch a client sends before it appends
/// it: [`verify_batch`] (header, limits, CRC) and then every record's
/// framing and the declared record count, decompressing an LZ4 payload into
/// a per-thread buffer that is reused, so a batch that would be stored but
/// not readable is refused instead.
pub fn admit_batch(bytes: Bytes, limits: &BatchLimits) -> Result<VerifiedBatch, BatchError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Kept between batches at most (a larger one is freed after use).
    const SCRATCH_KEEP: usize = 4 << 20;
    let v = verify_batch(bytes, limits)?;
    check_payload_limit(&v.header, limits)?;
    let body = &v.bytes[BATCH_HEADER_LEN..];
    match v.header.compression {
        Compression::None => walk_records(&v.header, body, |_| {})?,
        Compression::Lz4 => SCRATCH.with(|s| {
            let mut buf = s.borrow_mut();
            let r = decompress_lz4(body, v.header.uncompressed_len as usize, &mut buf)
                .and_then(|()| walk_records(&v.header, &buf, |_| {}));
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            r
        })?,
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn rec(key: Option<&[u8]>, value: &[u8], ts: i64) -> Record {
        Record {
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            headers: vec![],
            timestamp_ms: ts,
        }
    }

    fn encode(records: &[Record], c: Compression) -> Bytes {
        let mut out = Vec::new();
        encode_batch(records, c, None, &mut out).unwrap();
        Bytes::from(out)
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(
                ("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..8)),
                0..3,
            ),
            -1_000_000i64..1_000_000,
        )
            .prop_map(|(k, v, h, ts)| Record {
                key: k.map(Bytes::from),
                value: Bytes::from(v),
                headers: h
                    .into_iter()
                    .map(|(key, value)| Header {
                        key,
                        value: Bytes::from(value),
                    })
                    .collect(),
                timestamp_ms: 1_700_000_000_000 + ts,
            })
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_record(), 1..20), lz4 in any::<bool>(),
                      producer in proptest::option::of((0u64..1000, any::<u16>(), any::<u32>()))) {
            let c = if lz4 { Compression::Lz4 } else { Compression::None };
            let producer = producer.map(|(producer_id, producer_epoch, base_sequence)| ProducerInfo { producer_id, producer_epoch, base_sequence });
            let mut out = Vec::new();
            encode_batch(&records, c, producer, &mut out).unwrap();
            let v = verify_batch(Bytes::from(out), &BatchLimits::default()).unwrap();
            prop_assert_eq!(v.record_count() as usize, records.len());
            prop_assert_eq!(v.header().producer, producer);
            prop_assert_eq!(v.header().max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap());
            prop_assert_eq!(v.records(&BatchLimits::default()).unwrap(), records);
        }

        /// Any single flipped bit anywhere in a batch is caught by
        /// verification, whatever field it lands in.
        #[test]
        fn any_bit_flip_is_detected(records in proptest::collection::vec(arb_record(), 1..5), lz4 in any::<bool>(), bit in any::<usize>()) {
            let c = if lz4 { Compression::Lz4 } else { Compression::None };
            let mut bytes = encode(&records, c).to_vec();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_batch(Bytes::from(bytes), &BatchLimits::default()).is_err());
        }

        /// Arbitrary bytes never panic the verifier or decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_records(Bytes::from(bytes), &BatchLimits::default());
        }
    }

    /// A batch with these header fields around `body`, its CRC valid: what
    /// a client that gets the record framing wrong would send.
    fn framed(
        record_count: u32,
        compression: Compression,
        uncompressed_len: u32,
        max_ts: i64,
        body: &[u8],
    ) -> Bytes {
        let mut out = Vec::new();
        put_u32(&mut out, (BATCH_HEADER_LEN + body.len()) as u32);
        put_u32(&mut out, 0);
        out.push(BATCH_FORMAT_VERSION);
        out.push(compression.code());
        put_u16(&mut out, 0);
        put_u32(&mut out, record_count);
        put_i64(&mut out, 1_000);
        put_i64(&mut out, max_ts);
        put_u64(&mut out, NO_PRODUCER_ID);
        put_u32(&mut out, 0);
        put_u16(&mut out, 0);
        put_u16(&mut out, 0);
        put_u32(&mut out, uncompressed_len);
        out.extend_from_slice(body);
        let crc = crc32fast::hash(&out[CRC_COVERS_FROM..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(out)
    }

    /// The raw payload of `records`.
    fn payload(records: &[Record]) -> Vec<u8> {
        let b = encode(records, Compression::None);
        b[BATCH_HEADER_LEN..].to_vec()
    }

    fn three() -> Vec<Record> {
        (0..3)
            .map(|i| rec(Some(b"k"), format!("value {i}").as_bytes(), 1_000 + i))
            .collect()
    }

    #[test]
    fn admission_refuses_what_the_header_and_crc_cannot_see() {
        let limits = BatchLimits::default();
        let good = payload(&three());
        let n = good.len() as u32;
        let raw = |count: u32, body: &[u8]| {
            framed(count, Compression::None, body.len() as u32, 1_002, body)
        };
        // What the issue found accepted and stored, then unreadable.
        let mut past_end = good.clone();
        past_end[0..4].copy_from_slice(&1_000u32.to_le_bytes()); // record length
        let mut key_past_end = good.clone();
        key_past_end[8..12].copy_from_slice(&1_000i32.to_le_bytes());
        let mut negative_key = good.clone();
        negative_key[8..12].copy_from_slice(&(-7i32).to_le_bytes());
        let mut late = good.clone();
        late[4..8].copy_from_slice(&50i32.to_le_bytes()); // ts 1_050 > max 1_002
        let mut bad_header_key = payload(&[Record {
            key: None,
            value: Bytes::from_static(b"v"),
            headers: vec![Header {
                key: "hk".into(),
                value: Bytes::from_static(b"hv"),
            }],
            timestamp_ms: 1_000,
        }]);
        let hk_at = bad_header_key.len() - 2 - 4 - 2;
        bad_header_key[hk_at] = 0xff;
        let random: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        let lz4 = lz4_flex::block::compress(&good);
        let lz4_prefixed = lz4_flex::block::compress_prepend_size(&good);
        let bomb = lz4_flex::block::compress(&vec![0u8; 932_067 * 18]);
        let cases: Vec<(&str, Bytes, &str)> = vec![
            ("count 4 for 3 records", raw(4, &good), "runs past the end"),
            (
                "count 2 for 3 records",
                raw(2, &good),
                "left after the last record",
            ),
            ("record length past the end", raw(3, &past_end), "runs past"),
            (
                "key length past the end",
                raw(3, &key_past_end),
                "key runs past",
            ),
            (
                "negative key length",
                raw(3, &negative_key),
                "key length -7",
            ),
            (
                "timestamp above the max",
                raw(3, &late),
                "exceeds the batch's max",
            ),
            ("random payload", raw(3, &random), "past"),
            (
                "LZ4 flag on raw bytes",
                framed(3, Compression::Lz4, n, 1_002, &good),
                "LZ4",
            ),
            (
                "LZ4 with a size prefix",
                framed(3, Compression::Lz4, n, 1_002, &lz4_prefixed),
                "LZ4",
            ),
            (
                "invalid LZ4",
                framed(3, Compression::Lz4, n, 1_002, &random),
                "LZ4",
            ),
            (
                "non-UTF-8 header key",
                raw(1, &bad_header_key),
                "header key is not UTF-8",
            ),
            (
                "an LZ4 bomb claiming 932,067 records",
                framed(932_067, Compression::Lz4, 932_067 * 18, 1_002, &bomb),
                "runs past the record's end",
            ),
        ];
        for (what, batch, why) in cases {
            // Header and CRC are fine: only admission sees the damage.
            let limits = BatchLimits {
                uncompressed_bytes_max: 32 << 20,
                ..limits
            };
            assert!(verify_batch(batch.clone(), &limits).is_ok(), "{what}");
            let e = admit_batch(batch, &limits).expect_err(what);
            assert!(e.to_string().contains(why), "{what}: {e}");
        }
        // A good batch is admitted, raw or compressed.
        admit_batch(raw(3, &good), &limits).unwrap();
        admit_batch(framed(3, Compression::Lz4, n, 1_002, &lz4), &limits).unwrap();
        admit_batch(encode(&three(), Compression::Lz4), &limits).unwrap();
    }

    #[test]
    fn rejects_truncated_batch() {
        let b = encode(&[rec(None, b"hello", 1)], Compression::None);
        let short = b.slice(..b.len() - 1);
        assert!(matches!(
            verify_batch(short, &BatchLimits::default()),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            verify_batch(b.slice(..10), &BatchLimits::default()),
            Err(BatchError::Truncated {
                actual: 10,
                expected: 52
            })
        ));
    }

    #[test]
    fn rejects_oversized_batch_before_reading_it() {
        let b = encode(&[rec(None, &[7u8; 2000], 1)], Compression::None);
        let limits = BatchLimits {
            batch_bytes_max: 1000,
            uncompressed_bytes_max: 1 << 20,
        };
        let err = verify_batch(b, &limits).unwrap_err();
        assert_eq!(
            err,
            BatchError::TooLarge {
                size: 52 + 18 + 2000,
                max: 1000
            }
        );
        assert_eq!(
            err.to_string(),
            "batch of 2070 bytes exceeds the limit of 1000 bytes"
        );
    }

    #[test]
    fn rejects_compression_bomb_by_declared_length() {
        let b = encode(&[rec(None, &[0u8; 100_000], 1)], Compression::Lz4);
        assert!(b.len() < 2000, "zeros compress well");
        let limits = BatchLimits {
            batch_bytes_max: 1 << 20,
            uncompressed_bytes_max: 50_000,
        };
        assert!(matches!(
            verify_batch(b, &limits),
            Err(BatchError::TooLarge { max: 50_000, .. })
        ));
    }

    #[test]
    fn rejects_bad_crc_with_both_values() {
        let mut b = encode(&[rec(Some(b"k"), b"v", 5)], Compression::None).to_vec();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        let err = verify_batch(Bytes::from(b), &BatchLimits::default()).unwrap_err();
        assert!(matches!(err, BatchError::CrcMismatch { .. }), "{err}");
        assert!(err.to_string().starts_with("batch CRC mismatch: stored 0x"));
    }

    #[test]
    fn rejects_unknown_version_and_attributes() {
        let b = encode(&[rec(None, b"v", 5)], Compression::None).to_vec();
        let mut v = b.clone();
        v[8] = 9;
        assert_eq!(
            verify_batch(Bytes::from(v), &BatchLimits::default()),
            Err(BatchError::UnsupportedVersion(9))
        );
        let mut a = b;
        a[9] = 0x07;
        assert_eq!(
            verify_batch(Bytes::from(a), &BatchLimits::default()),
            Err(BatchError::InvalidAttributes(7))
        );
    }

    #[test]
    fn empty_batch_cannot_be_encoded() {
        assert_eq!(
            encode_batch(&[], Compression::None, None, &mut Vec::new()),
            Err(EncodeError::Empty)
        );
    }

    #[test]
    fn timestamp_spread_is_an_encode_error() {
        let err = encode_batch(
            &[rec(None, b"a", 0), rec(None, b"b", 1 << 40)],
            Compression::None,
            None,
            &mut Vec::new(),
        );
        assert!(matches!(
            err,
            Err(EncodeError::TimestampSpread { record: 1, .. })
        ));
    }

    /// The layout in docs/log-format.md, checked field by field on a known batch.
    #[test]
    fn header_layout_matches_the_documented_format() {
        let p = ProducerInfo {
            producer_id: 0x0102030405060708,
            producer_epoch: 0x0a0b,
            base_sequence: 0x11223344,
        };
        let mut out = Vec::new();
        encode_batch(
            &[rec(Some(b"key"), b"value", 1000), rec(None, b"", 1500)],
            Compression::None,
            Some(p),
            &mut out,
        )
        .unwrap();
        let len = out.len() as u32;
        assert_eq!(&out[0..4], &len.to_le_bytes());
        assert_eq!(out[8], 1);
        assert_eq!(out[9], 0);
        assert_eq!(&out[12..16], &2u32.to_le_bytes());
        assert_eq!(&out[16..24], &1000i64.to_le_bytes());
        assert_eq!(&out[24..32], &1500i64.to_le_bytes());
        assert_eq!(&out[32..40], &0x0102030405060708u64.to_le_bytes());
        assert_eq!(&out[40..44], &0x11223344u32.to_le_bytes());
        assert_eq!(&out[44..46], &0x0a0bu16.to_le_bytes());
        let payload_len = (out.len() - BATCH_HEADER_LEN) as u32;
        assert_eq!(&out[48..52], &payload_len.to_le_bytes());
        // First record: length, delta 0, key length 3, "key", value length 5, "value", 0 headers.
        let r = &out[52..];
        assert_eq!(&r[0..4], &(4u32 + 4 + 3 + 4 + 5 + 2).to_le_bytes());
        assert_eq!(&r[4..8], &0i32.to_le_bytes());
        assert_eq!(&r[8..12], &3i32.to_le_bytes());
        assert_eq!(&r[12..15], b"key");
        assert_eq!(&r[15..19], &5u32.to_le_bytes());
        assert_eq!(&r[19..24], b"value");
        assert_eq!(&r[24..26], &0u16.to_le_bytes());
        // Second record: null key is -1, delta 500.
        assert_eq!(&r[30..34], &500i32.to_le_bytes());
        assert_eq!(&r[34..38], &(-1i32).to_le_bytes());
        assert_eq!(crc32fast::hash(&out[8..]).to_le_bytes(), out[4..8]);
    }
}
