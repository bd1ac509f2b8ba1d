//! Strata's broker: the storage engine ([`log`]), the broker core over it
//! ([`broker`], [`topic`], [`meta`]), the gRPC and HTTP services
//! ([`service`]), metrics, configuration, and [`node::run`], which wires
//! them together for the `strata-broker` binary. Replication arrives with
//! its issue.

/// The storage engine, re-exported so that `crate::log` reads as the layer
/// below the broker core.
pub use strata_log as log;

pub mod broker;
pub mod cluster;
pub mod config;
pub mod dedup;
pub mod error;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod service;
pub mod settings;
pub mod topic;

/// The broker's default log filter: info, and openraft's warnings except
/// its per-heartbeat and per-retry ones about an unreachable peer (the
/// network layer logs each peer going down and coming back once).
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::replication=error,\
openraft::core::heartbeat=error,openraft::engine::handler::replication_handler=error";
