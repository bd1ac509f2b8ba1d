//! Strata's broker. For now it holds the storage engine ([`log`]): the
//! segment log of one partition, built to serve as that partition's Raft
//! log. Replication, the gRPC and HTTP services and the `strata-broker`
//! binary arrive with their issues.

pub mod log;
