//! The broker's configuration: embedded defaults, an optional TOML file, and
//! command-line overrides (applied in that order by `main.rs`).
//!
//! Every limit the services enforce is here with its default. Topic-level
//! settings (retention, segment size and age, batch size) have broker-wide
//! defaults here and per-topic overrides in the metadata store.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::LogDefaults;

/// A configuration the broker cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file does not parse or has unknown keys.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// A `--peers` entry is malformed.
    #[error("peer {entry:?}: {why}")]
    Peer {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A node id appears twice in the peers.
    #[error("peer id {0} is listed twice")]
    DuplicatePeer(u64),
    /// A setting is out of range or contradicts another.
    #[error("{0}")]
    Invalid(String),
    /// The topic defaults do not make a usable log configuration.
    #[error("log defaults: {0}")]
    LogDefaults(#[from] crate::log::ConfigError),
}

/// Configuration of one broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This broker's node id.
    pub node_id: u64,
    /// Where topics and metadata are stored. Default `./strata-data`.
    pub data_dir: PathBuf,
    /// gRPC listen address. Default 127.0.0.1:7070.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address. Default 127.0.0.1:7080.
    pub http_addr: SocketAddr,
    /// Whether the Kafka protocol listener runs. Default true.
    pub kafka_enabled: bool,
    /// Kafka protocol listen address. Default 127.0.0.1:9092.
    pub kafka_addr: SocketAddr,
    /// The Kafka address given to clients in Metadata, when it is not the
    /// bound one (behind NAT, or bound to 0.0.0.0). Default: the bound one.
    pub kafka_advertised_addr: Option<SocketAddr>,
    /// Largest Kafka request frame accepted; a larger one closes the
    /// connection before anything is read into memory. Default 100 MiB
    /// (Kafka's `socket.request.max.bytes`).
    pub kafka_frame_bytes_max: usize,
    /// Kafka connections served at once; further ones are closed at
    /// accept. Default 1024.
    pub kafka_connections_max: usize,
    /// Kafka fetch sessions (KIP-227) kept at once; the least recently used
    /// is dropped for a new one (its client falls back to a full fetch).
    /// 0 declines sessions. Default 1000.
    pub kafka_fetch_sessions_max: usize,
    /// How often retention runs, in milliseconds. Default 60 s.
    pub retention_check_ms: u64,
    /// Bytes of batches per fetch response message, unless the request asks
    /// for less. Default 1 MiB.
    pub fetch_bytes_default: u32,
    /// Longest wait of a gRPC Fetch without `follow` at the tail: a
    /// request's `max_wait_ms` above it is cut to it. Default 60 s.
    pub fetch_wait_ms_max: u64,
    /// Largest HTTP request body. Default 8 MiB.
    pub http_body_bytes_max: usize,
    /// How long an HTTP client may take to send a request's headers (for
    /// a connection's first request: from accept, so a client that sends
    /// nothing is closed too; later ones: from the previous response),
    /// and then its body, before the connection is closed (408 for a
    /// body). Default 10 s.
    pub http_read_timeout_ms: u64,
    /// Open HTTP connections at most; further clients wait to be accepted.
    /// Default 1024.
    pub http_connections_max: usize,
    /// Largest gRPC message. Default 16 MiB.
    pub grpc_message_bytes_max: usize,
    /// Most records one HTTP read returns. Default 10,000.
    pub http_records_max: u32,
    /// Requests queued per partition writer before producers wait. Default 4096.
    pub writer_queue_depth: usize,
    /// Threads that append and fsync for every partition of the node (a
    /// fixed pool: the node's thread count does not grow with its
    /// partitions; partitions waiting on the disk fsync concurrently on
    /// different threads). Default 8.
    pub writer_threads: usize,
    /// Idle partition groups stop ticking and heartbeating (a node-level
    /// probe between peers replaces their heartbeats). Default true; false
    /// keeps every group's timers running.
    pub raft_hibernate: bool,
    /// Partitions a topic may have. Default 1024.
    pub partitions_max: u32,
    /// An idempotent producer not seen for this long is forgotten by a
    /// partition (its next batch starts it afresh, so a retry of a batch
    /// sent before that could be written twice). Checked every
    /// `retention_check_ms`. Default 86,400,000 (1 day, Kafka's
    /// `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
    /// Idempotent producers a partition keeps at most; past it, the least
    /// recently seen are forgotten (on a single node as a new producer
    /// arrives, in a cluster at the next check). Default 10,000.
    pub producers_per_partition_max: u32,
    /// A batch whose newest record timestamp is more than this far ahead
    /// of the broker's clock is refused with INVALID_TIMESTAMP (time
    /// retention keeps a segment until its newest timestamp is old enough,
    /// so one record dated in the future would pin the partition's log).
    /// Default 3,600,000 (1 hour, Kafka 4's
    /// `log.message.timestamp.after.max.ms`).
    pub message_timestamp_after_max_ms: u64,
    /// Raft peer listen address. Set: this broker is a cluster node
    /// (partitions replicated by Raft, metadata in the metadata group).
    /// Unset (the default): a standalone single-node broker.
    pub raft_addr: Option<SocketAddr>,
    /// Initial voters of the cluster as `id=host:port` (Raft addresses,
    /// this node included). Nodes started with the same list form the
    /// cluster; a node started without peers waits for `strata cluster
    /// init` or to be added with `strata cluster add-node`.
    pub peers: Vec<String>,
    /// The metadata group snapshots its state after this many log entries
    /// (topic changes, offset commits, producer ids, leader reports) and
    /// deletes the log behind the snapshot, keeping min(1,000, half of
    /// this) entries for lagging peers. Default 10,000.
    pub meta_snapshot_entries: u64,
    /// Broker-wide defaults for topics (segments, retention, batch size).
    pub log: LogDefaults,
    /// Most bytes per partition retention keeps for consumer groups'
    /// retention holds (segments retention would delete, kept because a
    /// holding group has not consumed them); past it the oldest go anyway.
    /// -1: no limit. Default 1 GiB.
    pub retention_hold_max_bytes: i64,
    /// Segments kept for a hold go anyway once their newest record is older
    /// than this. -1: no limit. Default 7 days.
    pub retention_hold_max_ms: i64,
    /// Partitions of the internal topic `__consumer_offsets`, created on
    /// the first group request; each partition's leader coordinates the
    /// groups hashed onto it. Fixed once the topic exists (a later value
    /// is ignored; the topic's partition count is used). Default 16.
    pub group_coordinator_partitions: u32,
    /// Consumer-group timeouts and limits (the `[groups]` table: heartbeat
    /// interval, session timeout bounds and default, rebalance timeout,
    /// offsets retention of empty groups, members per group).
    pub groups: strata_group::CoordinatorConfig,
}

