//! Kafka's RecordBatch v2 (magic 2) at the edge: produced batches are
//! verified (CRC32C), decompressed (gzip, snappy raw or xerial-framed, LZ4
//! frame, zstd; bounded against decompression bombs) and translated into
//! Strata batches; stored Strata batches are translated back for fetches.
//!
//! Strata stores one format: every record, whichever protocol wrote it,
//! sits in a Strata batch at the offset the broker assigned, so `strata
//! consume` and Kafka clients see the same records at the same offsets.
//! What does not survive the translation is documented in
//! `docs/kafka.md`: a null value is stored as an empty value, a null
//! header value as an empty one, and fetched batches are uncompressed
//! (the fetch counts its budget in translated bytes).

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};
use strata_proto::batch::{
    BatchLimits, Compression, Header, ProducerInfo, Record, encode_batch, parse_header,
    visit_records,
};

/// Size of the RecordBatch v2 header, up to and including the record count.
const BATCH_HEADER_LEN: usize = 61;
/// Offset of the CRC field; the CRC covers everything after it.
const CRC_AT: usize = 17;
/// Offset of the attributes, where the CRC coverage starts.
const ATTRIBUTES_AT: usize = 21;
/// Attribute bit: a transactional batch.
const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit: a control batch (transaction markers).
const ATTR_CONTROL: i16 = 0x20;
/// The xerial snappy stream header the Java client writes.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

/// Why a produced batch was refused, with the Kafka error it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// Bad CRC, bad lengths, bad varints (CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A magic or feature Strata does not take (UNSUPPORTED_FOR_MESSAGE_FORMAT,
    /// or INVALID_RECORD for transactional batches).
    #[error("unsupported record batch: {0}")]
    Unsupported(String),
    /// Larger than the topic allows once decompressed (MESSAGE_TOO_LARGE).
    #[error("record batch too large: {0}")]
    TooLarge(String),
}

/// One produced Kafka batch, translated.
#[derive(Debug)]
pub struct Translated {
    /// The Strata batch to append.
    pub batch: Bytes,
    /// Records in it.
    pub record_count: u32,
}

/// A cursor over a record's bytes, for the varint-heavy record layout.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn corrupt(what: &str) -> RecordsError {
        RecordsError::Corrupt(format!("record truncated in {what}"))
    }

    fn u8(&mut self) -> Result<u8, RecordsError> {
        let (&x, rest) = self
            .b
            .split_first()
            .ok_or_else(|| Self::corrupt("a byte"))?;
        self.b = rest;
        Ok(x)
    }

    fn varlong(&mut self) -> Result<i64, RecordsError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err(RecordsError::Corrupt("varint longer than 10 bytes".into()))
    }

    fn varint(&mut self) -> Result<i32, RecordsError> {
        i32::try_from(self.varlong()?).map_err(|_| RecordsError::Corrupt("varint overflow".into()))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], RecordsError> {
        if self.b.len() < n {
            return Err(Self::corrupt(what));
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }

    /// A varint length (−1 = null) and the bytes.
    fn nullable(&mut self, what: &str) -> Result<Option<&'a [u8]>, RecordsError> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(RecordsError::Corrupt(format!("{what} length {n}"))),
            n => self.take(n as usize, what).map(Some),
        }
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Reads at most `limit` bytes of `r`'s output, refusing more.
fn bounded(mut r: impl Read, limit: usize, codec: &str) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordsError::Corrupt(format!("{codec} decompression failed: {e}")))?;
    if out.len() > limit {
        return Err(RecordsError::TooLarge(format!(
            "decompresses to more than {limit} bytes"
        )));
    }
    Ok(out)
}

fn decompress(codec: i16, data: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    match codec {
        0 => Ok(data.to_vec()),
        1 => bounded(flate2::read::MultiGzDecoder::new(data), limit, "gzip"),
        2 => snappy(data, limit),
        3 => bounded(lz4_flex::frame::FrameDecoder::new(data), limit, "lz4"),
        4 => {
            let d = zstd::stream::read::Decoder::new(data)
                .map_err(|e| RecordsError::Corrupt(format!("zstd: {e}")))?;
            bounded(d, limit, "zstd")
        }
        c => Err(RecordsError::Unsupported(format!(
            "compression codec {c} (known: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)"
        ))),
    }
}

