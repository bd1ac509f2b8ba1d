//! Every output of `strata` that is a table or a JSON document, in one
//! place: the column layouts and the JSON field names are an interface
//! (scripts and tests parse them), so they change here or nowhere.
//!
//! The commands gather domain values from `strata-client` (or the storage
//! engine's inspector) and hand them here; nothing in this module talks to
//! a broker or a disk. Short confirmations ("deleted topic t") stay with
//! their commands.

use std::io::Write;

use base64::Engine as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use strata_client::{
    ClusterStatus, ConsumerRecord, GroupDescription, GroupListing, ReplicaLag, TopicDescription,
};
use strata_log::entry::EntryMeta;
use strata_log::inspect::SegmentReport;
use strata_proto::{BatchError, Record};

/// Prints `v` as pretty JSON.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// The wire and the JSON output mark "no leader known" with node id 0;
/// the output keeps that so scripts keep working.
fn leader_or_zero(leader: Option<u64>) -> u64 {
    leader.unwrap_or(0)
}

/// A topic as JSON (`topic create|list|describe|alter --json`).
pub fn describe_json(d: &TopicDescription) -> Value {
    let c = &d.config;
    json!({
        "name": d.name,
        "partitions": d.partitions,
        "config": {
            "retention_ms": c.retention_ms, "retention_bytes": c.retention_bytes,
            "segment_bytes": c.segment_bytes, "segment_ms": c.segment_ms, "max_batch_bytes": c.max_batch_bytes,
        },
        "partition_info": d.partition_info.iter().map(|p| json!({
            "partition": p.partition, "leader": leader_or_zero(p.leader), "replicas": p.replicas,
            "log_start_offset": p.log_start_offset, "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes, "segments": p.segments,
        })).collect::<Vec<_>>(),
    })
}

/// A topic's settings and partitions (`topic describe|alter`).
pub fn print_topic(d: &TopicDescription, json: bool) {
    if json {
        print_json(&describe_json(d));
        return;
    }
    let c = &d.config;
    let show = |v: Option<String>| v.unwrap_or_else(|| "default".into());
    println!("topic {}  partitions {}", d.name, d.partitions);
    println!(
        "  retention_ms {}  retention_bytes {}  segment_bytes {}  segment_ms {}  max_batch_bytes {}",
        show(c.retention_ms.map(|v| v.to_string())),
        show(c.retention_bytes.map(|v| v.to_string())),
        show(c.segment_bytes.map(|v| v.to_string())),
        show(c.segment_ms.map(|v| v.to_string())),
        show(c.max_batch_bytes.map(|v| v.to_string())),
    );
    println!(
        "  {:>9} {:>6} {:>16} {:>16} {:>14} {:>8}",
        "PARTITION", "LEADER", "LOG_START", "HIGH_WATERMARK", "SIZE_BYTES", "SEGMENTS"
    );
    for p in &d.partition_info {
        println!(
            "  {:>9} {:>6} {:>16} {:>16} {:>14} {:>8}",
            p.partition,
            leader_or_zero(p.leader),
            p.log_start_offset,
            p.high_watermark,
            p.size_bytes,
            p.segments
        );
    }
}

/// The topic table of `topic list`.
pub fn print_topic_list(topics: &[TopicDescription]) {
    println!("{:<40} {:>10} {:>16}", "TOPIC", "PARTITIONS", "RECORDS");
    for t in topics {
        println!("{:<40} {:>10} {:>16}", t.name, t.partitions, t.records());
    }
}

/// A consumed record as one JSON line; keys, values and header values that
/// are not UTF-8 become `{"base64": …}`.
fn record_json(r: &ConsumerRecord) -> Value {
    let enc = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => {
            json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)})
        }
    };
    json!({
        "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
        "key": r.key.as_ref().map(|k| enc(k)), "value": enc(&r.value),
        "headers": r.headers.iter().map(|h| json!({"key": h.key, "value": enc(&h.value)})).collect::<Vec<_>>(),
    })
}

/// One consumed record: a JSON line, `key<TAB>value`, or the value alone.
pub fn write_record(
    out: &mut impl Write,
    r: &ConsumerRecord,
    json: bool,
    print_key: bool,
) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", record_json(r))
    } else if print_key {
        let k = r
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        writeln!(out, "{k}\t{}", String::from_utf8_lossy(&r.value))
    } else {
        writeln!(out, "{}", String::from_utf8_lossy(&r.value))
    }
}

