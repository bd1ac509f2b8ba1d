//! `strata-group`, the consumer-group coordinator as a pure state machine
//! (KIP-848 style): membership, epochs and fencing, a sticky uniform
//! assignor, incremental revoke-before-grant reconciliation, and committed
//! offsets.
//!
//! [`Coordinator`] is the API. Every mutating call returns the
//! [`GroupRecord`]s that make its effect durable; the broker appends them
//! to the internal offsets topic and, on failover, a new coordinator
//! rebuilds itself with [`Coordinator::replay`]. Below it, [`assignor`]
//! computes target assignments, [`subscription`] resolves topic lists and
//! patterns, [`record`] owns the record codec and [`placement`] the mapping
//! of a group to its coordinator partition.
//!
//! This crate does no I/O and knows nothing about Raft, gRPC, tokio or
//! clocks: time is passed in as `now_ms`, member ids are supplied by the
//! caller, and every map is ordered, so the same inputs give the same
//! outputs on every replica.

pub mod assignor;
pub mod config;
pub mod coordinator;
pub mod describe;
pub mod error;
pub mod placement;
pub mod record;
pub mod subscription;

#[cfg(test)]
mod tests;

pub use config::CoordinatorConfig;
pub use coordinator::{Coordinator, HeartbeatRequest, HeartbeatResponse};
pub use describe::{GroupDescription, GroupState, GroupSummary, MemberDescription};
pub use error::GroupError;
pub use placement::{coordinator_partition, validate_group_name};
pub use record::{GroupRecord, GroupSnapshot, MemberSnapshot, decode_record, encode_record};
pub use subscription::Subscription;

/// A partition of a topic: `(topic, partition)`.
pub type TopicPartition = (String, u32);

/// Non-internal topics and their partition counts, as the broker knows them now.
pub type Topics = std::collections::BTreeMap<String, u32>;
