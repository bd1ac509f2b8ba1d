//! The Kafka wire primitives: a bounded reader and a writer for the
//! protocol's integers, varints, strings, byte arrays, arrays and tagged
//! fields, in both the classic and the "flexible" (compact) encodings.
//!
//! Every length or count read off the wire is checked against the bytes
//! that remain before anything is allocated: an array element takes at
//! least one byte, so a count larger than what is left is refused as
//! malformed instead of reserving memory for it. A request can therefore
//! never make the broker allocate more than its own frame's size (the
//! frame itself is capped by `kafka_frame_bytes_max`). This is why the
//! front-end decodes requests itself rather than with a generated codec
//! that pre-allocates from wire counts (see ARCHITECTURE.md).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A request that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ended inside a field.
    #[error("request truncated: {what} needs {need} bytes, {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes left in the frame.
        left: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// Reads one request body. `flexible` selects the compact encodings.
pub struct Reader {
    buf: Bytes,
    /// Whether strings, arrays and bytes use the compact (varint) forms and
    /// structures end with tagged fields.
    pub flexible: bool,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes, flexible: bool) -> Self {
        Reader { buf, flexible }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, what: &'static str, n: usize) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            return Err(WireError::Truncated {
                what,
                need: n,
                left: self.buf.remaining(),
            });
        }
        Ok(())
    }

    /// An `int8`.
    pub fn i8(&mut self) -> Result<i8, WireError> {
        self.need("int8", 1)?;
        Ok(self.buf.get_i8())
    }

    /// A `boolean`.
    pub fn bool(&mut self) -> Result<bool, WireError> {
        Ok(self.i8()? != 0)
    }

    /// An `int16`.
    pub fn i16(&mut self) -> Result<i16, WireError> {
        self.need("int16", 2)?;
        Ok(self.buf.get_i16())
    }

    /// An `int32`.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        self.need("int32", 4)?;
        Ok(self.buf.get_i32())
    }

    /// An `int64`.
    pub fn i64(&mut self) -> Result<i64, WireError> {
        self.need("int64", 8)?;
        Ok(self.buf.get_i64())
    }

    /// A `uuid` (16 bytes).
    pub fn uuid(&mut self) -> Result<[u8; 16], WireError> {
        self.need("uuid", 16)?;
        let mut u = [0u8; 16];
        self.buf.copy_to_slice(&mut u);
        Ok(u)
    }

    /// An `unsigned_varint` (at most 5 bytes, 32 bits).
    pub fn uvarint(&mut self) -> Result<u32, WireError> {
        let mut v: u32 = 0;
        for i in 0..5 {
            self.need("varint", 1)?;
            let b = self.buf.get_u8();
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Malformed("varint longer than 5 bytes".into()))
    }

    /// A signed zig-zag `varint`.
    pub fn varint(&mut self) -> Result<i32, WireError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    /// The length prefix of a nullable string, bytes or array (`None` for
    /// null): a varint of length + 1 when flexible, else an `int16`
    /// (`classic16`, strings) or `int32` where −1 is null.
    fn nullable_len(
        &mut self,
        what: &'static str,
        classic16: bool,
    ) -> Result<Option<usize>, WireError> {
        let n = match (self.flexible, classic16) {
            (true, _) => return Ok(self.uvarint()?.checked_sub(1).map(|n| n as usize)),
            (false, true) => i32::from(self.i16()?),
            (false, false) => self.i32()?,
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(WireError::Malformed(format!("{what} length {n}"))),
            n => Ok(Some(n as usize)),
        }
    }

    /// A length read off the wire, checked against the bytes left.
    fn length(&mut self, what: &'static str, n: usize) -> Result<usize, WireError> {
        self.need(what, n)?;
        Ok(n)
    }

    /// A nullable string, in the reader's encoding.
    pub fn nullable_string(&mut self) -> Result<Option<String>, WireError> {
        let Some(len) = self.nullable_len("string", true)? else {
            return Ok(None);
        };
        let len = self.length("string", len)?;
        let b = self.buf.split_to(len);
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| WireError::Malformed("string is not UTF-8".into()))
    }

    /// A non-null string.
    pub fn string(&mut self) -> Result<String, WireError> {
        self.nullable_string()?
            .ok_or_else(|| WireError::Malformed("null where a string is required".into()))
    }

    /// A classic (`int16`-length) nullable string whatever the encoding:
    /// the request header's client id.
    pub fn header_string(&mut self) -> Result<Option<String>, WireError> {
        let flexible = std::mem::replace(&mut self.flexible, false);
        let s = self.nullable_string();
        self.flexible = flexible;
        s
    }

    /// Nullable bytes (the records field), in the reader's encoding.
    pub fn nullable_bytes(&mut self) -> Result<Option<Bytes>, WireError> {
        let Some(len) = self.nullable_len("bytes", false)? else {
            return Ok(None);
        };
        let len = self.length("bytes", len)?;
        Ok(Some(self.buf.split_to(len)))
    }

    /// An array's element count (`None` for a null array), bounded by the
    /// bytes left: every element takes at least one byte.
    pub fn array_len(&mut self) -> Result<Option<usize>, WireError> {
        let Some(n) = self.nullable_len("array", false)? else {
            return Ok(None);
        };
        if n > self.remaining() {
            return Err(WireError::Malformed(format!(
                "array of {n} elements in {} bytes",
                self.remaining()
            )));
        }
        Ok(Some(n))
    }

    /// A nullable array, each element read by `f`.
    pub fn nullable_array<T>(
        &mut self,
        mut f: impl FnMut(&mut Reader) -> Result<T, WireError>,
    ) -> Result<Option<Vec<T>>, WireError> {
        let Some(n) = self.array_len()? else {
            return Ok(None);
        };
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(Some(v))
    }

    /// An array (null reads as empty).
    pub fn array<T>(
        &mut self,
        f: impl FnMut(&mut Reader) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        Ok(self.nullable_array(f)?.unwrap_or_default())
    }

    /// The tagged fields that end a flexible structure: skipped (none of
    /// the requests served has a tagged field the broker needs).
    pub fn tags(&mut self) -> Result<(), WireError> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint()? as usize;
        if n > self.remaining() {
            return Err(WireError::Malformed(format!("{n} tagged fields")));
        }
        for _ in 0..n {
            let _tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            let size = self.length("tagged field", size)?;
            self.buf.advance(size);
        }
        Ok(())
    }
}

