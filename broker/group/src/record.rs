//! The durable records of the coordinator and their log encoding: key =
//! group name bytes, value = versioned JSON. Decoding untrusted bytes never
//! panics. What a record means when applied lives in
//! [`crate::Coordinator::replay`], not here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{GroupError, Subscription, TopicPartition};

/// Version of the value encoding written by [`encode_record`].
pub const RECORD_VERSION: u32 = 1;

/// A durable change. The broker appends each returned record to the log
/// (in the order returned) and, on failover, a new coordinator replays them
/// in log order with [`crate::Coordinator::replay`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// The whole membership state of one group. Written whenever
    /// membership state changes, not on heartbeats that change nothing.
    Group(GroupSnapshot),
    /// Committed offsets of one group (one record per commit request).
    Offsets {
        /// The group.
        group: String,
        /// `(topic, partition, offset)` triples, set as given.
        offsets: Vec<(String, u32, u64)>,
        /// When they were committed.
        timestamp_ms: u64,
    },
    /// The group and all its offsets are gone.
    Deleted {
        /// The group.
        group: String,
    },
}

impl GroupRecord {
    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            Self::Group(s) => &s.group,
            Self::Offsets { group, .. } | Self::Deleted { group } => group,
        }
    }
}

/// The membership state of one group. Session and rebalance deadlines are
/// deliberately absent: a new coordinator restarts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    /// The group.
    pub group: String,
    /// Bumped on every change of the target assignment's inputs.
    pub group_epoch: i32,
    /// The group epoch the target was computed at.
    pub assignment_epoch: i32,
    /// Members, sorted by id.
    pub members: Vec<MemberSnapshot>,
    /// Subscribed topics and their partition counts at the last target
    /// computation; `tick` compares it with the topics that exist now.
    pub topics: BTreeMap<String, u32>,
    /// Last membership change or commit, for offsets retention.
    pub last_change_ms: u64,
    /// Whether the group's committed offsets hold retention back (records
    /// not yet consumed by the group are kept, within the broker's hold
    /// limits). Absent in records written before holds existed: false.
    #[serde(default)]
    pub hold: bool,
}

/// The durable state of one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    /// The member id.
    pub member_id: String,
    /// Static membership instance id.
    pub instance_id: Option<String>,
    /// The member's epoch.
    pub member_epoch: i32,
    /// A static member that left with epoch -2 and keeps its partitions
    /// until its session deadline.
    pub left: bool,
    /// Client id, for describe.
    pub client_id: String,
    /// Client address, for describe.
    pub client_host: String,
    /// What it subscribes to.
    pub subscription: Subscription,
    /// Its session timeout.
    pub session_timeout_ms: u32,
    /// Its rebalance timeout.
    pub rebalance_timeout_ms: u32,
    /// Partitions it may consume.
    pub assigned: Vec<TopicPartition>,
    /// Partitions it was asked to release and has not yet.
    pub revoking: Vec<TopicPartition>,
    /// Its share of the target assignment.
    pub target: Vec<TopicPartition>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    record: GroupRecord,
}

/// Encodes a record for the log: key = group name bytes, value = versioned
/// JSON.
pub fn encode_record(r: &GroupRecord) -> (Vec<u8>, Vec<u8>) {
    let value = serde_json::to_vec(&Envelope {
        v: RECORD_VERSION,
        record: r.clone(),
    })
    // Serializing plain structs with string map keys cannot fail; an
    // error here is a broken invariant, not input.
    .unwrap_or_else(|e| panic!("group record does not serialize: {e}"));
    (r.group().as_bytes().to_vec(), value)
}

/// Decodes a record written by [`encode_record`]; anything else is
/// [`GroupError::Corrupt`].
pub fn decode_record(key: &[u8], value: &[u8]) -> Result<GroupRecord, GroupError> {
    let key = std::str::from_utf8(key)
        .map_err(|e| GroupError::Corrupt(format!("record key is not UTF-8: {e}")))?;
    let envelope: Envelope = serde_json::from_slice(value)
        .map_err(|e| GroupError::Corrupt(format!("record value of group {key:?}: {e}")))?;
    if envelope.v != RECORD_VERSION {
        return Err(GroupError::Corrupt(format!(
            "record of group {key:?} has version {}, this build reads {RECORD_VERSION}",
            envelope.v
        )));
    }
    if envelope.record.group() != key {
        return Err(GroupError::Corrupt(format!(
            "record key {key:?} names another group than its value ({:?})",
            envelope.record.group()
        )));
    }
    Ok(envelope.record)
}
