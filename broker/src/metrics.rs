//! Prometheus metrics: request rates, bytes and latencies recorded by the
//! services, fsync latency reported by the partition writers, and partition
//! gauges (size, segments, high watermark, log start offset) read at scrape
//! time through [`PartitionFigures`], the narrow interface the broker core
//! implements (metrics import nothing of the core).

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// One partition's gauges at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFigures {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// End of the committed prefix.
    pub high_watermark: u64,
    /// First readable offset.
    pub log_start_offset: u64,
    /// Idempotent producers the partition's state keeps.
    pub producers: u64,
    /// Bytes retention would delete but keeps for consumer groups'
    /// retention holds.
    pub held_bytes: u64,
    /// On a cluster node: the replica's Raft view.
    pub replica: Option<ReplicaFigures>,
}

/// A cluster node's replica of a partition at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaFigures {
    /// The leader this node knows of (0: none).
    pub leader: u64,
    /// This node leads.
    pub leading: bool,
    /// This node's probes find a quorum of the voters alive (a leader
    /// without one answers NOT_ENOUGH_REPLICAS).
    pub quorum: bool,
    /// Current term.
    pub term: u64,
    /// On the leader: each replica's lag behind the leader's log end, in
    /// Raft entries (batches).
    pub lag_entries: Vec<(u64, u64)>,
}

/// A cluster node's Raft groups at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftFigures {
    /// Partition groups hosted here.
    pub groups: u64,
    /// Of which this node leads.
    pub leading: u64,
    /// Of which asleep (hibernating: no ticks, no heartbeats).
    pub asleep: u64,
    /// Peers that do not answer the node probe.
    pub peers_down: u64,
}

/// What a scrape reads partition gauges from (the broker core).
pub trait PartitionSource {
    /// The figures of every partition this node serves.
    fn partition_figures(&self) -> Vec<PartitionFigures>;
    /// The Raft figures, on a cluster node.
    fn raft_figures(&self) -> Option<RaftFigures> {
        None
    }
}

/// The broker's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by API and outcome (`ok` or an error code).
    pub requests: IntCounterVec,
    /// Request latency by API.
    pub latency: HistogramVec,
    /// Records produced by topic.
    pub produced_records: IntCounterVec,
    /// Batch bytes produced by topic.
    pub produced_bytes: IntCounterVec,
    /// Records fetched by topic.
    pub fetched_records: IntCounterVec,
    /// Batch bytes fetched by topic.
    pub fetched_bytes: IntCounterVec,
    /// Group fsync latency.
    pub fsync: HistogramVec,
    /// Term changes seen by the partition replicas of this node (each
    /// election a replica takes part in counts once).
    pub raft_term_changes: IntCounter,
    partition: IntGaugeVec,
    replica_lag: IntGaugeVec,
    raft: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants; a failure is a programming error.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let requests = counter(
            "strata_requests_total",
            "Requests by API and outcome.",
            &["api", "outcome"],
        );
        let produced_records = counter(
            "strata_produce_records_total",
            "Records produced.",
            &["topic"],
        );
        let produced_bytes = counter(
            "strata_produce_bytes_total",
            "Batch bytes produced.",
            &["topic"],
        );
        let fetched_records = counter("strata_fetch_records_total", "Records fetched.", &["topic"]);
        let fetched_bytes = counter(
            "strata_fetch_bytes_total",
            "Batch bytes fetched.",
            &["topic"],
        );
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        let latency = must(HistogramVec::new(
            HistogramOpts::new("strata_request_duration_seconds", "Request latency by API.")
                .buckets(buckets.clone()),
            &["api"],
        ));
        must(registry.register(Box::new(latency.clone())));
        let fsync = must(HistogramVec::new(
            HistogramOpts::new(
                "strata_fsync_duration_seconds",
                "Group-commit fsync latency.",
            )
            .buckets(buckets),
            &["topic"],
        ));
        must(registry.register(Box::new(fsync.clone())));
        let partition = must(IntGaugeVec::new(
            Opts::new(
                "strata_partition",
                "Partition figures: size_bytes, segments, high_watermark, log_start_offset, \
                 producers (idempotent producers kept), held_bytes (kept for consumer-group \
                 retention holds); \
                 on a cluster node also leader (node id, 0: none known), leading (1 if this \
                 node leads), quorum (1 if this node sees a quorum of the voters alive) and term.",
            ),
            &["topic", "partition", "figure"],
        ));
        must(registry.register(Box::new(partition.clone())));
        let replica_lag = must(IntGaugeVec::new(
            Opts::new(
                "strata_partition_replica_lag_entries",
                "On a partition's leader: how many Raft entries (batches) each replica's log \
                 is behind the leader's.",
            ),
            &["topic", "partition", "replica"],
        ));
        must(registry.register(Box::new(replica_lag.clone())));
        let raft = must(IntGaugeVec::new(
            Opts::new(
                "strata_raft_groups",
                "Partition Raft groups on this node: hosted, leading, asleep; and peers_down.",
            ),
            &["figure"],
        ));
        must(registry.register(Box::new(raft.clone())));
        let raft_term_changes = must(IntCounter::new(
            "strata_raft_term_changes_total",
            "Term changes seen by this node's partition replicas (elections).",
        ));
        must(registry.register(Box::new(raft_term_changes.clone())));
        Metrics {
            raft,
            raft_term_changes,
            registry,
            requests,
            latency,
            produced_records,
            produced_bytes,
            fetched_records,
            fetched_bytes,
            fsync,
            partition,
            replica_lag,
        }
    }

    /// Records one request.
    pub fn request(&self, api: &str, outcome: &str, took: Duration) {
        self.requests.with_label_values(&[api, outcome]).inc();
        self.latency
            .with_label_values(&[api])
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with partition gauges read now.
    pub fn render(&self, source: &dyn PartitionSource) -> String {
        self.partition.reset();
        self.replica_lag.reset();
        for s in source.partition_figures() {
            let p = s.partition.to_string();
            let mut figures = vec![
                ("size_bytes", s.size_bytes),
                ("segments", s.segments),
                ("high_watermark", s.high_watermark),
                ("log_start_offset", s.log_start_offset),
                ("producers", s.producers),
                ("held_bytes", s.held_bytes),
            ];
            if let Some(r) = &s.replica {
                figures.extend([
                    ("leader", r.leader),
                    ("leading", u64::from(r.leading)),
                    ("quorum", u64::from(r.quorum)),
                    ("term", r.term),
                ]);
                for (replica, lag) in &r.lag_entries {
                    self.replica_lag
                        .with_label_values(&[s.topic.as_str(), p.as_str(), &replica.to_string()])
                        .set(i64::try_from(*lag).unwrap_or(i64::MAX));
                }
            }
            for (figure, v) in figures {
                self.partition
                    .with_label_values(&[s.topic.as_str(), p.as_str(), figure])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        if let Some(r) = source.raft_figures() {
            for (figure, v) in [
                ("hosted", r.groups),
                ("leading", r.leading),
                ("asleep", r.asleep),
                ("peers_down", r.peers_down),
            ] {
                self.raft
                    .with_label_values(&[figure])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# metrics encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