/// Writes one response body.
pub struct Writer {
    buf: BytesMut,
    /// Whether to write the compact encodings and tagged-field sections.
    pub flexible: bool,
}

impl Writer {
    /// An empty writer.
    pub fn new(flexible: bool) -> Self {
        Writer {
            buf: BytesMut::with_capacity(256),
            flexible,
        }
    }

    /// The bytes written.
    pub fn finish(self) -> BytesMut {
        self.buf
    }

    /// An `int8`.
    pub fn i8(&mut self, v: i8) {
        self.buf.put_i8(v);
    }

    /// A `boolean`.
    pub fn bool(&mut self, v: bool) {
        self.buf.put_i8(i8::from(v));
    }

    /// An `int16`.
    pub fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }

    /// An `int32`.
    pub fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }

    /// An `int64`.
    pub fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }

    /// A `uuid`.
    pub fn uuid(&mut self, v: [u8; 16]) {
        self.buf.put_slice(&v);
    }

    /// An `unsigned_varint`.
    pub fn uvarint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }

    fn len_prefix(&mut self, len: Option<usize>, classic16: bool) {
        match (self.flexible, len) {
            (true, None) => self.uvarint(0),
            (true, Some(n)) => self.uvarint(n as u32 + 1),
            (false, None) if classic16 => self.i16(-1),
            (false, None) => self.i32(-1),
            (false, Some(n)) if classic16 => self.i16(n as i16),
            (false, Some(n)) => self.i32(n as i32),
        }
    }

    /// A nullable string (truncated to the format's 32,767 bytes).
    pub fn nullable_string(&mut self, s: Option<&str>) {
        match s {
            None => self.len_prefix(None, true),
            Some(s) => {
                let mut end = s.len().min(i16::MAX as usize);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.len_prefix(Some(end), true);
                self.buf.put_slice(&s.as_bytes()[..end]);
            }
        }
    }

    /// A string.
    pub fn string(&mut self, s: &str) {
        self.nullable_string(Some(s));
    }

    /// Nullable bytes.
    pub fn nullable_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            None => self.len_prefix(None, false),
            Some(b) => {
                self.len_prefix(Some(b.len()), false);
                self.buf.put_slice(b);
            }
        }
    }

    /// An array's length prefix; the caller writes the elements.
    pub fn array_len(&mut self, n: usize) {
        self.len_prefix(Some(n), false);
    }

    /// A null array.
    pub fn null_array(&mut self) {
        self.len_prefix(None, false);
    }

    /// An array, each element written by `f`.
    pub fn array<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Writer, &T)) {
        self.array_len(items.len());
        for i in items {
            f(self, i);
        }
    }

    /// An empty tagged-field section (flexible versions only).
    pub fn tags(&mut self) {
        if self.flexible {
            self.uvarint(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut w = Writer::new(true);
            w.uvarint(v);
            let mut r = Reader::new(w.finish().freeze(), true);
            assert_eq!(r.uvarint().unwrap(), v);
        }
    }

    #[test]
    fn a_huge_array_count_is_refused_before_allocating() {
        // 2^31 - 1 elements claimed in a 4-byte body.
        let mut r = Reader::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]), false);
        let e = r.array(|r| r.i64()).unwrap_err();
        assert!(matches!(e, WireError::Malformed(_)), "{e}");
        // The compact form: uvarint 2^32-1.
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]), true);
        assert!(r.array(|r| r.i64()).is_err());
    }

    #[test]
    fn strings_and_arrays_round_trip_in_both_encodings() {
        for flexible in [false, true] {
            let mut w = Writer::new(flexible);
            w.string("topic");
            w.nullable_string(None);
            w.array(&[1i32, 2, 3], |w, v| w.i32(*v));
            w.nullable_bytes(Some(b"abc"));
            w.tags();
            let mut r = Reader::new(w.finish().freeze(), flexible);
            assert_eq!(r.string().unwrap(), "topic");
            assert_eq!(r.nullable_string().unwrap(), None);
            assert_eq!(r.array(|r| r.i32()).unwrap(), vec![1, 2, 3]);
            assert_eq!(r.nullable_bytes().unwrap().unwrap(), &b"abc"[..]);
            r.tags().unwrap();
            assert_eq!(r.remaining(), 0);
        }
    }

    proptest! {
        /// Arbitrary bytes never panic the reader, and never make it
        /// allocate beyond the input's size.
        #[test]
        fn arbitrary_bytes_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256), flexible: bool) {
            let mut r = Reader::new(Bytes::from(bytes), flexible);
            let _ = r.array(|r| {
                let s = r.nullable_string()?;
                let a = r.array(|r| r.nullable_bytes())?;
                r.tags()?;
                Ok((s, a))
            });
        }
    }
}
