//! Strata's client library: [`Producer`], [`Consumer`], [`GroupConsumer`]
//! (a consumer-group member) and [`Admin`] over
//! the broker's gRPC API, with typed errors ([`ClientError`]).
//!
//! Its API speaks domain types ([`TopicDescription`], [`ClusterStatus`],
//! [`Record`], …), never the generated protobuf messages: those stay
//! behind `convert.rs`, so the wire can change without breaking callers.
//! [`ErrorCode`] mirrors the broker's stable error codes. The `strata` CLI (crate `strata-cli`) and
//! `strata-ml` are built on this API alone.

pub mod admin;
pub mod cluster;
pub mod consumer;
mod convert;
pub mod error;
pub mod group;
pub mod producer;
mod retry;
pub mod types;

pub use admin::{
    Admin, BrokerInfo, GroupCoordinator, GroupDescription, GroupListing, GroupMemberInfo,
    GroupOffsets, GroupPartitionLag, GroupSummary, Metadata, OffsetSpec, PartitionInfo,
    PartitionOffsets, TopicConfig, TopicDescription, TopicPartition,
};
pub use cluster::{
    ClusterStatus, NodeStatus, NodeUnreachable, NodeView, PartitionView, ReplicaLag, ReplicaRole,
    ReplicaStatus,
};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, ResetPolicy, Seek};
pub use error::ErrorCode;
pub use error::{ClientError, Result};
pub use group::{GroupConsumer, GroupConsumerConfig, RebalanceListener};
pub use producer::{Acks, Delivery, Producer, ProducerConfig, RecordMetadata};
pub use strata_proto::batch::{Compression, Header, Record};
