//! Cluster operations end to end, with real processes on 127.0.0.1-4:
//! forming a cluster with `strata cluster init`, `cluster status`, adding a
//! node that catches up from a snapshot past the retention boundary,
//! reassigning a partition to it and moving leadership there, and removing
//! a node (refused while it still hosts replicas).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use strata_client::{Admin, Producer, ProducerConfig, Record, ReplicaLag, TopicConfig};
use strata_log::{LogConfig, PartitionLog};
use strata_tests::{
    BrokerProcess, cli, free_addrs, init_test_logging, poll_until_async, start_cluster_with,
    wait_caught_up, wait_for_brokers,
};

fn rec(i: u64) -> Record {
    // ~100-byte records that do not compress away.
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut value = format!("v{i:08}-");
    while value.len() < 100 {
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value.push_str(&format!("{x:016x}"));
    }
    Record {
        key: None,
        value: value.into(),
        headers: vec![],
        timestamp_ms: 0,
    }
}

/// A broker log without its colour escapes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn produce(addr: &str, topic: &str, from: u64, to: u64) {
    let p = Producer::connect(
        addr,
        ProducerConfig {
            batch_bytes_max: 4 << 10,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut waits = Vec::new();
    for i in from..to {
        waits.push(p.send(topic, rec(i), Some(0)).await.unwrap());
    }
    for w in waits {
        w.await.unwrap();
    }
    p.close().await.unwrap();
}

/// Batches (base offset, bytes) of a stopped node's partition from `from`.
fn batches(dir: &std::path::Path, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
    let log = PartitionLog::open_dir(dir, LogConfig::default()).unwrap();
    assert!(
        log.log_start_offset() <= from,
        "{} starts at {}",
        dir.display(),
        log.log_start_offset()
    );
    let mut out = Vec::new();
    let mut offset = from;
    while offset < to {
        let b = log.read(offset, 1 << 20, Some(to)).unwrap();
        let last = b.last().unwrap();
        offset = last.last_offset() + 1;
        out.extend(b.into_iter().map(|b| (b.base_offset, b.bytes.to_vec())));
    }
    out
}

/// `strata cluster transfer-leader` of r/0 to node 4.
const TRANSFER_R0_TO_4: [&str; 8] = [
    "cluster",
    "transfer-leader",
    "--topic",
    "r",
    "-p",
    "0",
    "--to",
    "4",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_add_node_past_retention_reassign_transfer_and_remove() {
    init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    // Three nodes without --peers: they wait for `cluster init`.
    let mut nodes = start_cluster_with(dir.path(), false, &["--retention-check-ms", "200"]);
    let first = nodes[0].grpc.clone();
    let peers = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.arg("--raft-addr").unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let out = cli(&first, &["cluster", "init", "--peers", &peers], None);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    assert!(stdout(&out).contains("cluster initialized with 3 voters"));
    // Bad input changes nothing.
    let out = cli(&first, &["cluster", "init", "--peers", "1=nowhere"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Raft socket addresses"),
        "{}",
        stderr(&out)
    );

    let admin = Admin::connect(&first).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    // A second init is a no-op.
    let out = cli(
        &nodes[1].grpc,
        &["cluster", "init", "--peers", &peers],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("already belongs"), "{}", stdout(&out));

    // Small segments and size retention, so the start of the log goes.
    admin
        .create_topic(
            "r",
            1,
            3,
            TopicConfig {
                segment_bytes: Some(128 << 10),
                retention_bytes: Some(256 << 10),
                max_batch_bytes: Some(64 << 10),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    let produced: u64 = 20_000;
    produce(&first, "r", 0, produced).await;
    // Every replica deleted the start of its log, Raft entries included:
    // a new replica can only start from a snapshot.
    let a = &admin;
    poll_until_async(
        "retention trimmed the log",
        Duration::from_secs(30),
        || async move {
            let Ok(st) = a.cluster_status().await else {
                return false;
            };
            st.nodes.iter().all(|n| {
                n.status.as_ref().is_ok_and(|s| {
                    s.replicas
                        .iter()
                        .any(|r| r.topic == "r" && r.purged_end > 0 && r.log_start_offset > 0)
                })
            })
        },
    )
    .await;
    // A fourth node joins, empty, without --peers.
    let addrs = free_addrs("127.0.0.4", 3);
    let mut n4 = BrokerProcess::start(
        &dir.path().join("n4"),
        &[
            "--raft-addr",
            &addrs[0],
            "--grpc-addr",
            &addrs[1],
            "--http-addr",
            &addrs[2],
            "--node-id",
            "4",
            "--retention-check-ms",
            "200",
        ],
    );
    let out = cli(
        &nodes[2].grpc,
        &["cluster", "add-node", "--id", "4", "--raft-addr", &addrs[0]],
        None,
    );
    assert!(out.status.success(), "add-node: {}", stderr(&out));
    let out = cli(
        &first,
        &["cluster", "reassign", "r", "-p", "0", "--replicas", "2,3,4"],
        None,
    );
    assert!(out.status.success(), "reassign: {}", stderr(&out));

    // Node 4 caught up: no lag, same log start and high watermark as the
    // leader, though it never saw the start of the log.
    let a = &admin;
    poll_until_async("node 4 caught up", Duration::from_secs(60), || async move {
        let Ok(st) = a.cluster_status().await else {
            return false;
        };
        let p = &st.partitions[0];
        p.replicas == vec![2, 3, 4]
            && p.lag.get(&4) == Some(&ReplicaLag::Records(0))
            && p.high_watermark == Some(produced)
    })
    .await;
    // The leader sees node 4's log matched; node 4 applies it a moment
    // later (its own high watermark is its applied end).
    let admin4 = Admin::connect(&n4.grpc).await.unwrap();
    let a4 = &admin4;
    poll_until_async(
        "node 4 applied up to the leader's high watermark",
        Duration::from_secs(30),
        || async move {
            a4.node_status().await.is_ok_and(|s| {
                s.replicas
                    .iter()
                    .any(|r| r.topic == "r" && r.high_watermark == produced)
            })
        },
    )
    .await;
    let s4 = admin4.node_status().await.unwrap();
    let r4 = s4.replicas.iter().find(|r| r.topic == "r").unwrap();
    let admin2 = Admin::connect(&nodes[1].grpc).await.unwrap();
    let d = admin2.describe_topic("r").await.unwrap();
    let start = d.partition_info[0].log_start_offset;
    // Node 1 no longer hosts the partition; it describes it with the
    // leader's offsets all the same.
    let d1 = admin.describe_topic("r").await.unwrap();
    assert_eq!(d1.partition_info[0].high_watermark, produced);
    assert_eq!(d1.partition_info[0].replicas, vec![2, 3, 4]);
    assert!(start > 0);
    assert_eq!(r4.high_watermark, produced, "{s4:?}");
    assert!(r4.snapshot_end > 0, "node 4 installed no snapshot: {r4:?}");
    assert!(
        r4.log_start_offset >= start,
        "node 4 starts at {}, below the leader's {start}",
        r4.log_start_offset
    );

    // `cluster status` shows the partition with its replicas and lag.
    let out = cli(&first, &["cluster", "status"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("2,3,4"), "{text}");
    assert!(text.contains("4:0"), "{text}");

    // Leadership moves to the new node, which then serves produce and
    // reads from its first retained offset on.
    let out = cli(&first, &TRANSFER_R0_TO_4, None);
    assert!(out.status.success(), "transfer: {}", stderr(&out));
    let a = &admin2;
    poll_until_async("node 4 leads r/0", Duration::from_secs(20), || async move {
        a.describe_topic("r")
            .await
            .is_ok_and(|d| d.partition_info[0].leader == Some(4))
    })
    .await;
    // A transfer to the node that already leads moves nothing and says so.
    let out = cli(&first, &TRANSFER_R0_TO_4, None);
    assert!(out.status.success(), "transfer: {}", stderr(&out));
    assert!(
        stdout(&out).contains("r/0 is already led by node 4; nothing to do"),
        "{}",
        stdout(&out)
    );
    produce(&first, "r", produced, produced + 1_000).await;
    assert_eq!(
        admin2.describe_topic("r").await.unwrap().partition_info[0].leader,
        Some(4),
        "the no-op transfer moved leadership"
    );
    let total = produced + 1_000;
    let mut c = strata_tests::reader(&n4.grpc, "r").await;
    let mut next: Option<u64> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while next != Some(total) {
        assert!(
            std::time::Instant::now() < deadline,
            "reading stalled at {next:?}"
        );
        let records = match c.poll(Duration::from_millis(500)).await {
            Ok(records) => records,
            // Size retention keeps running (every 200 ms): on a slow
            // machine it can trim past the reader. That must be an
            // explicit error naming the new start, never a silent skip;
            // the reader then starts again from the start.
            Err(strata_client::ClientError::OffsetOutOfRange {
                offset,
                log_start_offset,
                ..
            }) => {
                assert!(
                    log_start_offset > offset && next.is_none_or(|n| n == offset),
                    "out of range at {offset} (start {log_start_offset}) after {next:?}"
                );
                c = strata_tests::reader(&n4.grpc, "r").await;
                next = None;
                continue;
            }
            Err(e) => panic!("reading from node 4: {e}"),
        };
        for r in records {
            let expect = next.unwrap_or(r.offset);
            assert_eq!(r.offset, expect, "offsets are dense");
            assert_eq!(r.value, rec(r.offset).value, "record at {}", r.offset);
            next = Some(r.offset + 1);
        }
    }

    // Node 2 still hosts a replica: removing it is refused, nothing changes.
    let out = cli(&first, &["cluster", "remove-node", "--id", "2"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("reassign its replicas first"),
        "{}",
        stderr(&out)
    );
    // Node 1 hosts nothing now.
    let out = cli(&first, &["cluster", "remove-node", "--id", "1"], None);
    assert!(out.status.success(), "remove-node: {}", stderr(&out));
    let a = Admin::connect(&nodes[1].grpc).await.unwrap();
    let a = &a;
    poll_until_async(
        "node 1 gone from the metadata",
        Duration::from_secs(20),
        || async move {
            a.metadata(&[]).await.is_ok_and(|m| {
                let mut ids: Vec<u64> = m.brokers.iter().map(|b| b.node_id).collect();
                ids.sort_unstable();
                ids == vec![2, 3, 4]
            })
        },
    )
    .await;

    // Same bytes at the same offsets on the replicas (offline, stopped).
    wait_caught_up(&admin, None, Duration::from_secs(30)).await;
    drop(c);
    assert!(n4.stop(), "node 4 did not stop cleanly");
    for n in nodes.iter_mut() {
        assert!(n.stop(), "a node did not stop cleanly");
    }
    // From the newest log start among them (retention keeps running).
    let from = ["n2", "n3", "n4"]
        .iter()
        .map(|n| {
            PartitionLog::open_dir(dir.path().join(n).join("topics/r/0"), LogConfig::default())
                .unwrap()
                .log_start_offset()
        })
        .max()
        .unwrap();
    assert!(from < total, "retention kept nothing");
    let on4 = batches(&dir.path().join("n4/topics/r/0"), from, total);
    let on2 = batches(&dir.path().join("n2/topics/r/0"), from, total);
    let on3 = batches(&dir.path().join("n3/topics/r/0"), from, total);
    assert_eq!(on4, on2, "node 4 and node 2 differ");
    assert_eq!(on4, on3, "node 4 and node 3 differ");
    assert!(!on4.is_empty());
}

/// The metadata log is compacted (snapshot, then the log behind it is
/// deleted), and a node that was down while the log moved past it catches
/// up from the metadata snapshot, topics and their settings included; the
/// receiver stages it on disk (raft/snapshot.rs tests staging over many
/// chunks) and installs it whole. Consumer-group offsets no longer live in
/// the metadata (they are in `__consumer_offsets`), so the snapshot here
/// is one chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_log_is_compacted_and_a_lagging_node_installs_its_snapshot() {
    init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_with(dir.path(), true, &["--meta-snapshot-entries", "200"]);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("m", 4, 3, TopicConfig::default())
        .await
        .unwrap();
    // Node 3 misses what follows.
    let meta_of = |s: &strata_client::NodeStatus| {
        s.replicas
            .iter()
            .find(|r| r.topic.is_empty())
            .cloned()
            .unwrap()
    };
    let a3 = Admin::connect(&nodes[2].grpc).await.unwrap();
    let n3_end = meta_of(&a3.node_status().await.unwrap()).log_end;
    nodes[2].kill9();
    // 600 metadata writes (topic config changes) while node 3 is down.
    let writes: i64 = 600;
    for i in 1..=writes {
        admin
            .alter_topic(
                "m",
                TopicConfig {
                    retention_ms: Some(3_600_000 + i),
                    ..TopicConfig::default()
                },
            )
            .await
            .unwrap();
    }
    let want = Some(3_600_000 + writes);
    // Topics created meanwhile reach node 3 through the snapshot too.
    let extra: Vec<String> = (0..5).map(|i| format!("{i:0>200}")).collect();
    for t in &extra {
        admin
            .create_topic(t, 1, 3, TopicConfig::default())
            .await
            .unwrap();
    }
    assert_eq!(
        admin.describe_topic("m").await.unwrap().config.retention_ms,
        want
    );
    // The running nodes snapshotted the metadata and deleted the log
    // behind it.
    for n in &nodes[..2] {
        let s = Admin::connect(&n.grpc)
            .await
            .unwrap()
            .node_status()
            .await
            .unwrap();
        let meta = meta_of(&s);
        assert!(
            meta.snapshot_end > 0 && meta.purged_end > n3_end,
            "node {}: metadata not compacted past node 3's log end {n3_end}: {meta:?}",
            s.node_id
        );
    }
    // Node 3 comes back; the entries it lacks are gone, so it catches up
    // from the snapshot.
    nodes[2].restart();
    let a3 = Admin::connect(&nodes[2].grpc).await.unwrap();
    let (a3, extra) = (&a3, &extra);
    let caught_up = || async move {
        let Ok(d) = a3.describe_topic("m").await else {
            return false;
        };
        let mut topics = Vec::new();
        if let Ok(all) = a3.list_topics().await {
            topics = all.into_iter().map(|t| t.name).collect();
        }
        d.config.retention_ms == want && extra.iter().all(|t| topics.contains(t))
    };
    poll_until_async("node 3 caught up", Duration::from_secs(30), caught_up).await;
    let s = a3.node_status().await.unwrap();
    let meta = s.replicas.iter().find(|r| r.topic.is_empty()).unwrap();
    assert!(
        meta.snapshot_end > 0,
        "node 3 has no metadata snapshot: {meta:?}"
    );
    let log = strip_ansi(&std::fs::read_to_string(nodes[2].log_path()).unwrap());
    assert!(
        log.lines()
            .any(|l| l.contains("snapshot received") && l.contains("group=meta")),
        "node 3 caught up without receiving a metadata snapshot"
    );
    let staged: Vec<_> = std::fs::read_dir(nodes[2].data_dir.join("raft-meta"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("incoming"))
        .collect();
    assert!(staged.is_empty(), "staging files left: {staged:?}");
    // And it survives its own restart from the snapshot plus the log.
    nodes[2].kill9();
    nodes[2].restart();
    let a3 = Admin::connect(&nodes[2].grpc).await.unwrap();
    let a3 = &a3;
    poll_until_async(
        "node 3 restarted from its snapshot",
        Duration::from_secs(30),
        || async move {
            a3.describe_topic("m")
                .await
                .is_ok_and(|d| d.config.retention_ms == want)
        },
    )
    .await;
}

/// A replica saves its applied state every 1,000 entries: killed and
/// restarted, it resumes from that checkpoint (re-applying only the log
/// after it) and catches up to the same high watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_resumes_from_its_state_checkpoint() {
    init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_with(dir.path(), true, &[]);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("c", 1, 3, TopicConfig::default())
        .await
        .unwrap();
    // One record per batch: 2,500 Raft entries.
    let p = Producer::connect(
        &nodes[0].grpc,
        ProducerConfig {
            batch_bytes_max: 1,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut waits = Vec::new();
    for i in 0..2_500 {
        waits.push(p.send("c", rec(i), Some(0)).await.unwrap());
    }
    for w in waits {
        w.await.unwrap();
    }
    // A follower: every replica has applied everything by then.
    wait_caught_up(&admin, None, Duration::from_secs(30)).await;
    let leader = admin.describe_topic("c").await.unwrap().partition_info[0]
        .leader
        .unwrap() as usize;
    let f = (1..=3).find(|i| *i != leader).unwrap();
    nodes[f - 1].kill9();
    nodes[f - 1].restart();
    // The partition's group opens once the node has caught up with the
    // metadata, after its ready line.
    let path = nodes[f - 1].log_path();
    strata_tests::poll_until(
        "the partition group opened",
        Duration::from_secs(20),
        || std::fs::read_to_string(&path).is_ok_and(|l| l.contains("partition replica opened")),
    );
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(
        log.contains("restored from checkpoint"),
        "node {f} did not resume from a checkpoint:\n{log}"
    );
    // It still serves the same log, and follows new writes.
    for i in 2_500..2_600 {
        p.send_and_wait("c", rec(i), Some(0)).await.unwrap();
    }
    wait_caught_up(&admin, Some(2_600), Duration::from_secs(30)).await;
    p.close().await.unwrap();

    // HTTP on a node that does not lead: ingest is forwarded to the
    // leader; a read answers 307 to the same read on the leader.
    let leader = admin.describe_topic("c").await.unwrap().partition_info[0]
        .leader
        .unwrap() as usize;
    let other = &nodes[(1..=3).find(|i| *i != leader).unwrap() - 1].http;
    let (code, body) = strata_tests::http(
        other,
        "POST",
        "/v1/topics/c/records",
        br#"{"records":[{"value":"over-http"}]}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"offset\":2600"), "{body}");
    let (code, body) = strata_tests::http(
        other,
        "GET",
        "/v1/topics/c/partitions/0/records?offset=2600&max=1",
        b"",
    );
    assert_eq!(code, 307, "{body}");
    assert!(body.contains(&nodes[leader - 1].http), "{body}");
    let (code, body) = strata_tests::http(
        &nodes[leader - 1].http,
        "GET",
        "/v1/topics/c/partitions/0/records?offset=2600&max=1",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("over-http"), "{body}");
}

/// Guards against `reassign` writing the new placement before the group's
/// membership changed: every node reconciled at once, so the leader being
/// moved away shut its replica down (and deleted its directory) while it
/// was still a voter and the one running the reassign, the call failed
/// half-way, and the new replica was placed but never joined.
///
/// Under paced idempotent load, the partition moves away from its leader
/// to the two other replicas plus a new node: the call succeeds, no
/// acknowledged record is lost, every one sits at its acknowledged offset
/// on the new replicas (byte-identical), and the old leader's directory
/// goes only after a majority of the new voters no longer count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassign_away_from_the_leader_under_load_loses_nothing() {
    init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_with(dir.path(), true, &[]);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    let addrs = free_addrs("127.0.0.4", 3);
    let mut n4 = BrokerProcess::start(
        &dir.path().join("n4"),
        &[
            "--raft-addr",
            &addrs[0],
            "--grpc-addr",
            &addrs[1],
            "--http-addr",
            &addrs[2],
            "--node-id",
            "4",
        ],
    );
    let out = cli(
        &nodes[0].grpc,
        &["cluster", "add-node", "--id", "4", "--raft-addr", &addrs[0]],
        None,
    );
    assert!(out.status.success(), "add-node: {}", stderr(&out));
    wait_for_brokers(&admin, 4).await;
    // Three of the four nodes hold the partition; it moves from its
    // leader to the fourth.
    admin
        .create_topic("mv", 1, 3, TopicConfig::default())
        .await
        .unwrap();
    let placed = admin.describe_topic("mv").await.unwrap().partition_info[0]
        .replicas
        .clone();
    let leader = {
        let a = &admin;
        poll_until_async("mv has a leader", Duration::from_secs(20), || async move {
            a.describe_topic("mv")
                .await
                .is_ok_and(|d| d.partition_info[0].leader.is_some())
        })
        .await;
        admin.describe_topic("mv").await.unwrap().partition_info[0]
            .leader
            .unwrap()
    };
    let spare = (1..=4u64).find(|n| !placed.contains(n)).unwrap();
    let target: Vec<u64> = placed
        .iter()
        .copied()
        .filter(|n| *n != leader)
        .chain([spare])
        .collect();
    let leader_grpc = if leader == 4 {
        n4.grpc.clone()
    } else {
        nodes[leader as usize - 1].grpc.clone()
    };
    let leader_dir = dir.path().join(format!("n{leader}/topics/mv/0"));
    assert!(leader_dir.exists(), "{} missing", leader_dir.display());
    let grpc_of = |n: u64| {
        if n == 4 {
            n4.grpc.clone()
        } else {
            nodes[n as usize - 1].grpc.clone()
        }
    };
    let target_grpc: Vec<String> = target.iter().map(|n| grpc_of(*n)).collect();

    // Paced idempotent load, bounded: 4,000 records at ~1 per ms.
    let bootstrap = grpc_of(target[0]);
    let total: u64 = 4_000;
    let load = tokio::spawn(async move {
        let p = Producer::connect(
            &bootstrap,
            ProducerConfig {
                batch_bytes_max: 2 << 10,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        let mut waits = Vec::new();
        for i in 0..total {
            waits.push((i, p.send("mv", rec(i), Some(0)).await.unwrap()));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        for (i, w) in waits {
            match w.await {
                Ok(m) => acked.push((i, m.offset.unwrap())),
                Err(e) => failed.push((i, e.to_string())),
            }
        }
        p.close().await.unwrap();
        (acked, failed)
    });
    let a = &admin;
    poll_until_async("load under way", Duration::from_secs(30), || async move {
        a.describe_topic("mv")
            .await
            .is_ok_and(|d| d.partition_info[0].high_watermark >= 500)
    })
    .await;

    // Watches the old leader's directory against the new voters' view
    // while the reassignment runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, leader_dir, target_grpc) =
            (stop.clone(), leader_dir.clone(), target_grpc.clone());
        tokio::spawn(async move {
            let mut admins = Vec::new();
            for g in &target_grpc {
                admins.push(Admin::connect(g).await.unwrap());
            }
            let mut violations = Vec::new();
            let mut gone_seen = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let gone = !leader_dir.exists();
                if gone && !gone_seen {
                    gone_seen = true;
                    // Sampled after the directory went: at least a
                    // majority of the new replicas must already have left
                    // the old leader out of the voters.
                    let mut out = 0;
                    let mut views = Vec::new();
                    for a in &admins {
                        let s = a.node_status().await;
                        let voters = s.ok().and_then(|s| {
                            s.replicas
                                .into_iter()
                                .find(|r| r.topic == "mv")
                                .map(|r| r.voters)
                        });
                        if voters
                            .as_ref()
                            .is_some_and(|v| !v.is_empty() && !v.contains(&leader))
                        {
                            out += 1;
                        }
                        views.push(voters);
                    }
                    if out * 2 <= admins.len() {
                        violations.push(format!(
                            "node {leader}'s replica was deleted while the new replicas' voters were {views:?}"
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            violations
        })
    };
    let list = target
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &leader_grpc,
            &["cluster", "reassign", "mv", "-p", "0", "--replicas", &list],
            None,
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "reassign away from leader {leader} to {target:?} failed: {}",
        stderr(&out)
    );
    let (acked, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "deliveries failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(acked.len() as u64, total);

    // The group is the new replica set; the old leader's data is gone.
    let (a, t) = (&admin, &target);
    poll_until_async(
        "the new replicas caught up",
        Duration::from_secs(60),
        || async move {
            let Ok(st) = a.cluster_status().await else {
                return false;
            };
            let p = &st.partitions[0];
            p.replicas == *t
                && t.iter()
                    .all(|n| p.lag.get(n) == Some(&ReplicaLag::Records(0)))
                && p.leader.is_some_and(|l| t.contains(&l))
        },
    )
    .await;
    let ld = &leader_dir;
    strata_tests::poll_until(
        "the old leader's replica deleted",
        Duration::from_secs(30),
        || !ld.exists(),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let violations = watcher.await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    for g in &target_grpc {
        let s = Admin::connect(g)
            .await
            .unwrap()
            .node_status()
            .await
            .unwrap();
        let r = s.replicas.iter().find(|r| r.topic == "mv").unwrap();
        let mut voters = r.voters.clone();
        voters.sort_unstable();
        let mut want = target.clone();
        want.sort_unstable();
        assert_eq!(
            voters, want,
            "node {} sees voters {:?}",
            s.node_id, r.voters
        );
    }

    // Every acknowledged record at its offset, read back through the
    // partition's leader…
    let hw = admin.describe_topic("mv").await.unwrap().partition_info[0].high_watermark;
    let mut by_offset = std::collections::BTreeMap::new();
    let mut c = strata_tests::reader(&target_grpc[0], "mv").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (by_offset.len() as u64) < hw {
        assert!(
            std::time::Instant::now() < deadline,
            "reading stalled at {}",
            by_offset.len()
        );
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            by_offset.insert(r.offset, r.value);
        }
    }
    for (i, offset) in &acked {
        assert_eq!(
            by_offset.get(offset),
            Some(&rec(*i).value),
            "record {i} acknowledged at offset {offset}"
        );
    }
    drop(c);
    // …and the same bytes at the same offsets on every new replica.
    wait_caught_up(&admin, Some(hw), Duration::from_secs(30)).await;
    assert!(n4.stop(), "node 4 did not stop cleanly");
    for n in nodes.iter_mut() {
        assert!(n.stop(), "a node did not stop cleanly");
    }
    let logs: Vec<_> = target
        .iter()
        .map(|n| batches(&dir.path().join(format!("n{n}/topics/mv/0")), 0, hw))
        .collect();
    assert!(!logs[0].is_empty());
    for (n, l) in target.iter().zip(&logs).skip(1) {
        assert_eq!(*l, logs[0], "node {n} and node {} differ", target[0]);
    }
}
