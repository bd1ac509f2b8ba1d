//! Which partition a keyed record goes to. Shared by every producer (the
//! client library, the HTTP API), so that a key maps to the same partition
//! whichever way it is produced. The hash is xxHash64 with seed 0, a fixed,
//! documented function (changing it would move keys between partitions).

use std::hash::Hasher;

/// The partition of `key` among `partitions` (> 0).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(key);
    (h.finish() % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u32; 3] = [5, 9, 9];

    #[test]
    fn stable_and_in_range() {
        // Pinned values: a change here moves every key to another partition.
        assert_eq!(
            [b"user-42".as_slice(), b"", b"orders"].map(|k| partition_for_key(k, 12)),
            PINNED
        );
        for k in 0..1000u32 {
            assert!(partition_for_key(&k.to_le_bytes(), 7) < 7);
        }
        let spread: std::collections::HashSet<u32> = (0..1000u32)
            .map(|k| partition_for_key(&k.to_le_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
