//! The group coordinator's error type: one enum for every operation, each
//! variant naming the group, member and values involved. It does not say
//! which wire status each maps to; the services do.

/// What went wrong in a group operation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// The group name is empty, too long or contains control characters.
    #[error("invalid group name {group:?}: {reason}")]
    InvalidGroupName {
        /// The name as given.
        group: String,
        /// Why it was refused.
        reason: String,
    },
    /// The member is not in the group (never joined, left, or was removed
    /// after its session or rebalance timeout). It must rejoin with epoch 0.
    #[error("unknown member {member:?} in group {group:?}: rejoin with epoch 0")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id as given.
        member: String,
    },
    /// A stale or future epoch, or a fetch/commit of a partition the member
    /// does not own. The member must rejoin with epoch 0.
    #[error(
        "member {member:?} of group {group:?} is fenced: epoch {epoch}, current {current}: {detail}; rejoin with epoch 0"
    )]
    FencedMemberEpoch {
        /// The group.
        group: String,
        /// The member id.
        member: String,
        /// The epoch the request carried.
        epoch: i32,
        /// The member's current epoch.
        current: i32,
        /// What exactly did not match.
        detail: String,
    },
    /// The operation needs a group without members.
    #[error("group {group:?} still has {members} member(s)")]
    GroupNotEmpty {
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
    },
    /// No such group.
    #[error("unknown group {group:?}")]
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// A commit below the committed offset.
    #[error(
        "offset regression in group {group:?} for {topic}/{partition}: committed {committed}, commit asked {offset}"
    )]
    OffsetRegression {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset committed now.
        committed: u64,
        /// The lower offset the request carried.
        offset: u64,
    },
    /// The topic does not exist or has fewer partitions.
    #[error("unknown topic or partition {topic}/{partition}")]
    UnknownTopicOrPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The group has reached its member limit.
    #[error("group {group:?} is full: at most {max} members")]
    GroupFull {
        /// The group.
        group: String,
        /// The configured maximum.
        max: u32,
    },
    /// A malformed request (bad epoch, timeout, subscription, ids).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A record read back from the log does not decode.
    #[error("corrupt group record: {0}")]
    Corrupt(String),
}