/// A row of `group offsets`.
#[derive(Debug)]
pub struct GroupOffsetRow {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub committed: u64,
    /// `None` when the partition's offsets could not be read.
    pub high_watermark: Option<u64>,
}

/// `group offsets`: committed offsets with lag.
pub fn print_group_offsets(rows: &[GroupOffsetRow], json: bool) {
    if json {
        print_json(&json!(rows.iter().map(|r| json!({
            "group": r.group, "topic": r.topic, "partition": r.partition, "committed": r.committed,
            "high_watermark": r.high_watermark,
            "lag": r.high_watermark.map(|h| h.saturating_sub(r.committed)),
        })).collect::<Vec<_>>()));
        return;
    }
    println!(
        "{:<24} {:<24} {:>9} {:>14} {:>14} {:>10}",
        "GROUP", "TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG"
    );
    for r in rows {
        let (hw_s, lag) = r
            .high_watermark
            .map_or(("?".to_owned(), "?".to_owned()), |h| {
                (h.to_string(), h.saturating_sub(r.committed).to_string())
            });
        println!(
            "{:<24} {:<24} {:>9} {:>14} {hw_s:>14} {lag:>10}",
            r.group, r.topic, r.partition, r.committed
        );
    }
}

/// `group list`.
pub fn print_group_list(l: &GroupListing, json: bool) {
    if json {
        print_json(&json!({
            "groups": l.groups.iter().map(|g| json!({
                "group": g.group, "state": g.state, "members": g.members,
                "group_epoch": g.group_epoch, "coordinator": g.coordinator, "hold": g.hold,
            })).collect::<Vec<_>>(),
            "unavailable_partitions": l.unavailable_partitions,
        }));
        return;
    }
    println!(
        "{:<32} {:<12} {:>7} {:>11} {:>11} {:>4}",
        "GROUP", "STATE", "MEMBERS", "GROUP_EPOCH", "COORDINATOR", "HOLD"
    );
    for g in &l.groups {
        println!(
            "{:<32} {:<12} {:>7} {:>11} {:>11} {:>4}",
            g.group,
            g.state,
            g.members,
            g.group_epoch,
            g.coordinator,
            if g.hold { "on" } else { "off" }
        );
    }
}

