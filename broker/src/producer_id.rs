//! Idempotent-producer ids that prove they were issued.
//!
//! A producer id is 63 bits (positive as a signed 64-bit number, as Kafka's
//! are): a 48-bit random nonce, then a 15-bit tag, the nonce's SipHash-2-4
//! under the cluster's secret [`ProducerIdKey`]. Any node holding the key
//! issues ids on its own (no metadata write, so producing never waits for
//! the metadata leader) and every partition leader checks the tag before it
//! accepts a batch, so an id that was never issued is refused
//! (`UNKNOWN_PRODUCER`) instead of creating state — and of colliding with a
//! real producer's id later.
//!
//! The split trades the two risks: two issued ids collide (so one producer's
//! batches are taken for the other's retries) with probability about
//! n² / 2^49 among n producers alive in one partition (1.8 × 10⁻⁷ for
//! 10,000, the default per-partition bound); an id made up without the key
//! passes with probability 2^-15, and then only creates a producer of its
//! own (to write under another's live id one must guess all 63 bits).
//!
//! Pure: no I/O beyond the OS's random source.

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// Bits of the tag at the bottom of an id.
const TAG_BITS: u32 = 15;
/// Bits of the random nonce above it.
const NONCE_BITS: u32 = 48;
const _: () = assert!(TAG_BITS + NONCE_BITS == 63);

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

/// The cluster's secret for producer ids (16 bytes, SipHash's key).
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerIdKey(pub [u8; 16]);

impl std::fmt::Debug for ProducerIdKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProducerIdKey(..)")
    }
}

impl ProducerIdKey {
    /// A new random key.
    pub fn generate() -> Result<Self, RandomError> {
        let mut k = [0u8; 16];
        getrandom::fill(&mut k).map_err(|e| RandomError(e.to_string()))?;
        Ok(ProducerIdKey(k))
    }

    fn tag(&self, nonce: u64) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.0);
        h.write_u64(nonce);
        h.finish() & ((1 << TAG_BITS) - 1)
    }

    /// Issues a new id: a random nonce (never 0) and its tag.
    pub fn issue(&self) -> Result<u64, RandomError> {
        loop {
            let nonce =
                getrandom::u64().map_err(|e| RandomError(e.to_string()))? >> (64 - NONCE_BITS);
            if nonce != 0 {
                return Ok(self.id_for(nonce));
            }
        }
    }

    fn id_for(&self, nonce: u64) -> u64 {
        (nonce << TAG_BITS) | self.tag(nonce)
    }

    /// Whether `id` was issued under this key.
    pub fn verify(&self, id: u64) -> bool {
        let nonce = id >> TAG_BITS;
        id >> 63 == 0 && nonce != 0 && self.tag(nonce) == id & ((1 << TAG_BITS) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_verify_and_are_positive() {
        let k = ProducerIdKey::generate().expect("random");
        for _ in 0..1_000 {
            let id = k.issue().expect("random");
            assert!(id > 0 && id <= i64::MAX as u64);
            assert!(k.verify(id), "{id}");
        }
    }

    #[test]
    fn ids_made_up_or_under_another_key_are_refused() {
        let k = ProducerIdKey([7; 16]);
        let other = ProducerIdKey([8; 16]);
        // Small and sequential ids (what a client guessing would try).
        let accepted = (0..10_000u64).filter(|id| k.verify(*id)).count();
        assert_eq!(accepted, 0, "ids below 2^15 have a zero nonce");
        let foreign = (0..2_000)
            .map(|_| other.issue().expect("random"))
            .filter(|id| k.verify(*id))
            .count();
        // Each passes with probability 2^-15: 2,000 tries give 0 or 1
        // almost always; 3 or more would mean a broken tag.
        assert!(foreign <= 2, "{foreign} foreign ids accepted");
        assert!(!k.verify(u64::MAX));
    }

    #[test]
    fn the_tag_is_a_function_of_key_and_nonce() {
        let k = ProducerIdKey([1; 16]);
        assert_eq!(k.id_for(12_345), k.id_for(12_345));
        assert_eq!(k.id_for(12_345) >> TAG_BITS, 12_345);
        assert_eq!(format!("{k:?}"), "ProducerIdKey(..)");
    }
}
