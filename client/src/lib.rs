//! Strata's client library: [`Producer`], [`Consumer`] and [`Admin`] over
//! the broker's gRPC API, with typed errors ([`ClientError`]). The `strata`
//! CLI (crate `strata-cli`) is a thin binary over it.

pub mod admin;
pub mod cluster;
pub mod consumer;
pub mod error;
pub mod producer;
mod retry;

pub use admin::{Admin, OffsetSpec, PartitionOffsets, TopicConfig};
pub use cluster::{ClusterStatus, NodeView, PartitionView, ReplicaLag};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, ResetPolicy, Seek};
pub use error::{ClientError, Result};
pub use producer::{Acks, Delivery, Producer, ProducerConfig, RecordMetadata};
pub use strata_proto::batch::{Compression, Header, Record};