/// Parses `id=host:port` peer entries.
pub fn parse_peers(
    peers: &[String],
) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
    let mut out = std::collections::BTreeMap::new();
    for p in peers {
        let (id, addr) = p.split_once('=').ok_or_else(|| ConfigError::Peer {
            entry: p.clone(),
            why: "expected id=host:port",
        })?;
        let id: u64 = id.trim().parse().map_err(|_| ConfigError::Peer {
            entry: p.clone(),
            why: "node id must be a number",
        })?;
        let addr = addr.trim();
        if addr.parse::<SocketAddr>().is_err() && !addr.contains(':') {
            return Err(ConfigError::Peer {
                entry: p.clone(),
                why: "address must be host:port",
            });
        }
        if out.insert(id, addr.to_owned()).is_some() {
            return Err(ConfigError::DuplicatePeer(id));
        }
    }
    Ok(out)
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            data_dir: PathBuf::from("strata-data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7080)),
            kafka_enabled: true,
            kafka_addr: SocketAddr::from(([127, 0, 0, 1], 9092)),
            kafka_advertised_addr: None,
            kafka_frame_bytes_max: 100 << 20,
            kafka_connections_max: 1024,
            kafka_fetch_sessions_max: 1000,
            retention_check_ms: 60_000,
            fetch_bytes_default: 1 << 20,
            fetch_wait_ms_max: 60_000,
            http_body_bytes_max: 8 << 20,
            http_read_timeout_ms: 10_000,
            http_connections_max: 1024,
            grpc_message_bytes_max: 16 << 20,
            http_records_max: 10_000,
            writer_queue_depth: 4096,
            writer_threads: 8,
            raft_hibernate: true,
            partitions_max: 1024,
            producer_id_expiration_ms: 86_400_000,
            producers_per_partition_max: 10_000,
            message_timestamp_after_max_ms: 3_600_000,
            raft_addr: None,
            peers: Vec::new(),
            meta_snapshot_entries: 10_000,
            log: LogDefaults::default(),
            group_coordinator_partitions: 16,
            retention_hold_max_bytes: 1 << 30,
            retention_hold_max_ms: 7 * 24 * 3600 * 1000,
            groups: strata_group::CoordinatorConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// How long and how many idempotent producers a partition keeps.
    pub fn producer_expiry(&self) -> crate::dedup::Expiry {
        crate::dedup::Expiry {
            idle_ms: self.producer_id_expiration_ms,
            producers_max: self.producers_per_partition_max,
        }
    }

    /// Parses a TOML config file's text; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks the settings that cannot be checked by their types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka_frame_bytes_max < 1024 || self.kafka_connections_max == 0 {
            return Err(ConfigError::Invalid(format!(
                "kafka_frame_bytes_max must be at least 1024 (got {}) and kafka_connections_max \
                 at least 1 (got {})",
                self.kafka_frame_bytes_max, self.kafka_connections_max
            )));
        }
        if self.group_coordinator_partitions == 0 || self.group_coordinator_partitions > 1024 {
            return Err(ConfigError::Invalid(format!(
                "group_coordinator_partitions must be between 1 and 1024, got {}",
                self.group_coordinator_partitions
            )));
        }
        for (name, v) in [
            ("retention_hold_max_bytes", self.retention_hold_max_bytes),
            ("retention_hold_max_ms", self.retention_hold_max_ms),
        ] {
            if v < -1 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be -1 (no limit) or at least 0, got {v}"
                )));
            }
        }
        let g = &self.groups;
        if g.session_timeout_min_ms == 0
            || g.session_timeout_min_ms > g.session_timeout_default_ms
            || g.session_timeout_default_ms > g.session_timeout_max_ms
        {
            return Err(ConfigError::Invalid(format!(
                "groups: need 0 < session_timeout_min_ms ({}) <= session_timeout_default_ms ({}) <= session_timeout_max_ms ({})",
                g.session_timeout_min_ms, g.session_timeout_default_ms, g.session_timeout_max_ms
            )));
        }
        if g.heartbeat_interval_ms == 0 || g.max_members == 0 || g.rebalance_timeout_default_ms == 0
        {
            return Err(ConfigError::Invalid(
                "groups: heartbeat_interval_ms, max_members and rebalance_timeout_default_ms must be positive".into(),
            ));
        }
        if self.retention_check_ms == 0 {
            return Err(ConfigError::Invalid(
                "retention_check_ms must be positive".into(),
            ));
        }
        if self.fetch_bytes_default == 0
            || self.http_records_max == 0
            || self.http_read_timeout_ms == 0
            || self.http_connections_max == 0
            || self.writer_queue_depth == 0
            || self.writer_threads == 0
        {
            return Err(ConfigError::Invalid(
                "fetch_bytes_default, http_records_max, http_read_timeout_ms, http_connections_max, writer_queue_depth and writer_threads must be positive"
                    .into(),
            ));
        }
        let peers = parse_peers(&self.peers)?;
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "peers must include this node (node_id {})",
                self.node_id
            )));
        }
        if !peers.is_empty() && self.raft_addr.is_none() {
            return Err(ConfigError::Invalid(
                "peers need raft_addr (cluster mode)".into(),
            ));
        }
        if self.producer_id_expiration_ms == 0 || self.producers_per_partition_max == 0 {
            return Err(ConfigError::Invalid(
                "producer_id_expiration_ms and producers_per_partition_max must be positive".into(),
            ));
        }
        if self.partitions_max == 0 {
            return Err(ConfigError::Invalid(
                "partitions_max must be positive".into(),
            ));
        }
        if self.meta_snapshot_entries < 100 {
            return Err(ConfigError::Invalid(format!(
                "meta_snapshot_entries must be at least 100, got {}",
                self.meta_snapshot_entries
            )));
        }
        Ok(crate::settings::TopicSettings::default()
            .to_log_config(&self.log)
            .validate()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_toml_overrides_them() {
        assert!(BrokerConfig::default().validate().is_ok());
        let c = BrokerConfig::from_toml("data_dir = \"/x\"\n[log]\nretention_ms = 1000\n").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.log.retention_ms, 1000);
        assert_eq!(c.grpc_addr, BrokerConfig::default().grpc_addr);
        assert!(
            BrokerConfig::from_toml("nonsense = 1")
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }
}
