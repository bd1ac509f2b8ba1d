//! Strata's broker: the storage engine ([`log`]), the broker core over it
//! ([`broker`], [`topic`], [`meta`]), the gRPC and HTTP services
//! ([`service`]), metrics, configuration, and [`node::run`], which wires
//! them together for the `strata-broker` binary. Replication arrives with
//! its issue.

pub mod broker;
pub mod config;
pub mod error;
pub mod log;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod service;
pub mod topic;