/// Snappy as Kafka clients send it: raw (librdkafka) or in xerial's
/// framing (the Java client: a header, then length-prefixed raw blocks).
fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    let raw = |b: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let n = snap::raw::decompress_len(b)
            .map_err(|e| RecordsError::Corrupt(format!("snappy: {e}")))?;
        if out.len() + n > limit {
            return Err(RecordsError::TooLarge(format!(
                "decompresses to more than {limit} bytes"
            )));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[start..])
            .map_err(|e| RecordsError::Corrupt(format!("snappy: {e}")))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        raw(data, &mut out)?;
        return Ok(out);
    }
    // Header: magic (8), version (4), compatible version (4).
    let mut c = Cursor { b: data };
    c.take(16, "the xerial header")?;
    while !c.b.is_empty() {
        let len = c.take(4, "a xerial block length")?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let block = c.take(len, "a xerial block")?;
        raw(block, &mut out)?;
    }
    Ok(out)
}

/// Splits a produce request's `records` field into its batches, translating
/// each. `limits` are the partition's; the uncompressed bound applies to
/// each batch.
pub fn translate_produce(
    records: &[u8],
    limits: &BatchLimits,
) -> Result<Vec<Translated>, RecordsError> {
    let mut out = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(RecordsError::Corrupt(format!(
                "{} trailing bytes are not a batch",
                rest.len()
            )));
        }
        let len = be_i32(rest, 8);
        if len < (BATCH_HEADER_LEN - 12) as i32 || (len as usize) > rest.len() - 12 {
            return Err(RecordsError::Corrupt(format!(
                "batch length {len} with {} bytes present",
                rest.len() - 12
            )));
        }
        let (one, tail) = rest.split_at(12 + len as usize);
        out.push(translate_batch(one, limits)?);
        rest = tail;
    }
    if out.is_empty() {
        return Err(RecordsError::Corrupt("no record batch".into()));
    }
    Ok(out)
}

/// Translates one whole Kafka batch (`b` is exactly its bytes).
fn translate_batch(b: &[u8], limits: &BatchLimits) -> Result<Translated, RecordsError> {
    let magic = b[16] as i8;
    if magic != 2 {
        return Err(RecordsError::Unsupported(format!(
            "message format magic {magic}: only RecordBatch v2 (magic 2, Produce v3 and later) is \
             taken"
        )));
    }
    if b.len() > limits.batch_bytes_max {
        return Err(RecordsError::TooLarge(format!(
            "{} bytes, the topic's limit is {}",
            b.len(),
            limits.batch_bytes_max
        )));
    }
    let crc = u32::from_be_bytes([b[CRC_AT], b[CRC_AT + 1], b[CRC_AT + 2], b[CRC_AT + 3]]);
    let actual = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    if crc != actual {
        return Err(RecordsError::Corrupt(format!(
            "CRC32C mismatch: batch says {crc:#010x}, bytes give {actual:#010x}"
        )));
    }
    let attributes = be_i16(b, 21);
    if attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) != 0 {
        return Err(RecordsError::Unsupported(
            "transactional and control batches (transactions are not supported)".into(),
        ));
    }
    let last_offset_delta = be_i32(b, 23);
    let base_timestamp = be_i64(b, 27);
    let producer_id = be_i64(b, 43);
    let producer_epoch = be_i16(b, 51);
    let base_sequence = be_i32(b, 53);
    let count = be_i32(b, 57);
    if count <= 0 || count - 1 != last_offset_delta {
        return Err(RecordsError::Corrupt(format!(
            "{count} records with last offset delta {last_offset_delta}"
        )));
    }
    let payload = decompress(
        attributes & 0x07,
        &b[BATCH_HEADER_LEN..],
        limits.uncompressed_bytes_max,
    )?;
    // Every record takes at least 7 bytes; refuse a count the payload
    // cannot hold before reserving for it.
    if count as usize > payload.len() / 7 + 1 {
        return Err(RecordsError::Corrupt(format!(
            "{count} records in {} bytes",
            payload.len()
        )));
    }
    let mut c = Cursor { b: &payload };
    let mut records = Vec::with_capacity(count as usize);
    for i in 0..count {
        let len = c.varint()?;
        if len < 0 {
            return Err(RecordsError::Corrupt(format!("record length {len}")));
        }
        let mut r = Cursor {
            b: c.take(len as usize, "a record")?,
        };
        let _attributes = r.u8()?;
        let ts_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        if offset_delta != i {
            return Err(RecordsError::Corrupt(format!(
                "record {i} has offset delta {offset_delta}: records of a produced batch are \
                 consecutive"
            )));
        }
        let key = r.nullable("key")?.map(Bytes::copy_from_slice);
        let value = r
            .nullable("value")?
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        let nh = r.varint()?;
        if nh < 0 || nh as usize > r.b.len() {
            return Err(RecordsError::Corrupt(format!("{nh} headers")));
        }
        let mut headers = Vec::with_capacity(nh as usize);
        for _ in 0..nh {
            let k = r
                .nullable("header key")?
                .ok_or_else(|| RecordsError::Corrupt("null header key".into()))?;
            let key = std::str::from_utf8(k)
                .map_err(|_| RecordsError::Corrupt("header key is not UTF-8".into()))?
                .to_owned();
            let value = r
                .nullable("header value")?
                .map(Bytes::copy_from_slice)
                .unwrap_or_default();
            headers.push(Header { key, value });
        }
        records.push(Record {
            key,
            value,
            headers,
            timestamp_ms: base_timestamp.saturating_add(ts_delta),
        });
    }
    if !c.b.is_empty() {
        return Err(RecordsError::Corrupt(format!(
            "{} bytes after the last record",
            c.b.len()
        )));
    }
    let producer = (producer_id >= 0).then_some(ProducerInfo {
        producer_id: producer_id as u64,
        producer_epoch: producer_epoch as u16,
        base_sequence: base_sequence as u32,
    });
    let compression = if attributes & 0x07 == 0 {
        Compression::None
    } else {
        Compression::Lz4
    };
    let mut batch = Vec::with_capacity(payload.len() + 64);
    encode_batch(&records, compression, producer, &mut batch)
        .map_err(|e| RecordsError::Corrupt(e.to_string()))?;
    Ok(Translated {
        batch: Bytes::from(batch),
        record_count: count as u32,
    })
}

