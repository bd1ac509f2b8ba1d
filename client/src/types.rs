//! The client's domain types: what its API hands out and takes (topics,
//! partitions and their offsets, group offsets, node and replica status,
//! acknowledgement levels). Plain data, no I/O and no wire types: they sit
//! below everything else in the client, `convert.rs` maps them to and
//! from the prost messages, and the operations live in `admin.rs`,
//! `cluster.rs`, `producer.rs` and `consumer.rs`.

use std::collections::BTreeMap;

/// Per-topic settings; `None` leaves the broker's default (or, in
/// `alter`, the current value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// Time retention in ms; -1 keeps forever.
    pub retention_ms: Option<i64>,
    /// Size retention per partition in bytes; -1 means no limit.
    pub retention_bytes: Option<i64>,
    /// Segment size in bytes.
    pub segment_bytes: Option<u64>,
    /// Segment age in ms before it rolls.
    pub segment_ms: Option<i64>,
    /// Largest batch accepted, in bytes.
    pub max_batch_bytes: Option<u32>,
}

/// A topic: its settings and, per partition, placement and offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Settings; `None` fields follow the broker's defaults.
    pub config: TopicConfig,
    /// Every partition, in partition order.
    pub partition_info: Vec<PartitionInfo>,
}

impl TopicDescription {
    /// Records readable now, summed over the partitions.
    pub fn records(&self) -> u64 {
        self.partition_info
            .iter()
            .map(|p| p.high_watermark.saturating_sub(p.log_start_offset))
            .sum()
    }
}

/// One partition of a topic as the broker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition.
    pub partition: u32,
    /// Node leading it (`None`: no leader known, or a single node that
    /// does not report one).
    pub leader: Option<u64>,
    /// Nodes holding a replica.
    pub replicas: Vec<u64>,
    /// First readable offset.
    pub log_start_offset: u64,
    /// End of the committed prefix (the next offset to be written).
    pub high_watermark: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: u32,
}

/// A broker of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub node_id: u64,
    /// Client (gRPC) address.
    pub grpc_addr: String,
    /// HTTP address.
    pub http_addr: String,
}

/// Cluster metadata: brokers and topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Every registered broker.
    pub brokers: Vec<BrokerInfo>,
    /// The topics asked for (all of them when none were named).
    pub topics: Vec<TopicDescription>,
}

/// A group's committed offsets on one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffsets {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// `(partition, offset)`: the next offset the group will consume.
    pub offsets: Vec<(u32, u64)>,
}

/// Where to read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark (the next offset to be written).
    Latest,
    /// The first offset whose timestamp is at or after this (ms).
    Timestamp(i64),
}

/// Offsets of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The offset asked for.
    pub offset: u64,
    /// First readable offset.
    pub log_start_offset: u64,
    /// End of the committed prefix.
    pub high_watermark: u64,
}

/// What a node reports about itself and the Raft groups it hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: u64,
    /// Raft (broker-to-broker) address.
    pub raft_addr: String,
    /// Whether the node runs in cluster mode.
    pub clustered: bool,
    /// Every Raft group the node hosts a replica of.
    pub replicas: Vec<ReplicaStatus>,
    /// Time since the node started, in ms.
    pub uptime_ms: u64,
}

/// A replica's part in its Raft group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaRole {
    /// Leads the group.
    Leader,
    /// Follows the leader.
    Follower,
    /// Standing for election.
    Candidate,
    /// Catching up; not yet a voter.
    Learner,
    /// The group hit a storage error on this node (its log says which).
    Stopped,
    /// A role this client does not know (a newer broker).
    Other(String),
}

