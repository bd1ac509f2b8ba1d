//! Read-only views of groups for `describe` and `list`: plain data the
//! services turn into responses. Computing them is the coordinator's job.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::{Subscription, TopicPartition};

/// A group as shown by describe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// Empty, reconciling or stable.
    pub state: GroupState,
    /// The group epoch.
    pub group_epoch: i32,
    /// The epoch the target assignment was computed at.
    pub assignment_epoch: i32,
    /// Members, sorted by id.
    pub members: Vec<MemberDescription>,
    /// Committed offsets.
    pub offsets: BTreeMap<TopicPartition, u64>,
    /// Whether the committed offsets hold retention back.
    pub hold: bool,
}

/// A member as shown by describe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// Static membership instance id.
    pub instance_id: Option<String>,
    /// The member's epoch.
    pub member_epoch: i32,
    /// Client id given on join.
    pub client_id: String,
    /// Client address given on join.
    pub client_host: String,
    /// What it subscribes to.
    pub subscription: Subscription,
    /// Partitions it may consume, sorted.
    pub assigned: Vec<TopicPartition>,
    /// Partitions it must release, sorted.
    pub revoking: Vec<TopicPartition>,
    /// Its share of the target assignment, sorted.
    pub target: Vec<TopicPartition>,
    /// Its session timeout.
    pub session_timeout_ms: u32,
}

/// The state of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Some member's assigned partitions differ from its target, or it
    /// still has partitions to release.
    Reconciling,
    /// Every member owns exactly its target.
    Stable,
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::Reconciling => "reconciling",
            Self::Stable => "stable",
        })
    }
}

/// A group as shown by list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    /// The group.
    pub group: String,
    /// Empty, reconciling or stable.
    pub state: GroupState,
    /// How many members.
    pub members: usize,
    /// The group epoch.
    pub group_epoch: i32,
    /// Whether the committed offsets hold retention back.
    pub hold: bool,
}
