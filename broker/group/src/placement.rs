//! Group names: their validity and which coordinator partition of the
//! internal offsets topic owns each. Knows nothing about brokers or leaders.

use crate::GroupError;

/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bitwise.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Which coordinator partition (of `partitions` partitions of the internal
/// offsets topic) owns `group`: CRC-32 of its UTF-8 bytes mod `partitions`.
/// With `partitions == 0` the answer is 0.
pub fn coordinator_partition(group: &str, partitions: u32) -> u32 {
    crc32(group.as_bytes()).checked_rem(partitions).unwrap_or(0)
}

/// A group name must be non-empty, at most 255 bytes, and free of control
/// characters (including NUL).
pub fn validate_group_name(group: &str) -> Result<(), GroupError> {
    let reason = if group.is_empty() {
        "empty".to_owned()
    } else if group.len() > GROUP_NAME_BYTES_MAX {
        format!("{} bytes, at most {GROUP_NAME_BYTES_MAX}", group.len())
    } else if group.chars().any(char::is_control) {
        "contains a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(GroupError::InvalidGroupName {
        group: group.to_owned(),
        reason,
    })
}