fn tps(v: &[(String, u32)]) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    v.iter()
        .map(|(t, p)| format!("{t}/{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn tps_json(v: &[(String, u32)]) -> Value {
    json!(
        v.iter()
            .map(|(t, p)| json!({"topic": t, "partition": p}))
            .collect::<Vec<_>>()
    )
}

/// `group describe`.
pub fn print_group_description(d: &GroupDescription, json: bool) {
    if json {
        print_json(&json!({
            "group": d.group, "state": d.state, "group_epoch": d.group_epoch,
            "assignment_epoch": d.assignment_epoch, "coordinator": d.coordinator, "hold": d.hold,
            "members": d.members.iter().map(|m| json!({
                "member_id": m.member_id, "instance_id": m.instance_id,
                "member_epoch": m.member_epoch, "client_id": m.client_id,
                "client_host": m.client_host, "subscribed_topics": m.subscribed_topics,
                "subscribed_pattern": m.subscribed_pattern,
                "assigned": tps_json(&m.assigned), "revoking": tps_json(&m.revoking),
                "target": tps_json(&m.target), "session_timeout_ms": m.session_timeout_ms,
            })).collect::<Vec<_>>(),
            "partitions": d.partitions.iter().map(|p| json!({
                "topic": p.topic, "partition": p.partition, "committed": p.committed,
                "high_watermark": p.high_watermark, "lag": p.lag, "owner": p.owner,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!(
        "group {}  state {}  group epoch {}  assignment epoch {}  coordinator node {}  retention hold {}",
        d.group,
        d.state,
        d.group_epoch,
        d.assignment_epoch,
        d.coordinator,
        if d.hold {
            "on (retention keeps what the group has not consumed)"
        } else {
            "off"
        }
    );
    println!();
    println!(
        "{:<34} {:>6} {:<20} {:<16} ASSIGNED / REVOKING",
        "MEMBER", "EPOCH", "INSTANCE", "CLIENT"
    );
    for m in &d.members {
        println!(
            "{:<34} {:>6} {:<20} {:<16} {} / {}",
            m.member_id,
            m.member_epoch,
            m.instance_id.as_deref().unwrap_or("-"),
            m.client_id,
            tps(&m.assigned),
            tps(&m.revoking)
        );
    }
    println!();
    println!(
        "{:<24} {:>9} {:>14} {:>14} {:>10}  OWNER",
        "TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |x| x.to_string());
    for p in &d.partitions {
        println!(
            "{:<24} {:>9} {:>14} {:>14} {:>10}  {}",
            p.topic,
            p.partition,
            opt(p.committed),
            opt(p.high_watermark),
            opt(p.lag),
            p.owner.as_deref().unwrap_or("-")
        );
    }
}

/// `group reset`: the offsets committed, per partition.
pub fn print_group_reset(group: &str, topic: &str, offsets: &[(u32, u64)], json: bool) {
    if json {
        print_json(&json!(
            offsets
                .iter()
                .map(|(p, o)| json!({"partition": p, "offset": o}))
                .collect::<Vec<_>>()
        ));
    } else {
        for (p, o) in offsets {
            println!("reset {group} {topic}/{p} to {o}");
        }
    }
}

/// `cluster status`: nodes, the metadata group, and every partition's
/// leader, replicas and lag.
pub fn print_cluster_status(st: &ClusterStatus, json: bool) {
    let lag_json = |l: &ReplicaLag| match l {
        ReplicaLag::Records(n) => json!(n),
        ReplicaLag::Down => json!("down"),
        ReplicaLag::Missing => json!("missing"),
    };
    if json {
        print_json(&json!({
            "metadata_leader": st.metadata_leader,
            "metadata_voters": st.metadata_voters,
            "nodes": st.nodes.iter().map(|n| json!({
                "node_id": n.node_id,
                "grpc_addr": n.grpc_addr,
                "up": n.status.is_ok(),
                "raft_addr": n.status.as_ref().map(|s| s.raft_addr.clone()).ok(),
                "uptime_ms": n.status.as_ref().map(|s| s.uptime_ms).ok(),
                "error": n.status.as_ref().err().map(ToString::to_string),
            })).collect::<Vec<_>>(),
            "partitions": st.partitions.iter().map(|p| json!({
                "topic": p.topic,
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "high_watermark": p.high_watermark,
                "lag": p.lag.iter().map(|(id, l)| (id.to_string(), lag_json(l))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    let show = |v: Option<u64>| v.map_or("-".to_owned(), |x| x.to_string());
    println!(
        "metadata leader: {}  voters: {:?}",
        show(st.metadata_leader),
        st.metadata_voters
    );
    println!();
    println!(
        "{:<6} {:<22} {:<22} {:<6} UPTIME",
        "NODE", "GRPC", "RAFT", "STATE"
    );
    for n in &st.nodes {
        match &n.status {
            Ok(s) => println!(
                "{:<6} {:<22} {:<22} {:<6} {}s",
                n.node_id,
                n.grpc_addr,
                s.raft_addr,
                "up",
                s.uptime_ms / 1000
            ),
            Err(e) => println!(
                "{:<6} {:<22} {:<22} {:<6} ({e})",
                n.node_id, n.grpc_addr, "?", "DOWN"
            ),
        }
    }
    println!();
    println!(
        "{:<24} {:>9} {:>6} {:<12} {:>14}  LAG (records behind the leader, per replica)",
        "TOPIC", "PARTITION", "LEADER", "REPLICAS", "HIGH_WATERMARK"
    );
    for p in &st.partitions {
        let replicas = p
            .replicas
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let lag = p
            .lag
            .iter()
            .map(|(id, l)| match l {
                ReplicaLag::Records(n) => format!("{id}:{n}"),
                ReplicaLag::Down => format!("{id}:down"),
                ReplicaLag::Missing => format!("{id}:missing"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<24} {:>9} {:>6} {:<12} {:>14}  {lag}",
            p.topic,
            p.partition,
            show(p.leader),
            replicas,
            show(p.high_watermark)
        );
    }
}

/// One log entry of `log dump`.
pub fn print_log_entry(meta: &EntryMeta) {
    println!(
        "  entry {} kind {:?} offset {} records {} bytes {}",
        meta.log_id, meta.kind, meta.base_offset, meta.record_count, meta.len
    );
}

/// The records of one entry, for `log dump --records`.
pub fn print_log_records(base_offset: u64, decoded: Result<Vec<Record>, BatchError>) {
    match decoded {
        Ok(rs) => {
            for (i, r) in rs.iter().enumerate() {
                println!(
                    "    {} ts {} value {}",
                    base_offset + i as u64,
                    r.timestamp_ms,
                    String::from_utf8_lossy(&r.value)
                );
            }
        }
        Err(e) => println!("    cannot decode records: {e}"),
    }
}

/// A segment's report as JSON (`log dump|verify --json`).
pub fn segment_report_json(r: &SegmentReport) -> Value {
    json!({
        "path": r.path, "size_bytes": r.size_bytes, "entries": r.entries, "batches": r.batches,
        "records": r.records, "offsets": r.offsets, "indexes": r.indexes, "sealed": r.sealed,
        "problems": r.problems.iter().map(|p| json!({"position": p.position, "reason": p.reason})).collect::<Vec<_>>(),
    })
}

/// A segment's summary line and its problems (`log dump|verify`).
pub fn print_segment_report(r: &SegmentReport) {
    println!(
        "{}  {} bytes  {} entries  {} batches  {} records  offsets {:?}  indexes {:?}  {}  {}",
        r.path.display(),
        r.size_bytes,
        r.entries,
        r.batches,
        r.records,
        r.offsets,
        r.indexes,
        if r.sealed { "sealed" } else { "active" },
        if r.problems.is_empty() {
            "OK".to_owned()
        } else {
            format!("{} PROBLEM(S)", r.problems.len())
        },
    );
    for p in &r.problems {
        println!("  problem at byte {}: {}", p.position, p.reason);
    }
}

/// What `bench produce` measured.
#[derive(Debug)]
pub struct ProduceBench {
    pub records: u64,
    pub record_bytes: usize,
    pub producers: usize,
    pub seconds: f64,
    /// Send-to-acknowledgement latency, in µs.
    pub latency_us: Histogram<u64>,
}

/// `bench produce`: rate and latency percentiles.
pub fn print_produce_bench(b: &ProduceBench, json: bool) {
    let (total, secs) = (b.records, b.seconds);
    let rps = total as f64 / secs;
    let mbps = total as f64 * b.record_bytes as f64 / 1e6 / secs;
    let q = |p: f64| b.latency_us.value_at_quantile(p) as f64 / 1000.0;
    let max_ms = b.latency_us.max() as f64 / 1000.0;
    if json {
        print_json(&json!({
            "records": total, "record_bytes": b.record_bytes, "producers": b.producers, "seconds": secs,
            "records_per_s": rps, "mb_per_s": mbps,
            "latency_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": max_ms},
        }));
    } else {
        println!(
            "produced {total} records of {} bytes in {secs:.2} s: {rps:.0} records/s, {mbps:.1} MB/s",
            b.record_bytes
        );
        println!(
            "send-to-ack latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            q(0.5),
            q(0.99),
            q(0.999),
            max_ms
        );
    }
}

/// What `bench consume` measured.
#[derive(Debug)]
pub struct ConsumeBench {
    pub records: u64,
    /// Bytes of record values.
    pub value_bytes: u64,
    pub seconds: f64,
}

/// `bench consume`: records/s and MB/s of values.
pub fn print_consume_bench(b: &ConsumeBench, json: bool) {
    let (n, secs) = (b.records, b.seconds);
    if json {
        print_json(
            &json!({"records": n, "seconds": secs, "records_per_s": n as f64 / secs, "mb_per_s": b.value_bytes as f64 / 1e6 / secs}),
        );
    } else {
        println!(
            "replayed {n} records in {secs:.2} s: {:.0} records/s, {:.1} MB/s of values",
            n as f64 / secs,
            b.value_bytes as f64 / 1e6 / secs
        );
    }
}
