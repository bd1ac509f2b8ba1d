//! The log-start checkpoint: the one small file that says where the log
//! begins (`log-start.checkpoint`).
//!
//! It records the last purged Raft log id and the log start offset, and is
//! replaced atomically ([`super::storage::write_atomic`]) *before* any
//! segment below it is deleted, so a crash in the middle of a purge finishes
//! the purge on the next open instead of resurrecting data. openraft needs
//! the last purged id to survive restarts.

use super::entry::LogId;
use super::error::FormatError;

/// File name of the checkpoint inside the partition directory.
pub const CHECKPOINT_FILE: &str = "log-start.checkpoint";
const MAGIC: &[u8; 4] = b"STRC";
const VERSION: u16 = 1;
/// Encoded length.
pub const CHECKPOINT_LEN: usize = 44;

/// Where the log starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StartCheckpoint {
    /// The last Raft log id removed from the front of the log, if any.
    pub last_purged: Option<LogId>,
    /// The first offset a read may return.
    pub log_start_offset: u64,
}

impl StartCheckpoint {
    /// Encodes the checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&u16::from(self.last_purged.is_some()).to_le_bytes());
        let id = self.last_purged.unwrap_or_default();
        for v in [id.term, id.node, id.index, self.log_start_offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), CHECKPOINT_LEN);
        out
    }

    /// Decodes a checkpoint; `Err` says why it cannot be trusted.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() != CHECKPOINT_LEN {
            return Err(FormatError::WrongLength {
                len: b.len(),
                expected: CHECKPOINT_LEN,
            });
        }
        let crc = u32::from_le_bytes([b[40], b[41], b[42], b[43]]);
        if crc32fast::hash(&b[..40]) != crc {
            return Err(FormatError::Crc);
        }
        if &b[..4] != MAGIC {
            return Err(FormatError::BadMagic("start checkpoint"));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags > 1 {
            return Err(FormatError::Flags(flags));
        }
        let v = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[8 + i * 8..16 + i * 8]);
            u64::from_le_bytes(a)
        };
        Ok(StartCheckpoint {
            last_purged: (flags == 1).then(|| LogId::new(v(0), v(1), v(2))),
            log_start_offset: v(3),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        for c in [
            StartCheckpoint::default(),
            StartCheckpoint {
                last_purged: Some(LogId::new(4, 2, 99)),
                log_start_offset: 1234,
            },
        ] {
            let b = c.encode();
            assert_eq!(StartCheckpoint::decode(&b).unwrap(), c);
            for i in 0..b.len() {
                let mut d = b.clone();
                d[i] ^= 1;
                assert!(StartCheckpoint::decode(&d).is_err());
            }
        }
    }
}