fn put_varlong(out: &mut BytesMut, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.put_u8((u as u8) | 0x80);
        u >>= 7;
    }
    out.put_u8(u as u8);
}

fn varlong_len(v: i64) -> usize {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while u >= 0x80 {
        u >>= 7;
        n += 1;
    }
    n
}

/// Appends one stored Strata batch to `out` as a Kafka RecordBatch v2
/// (uncompressed) at `base_offset`, with `leader_epoch` as its partition
/// leader epoch. Records are transcoded straight from the stored payload
/// (no per-record allocation); `scratch` holds an LZ4 payload.
pub fn encode_fetched(
    stored: &Bytes,
    base_offset: u64,
    leader_epoch: i32,
    out: &mut BytesMut,
) -> Result<(), strata_proto::BatchError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let header = parse_header(stored)?;
    let start = out.len();
    out.reserve(BATCH_HEADER_LEN + header.uncompressed_len as usize + 16);
    out.put_i64(base_offset as i64);
    out.put_i32(0); // batch length, patched below
    out.put_i32(leader_epoch);
    out.put_i8(2);
    out.put_u32(0); // CRC, patched below
    out.put_i16(0); // attributes: no compression, create time
    out.put_i32(header.record_count as i32 - 1);
    out.put_i64(header.first_timestamp_ms);
    out.put_i64(header.max_timestamp_ms);
    match header.producer {
        Some(p) => {
            out.put_i64(p.producer_id as i64);
            out.put_i16(p.producer_epoch as i16);
            out.put_i32(p.base_sequence as i32);
        }
        None => {
            out.put_i64(-1);
            out.put_i16(-1);
            out.put_i32(-1);
        }
    }
    out.put_i32(header.record_count as i32);
    let base_ts = header.first_timestamp_ms;
    let mut i: i64 = 0;
    let visited = SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        visit_records(stored, &BatchLimits::UNLIMITED, &mut scratch, |r| {
            let key = r.key();
            let value = r.value();
            let ts = r.timestamp_ms - base_ts;
            let mut len = 1 + varlong_len(ts) + varlong_len(i);
            len += key.map_or(1, |k| varlong_len(k.len() as i64) + k.len());
            len += varlong_len(value.len() as i64) + value.len();
            len += varlong_len(r.header_count() as i64);
            for (k, v) in r.headers() {
                len +=
                    varlong_len(k.len() as i64) + k.len() + varlong_len(v.len() as i64) + v.len();
            }
            put_varlong(out, len as i64);
            out.put_u8(0);
            put_varlong(out, ts);
            put_varlong(out, i);
            match key {
                Some(k) => {
                    put_varlong(out, k.len() as i64);
                    out.put_slice(k);
                }
                None => put_varlong(out, -1),
            }
            put_varlong(out, value.len() as i64);
            out.put_slice(value);
            put_varlong(out, r.header_count() as i64);
            for (k, v) in r.headers() {
                put_varlong(out, k.len() as i64);
                out.put_slice(k);
                put_varlong(out, v.len() as i64);
                out.put_slice(v);
            }
            i += 1;
        })
    });
    if let Err(e) = visited {
        out.truncate(start);
        return Err(e);
    }
    let batch_len = (out.len() - start - 12) as i32;
    out[start + 8..start + 12].copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + ATTRIBUTES_AT..]);
    out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::batch::decode_records;

    fn strata_batch(records: &[Record]) -> Bytes {
        let mut v = Vec::new();
        encode_batch(records, Compression::None, None, &mut v).unwrap();
        Bytes::from(v)
    }

    fn rec(key: Option<&str>, value: &str, ts: i64) -> Record {
        Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            headers: vec![Header {
                key: "h".into(),
                value: Bytes::from_static(b"v"),
            }],
            timestamp_ms: ts,
        }
    }

    #[test]
    fn a_fetched_batch_translates_back_to_the_same_records() {
        let records = vec![rec(Some("k1"), "one", 1_000), rec(None, "two", 1_005)];
        let mut kafka = BytesMut::new();
        encode_fetched(&strata_batch(&records), 42, 7, &mut kafka).unwrap();
        assert_eq!(be_i64(&kafka, 0), 42);
        assert_eq!(be_i32(&kafka, 12), 7);
        let back = translate_produce(&kafka, &BatchLimits::default()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].record_count, 2);
        let decoded = decode_records(back[0].batch.clone(), &BatchLimits::default()).unwrap();
        assert_eq!(decoded, records);
    }

    #[test]
    fn a_compressed_stored_batch_is_served_uncompressed_and_round_trips() {
        let records: Vec<Record> = (0..1000).map(|i| rec(None, &"x".repeat(100), i)).collect();
        let mut v = Vec::new();
        encode_batch(&records, Compression::Lz4, None, &mut v).unwrap();
        let stored = Bytes::from(v);
        let mut kafka = BytesMut::new();
        encode_fetched(&stored, 0, 0, &mut kafka).unwrap();
        assert_eq!(be_i16(&kafka, 21) & 7, 0, "uncompressed");
        let back = translate_produce(&kafka, &BatchLimits::default()).unwrap();
        let decoded = decode_records(back[0].batch.clone(), &BatchLimits::default()).unwrap();
        assert_eq!(decoded, records);
    }

    #[test]
    fn a_flipped_byte_is_refused_by_the_crc() {
        let mut kafka = BytesMut::new();
        encode_fetched(&strata_batch(&[rec(None, "x", 1)]), 0, 0, &mut kafka).unwrap();
        let n = kafka.len();
        kafka[n - 1] ^= 1;
        let e = translate_produce(&kafka, &BatchLimits::default()).unwrap_err();
        assert!(matches!(e, RecordsError::Corrupt(_)), "{e}");
    }

    #[test]
    fn old_magic_and_truncation_are_refused() {
        let mut kafka = BytesMut::new();
        encode_fetched(&strata_batch(&[rec(None, "x", 1)]), 0, 0, &mut kafka).unwrap();
        let mut v1 = kafka.clone();
        v1[16] = 1;
        assert!(matches!(
            translate_produce(&v1, &BatchLimits::default()),
            Err(RecordsError::Unsupported(_))
        ));
        for cut in 0..kafka.len() {
            assert!(translate_produce(&kafka[..cut], &BatchLimits::default()).is_err());
        }
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
        let compressed = enc.finish().unwrap();
        let e = decompress(3, &compressed, 1 << 16).unwrap_err();
        assert!(matches!(e, RecordsError::TooLarge(_)), "{e}");
    }
}
