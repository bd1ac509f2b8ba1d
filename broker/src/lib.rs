//! Strata's broker, in layers from the ground up, each importing only what
//! is below it (ARCHITECTURE.md draws them):
//!
//! 1. the storage engine, the `strata-log` crate (re-exported as [`log`]);
//! 2. partition state and rules that are pure data: [`settings`] (topic
//!    settings and names), [`dedup`] (the idempotent-producer table),
//!    [`config`], [`meta`] (the local sled store), [`metrics`] (which reads
//!    the core only through [`metrics::PartitionSource`]), and [`error`];
//! 3. replication, [`raft`]: the Raft log store on the partition log, the
//!    state machine, the network and the metadata image;
//! 4. the broker core: [`topic`] (a partition on the local or the Raft
//!    engine), [`cluster`] (a node's groups and the cluster operations),
//!    [`broker`] (every operation the services expose, in domain types)
//!    and [`coordinator`] (the consumer-group coordinators this node hosts,
//!    on the partitions of `__consumer_offsets` it leads);
//! 5. the gRPC and HTTP [`service`]s, and the Kafka protocol front-end
//!    ([`kafka`]), which translates to the core and the service layer;
//! 6. [`node::run`], which wires it all for the `strata-broker` binary.

/// The storage engine, re-exported so that `crate::log` reads as the layer
/// below the broker core.
pub use strata_log as log;

pub mod broker;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod dedup;
pub mod error;
pub mod kafka;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod producer_id;
pub mod raft;
pub mod service;
pub mod settings;
pub mod topic;

/// The broker's default log filter: info, and openraft's warnings except
/// its per-heartbeat and per-retry ones about an unreachable peer (the
/// network layer logs each peer going down and coming back once).
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::replication=error,\
openraft::core::heartbeat=error,openraft::engine::handler::replication_handler=error";