/// One replica of a Raft group (a partition, or the metadata group) on a
/// node. Log positions are Raft log indexes + 1 (0: empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Topic; empty for the metadata group.
    pub topic: String,
    /// Partition (0 for the metadata group).
    pub partition: u32,
    /// Role in the group.
    pub role: ReplicaRole,
    /// Raft term.
    pub term: u64,
    /// The group's leader as this replica knows it.
    pub leader: Option<u64>,
    /// Voters of the group.
    pub voters: Vec<u64>,
    /// Learners of the group.
    pub learners: Vec<u64>,
    /// End of the replica's Raft log.
    pub log_end: u64,
    /// End of what the replica has applied.
    pub applied_end: u64,
    /// Partitions: the applied next offset (the high watermark).
    pub high_watermark: u64,
    /// Partitions: the first readable offset.
    pub log_start_offset: u64,
    /// On the leader: each replica's matched log end.
    pub matched_end: BTreeMap<u64, u64>,
    /// End of the last snapshot.
    pub snapshot_end: u64,
    /// End of the Raft log deleted behind the snapshot: a replica that must
    /// start below it is sent the snapshot.
    pub purged_end: u64,
}

impl ReplicaStatus {
    /// Whether this is the metadata group's replica (not a partition's).
    pub fn is_metadata(&self) -> bool {
        self.topic.is_empty()
    }
}

/// When the broker acknowledges a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Acks {
    /// Once durable on a quorum (the default).
    #[default]
    All,
    /// Accepted for compatibility; the broker answers it as [`Acks::All`]
    /// (once durable on a quorum), the only point a replicated write
    /// offers.
    Leader,
    /// Fire and forget: no offsets are returned.
    None,
}

/// A partition of a topic: `(topic, partition)`.
pub type TopicPartition = (String, u32);

/// Where a group is coordinated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCoordinator {
    /// The coordinator's node id.
    pub node_id: u64,
    /// Its gRPC address.
    pub grpc_addr: String,
    /// The partition of `__consumer_offsets` holding the group.
    pub partition: u32,
}

/// One group in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// Group.
    pub group: String,
    /// "empty", "reconciling" or "stable".
    pub state: String,
    /// Members now.
    pub members: u32,
    /// The group epoch (bumped by every membership or subscription change).
    pub group_epoch: i32,
    /// The coordinator's node id.
    pub coordinator: u64,
    /// Whether its committed offsets hold retention back.
    pub hold: bool,
}

/// Every group of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupListing {
    /// The groups, by name.
    pub groups: Vec<GroupSummary>,
    /// Their committed offsets, per group and topic.
    pub offsets: Vec<GroupOffsets>,
    /// Coordinator partitions that could not be asked: their groups may be
    /// missing from the listing.
    pub unavailable_partitions: Vec<u32>,
}

/// A member as a group describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMemberInfo {
    /// Member id (issued by the coordinator).
    pub member_id: String,
    /// Static membership id, if any.
    pub instance_id: Option<String>,
    /// The member's epoch.
    pub member_epoch: i32,
    /// The client id it gave.
    pub client_id: String,
    /// The host it connected from.
    pub client_host: String,
    /// Subscribed topics.
    pub subscribed_topics: Vec<String>,
    /// Subscribed pattern, if any.
    pub subscribed_pattern: Option<String>,
    /// Partitions it may consume now.
    pub assigned: Vec<TopicPartition>,
    /// Partitions it was asked to release and has not yet.
    pub revoking: Vec<TopicPartition>,
    /// Where its assignment is heading.
    pub target: Vec<TopicPartition>,
    /// Its session timeout.
    pub session_timeout_ms: u32,
}

/// A partition of a group: committed offset, high watermark and lag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// High watermark, when its leader answered.
    pub high_watermark: Option<u64>,
    /// `high_watermark - committed` (committed 0 when none).
    pub lag: Option<u64>,
    /// The member owning it, if any.
    pub owner: Option<String>,
}

/// A group in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group.
    pub group: String,
    /// "empty", "reconciling" or "stable".
    pub state: String,
    /// Group epoch.
    pub group_epoch: i32,
    /// The epoch of the current target assignment.
    pub assignment_epoch: i32,
    /// The coordinator's node id.
    pub coordinator: u64,
    /// Members.
    pub members: Vec<GroupMemberInfo>,
    /// Partitions with offsets or owners.
    pub partitions: Vec<GroupPartitionLag>,
    /// Whether its committed offsets hold retention back.
    pub hold: bool,
}
