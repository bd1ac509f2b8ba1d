//! Idempotence through quorum loss, with real processes: a long-lived
//! idempotent producer keeps sending to a partition whose leader survives
//! while both its followers are killed with SIGKILL and later restarted.
//! Every record must end up in the log exactly once (no duplicates, no
//! gaps, nothing lost), and while the quorum is gone the leader answers
//! with NOT_ENOUGH_REPLICAS (retriable) rather than NOT_LEADER without a
//! leader, and its `/metrics` say the partition has no quorum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_client::{Admin, ErrorCode, Producer, ProducerConfig, Record, TopicConfig};
use strata_proto::batch::{Compression, encode_batch};
use strata_proto::pb;
use strata_tests::{
    BrokerProcess, http, leader, poll_until_async, start_cluster, wait_for_brokers,
};

fn rec(value: String) -> Record {
    Record {
        key: None,
        value: value.into(),
        headers: vec![],
        timestamp_ms: 0,
    }
}

/// Three nodes and topic `q` (one partition, RF=3) with an elected
/// leader; answers the nodes, an admin client and the leader's node id.
async fn cluster_with_q(root: &Path) -> (Vec<BrokerProcess>, Admin, usize) {
    let mut nodes = start_cluster(root);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("q", 1, 3, TopicConfig::default())
        .await
        .unwrap();
    let mut l = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while l.is_none() {
        assert!(Instant::now() < deadline, "no leader for q/0");
        l = leader(&mut nodes, "q").await;
    }
    (nodes, admin, l.unwrap() as usize)
}

/// The value of the metric line `name{labels}` in a node's `/metrics`
/// (`None`: not exported). Labels are given as the exposition sorts them.
fn metric(http_addr: &str, name: &str, labels: &str) -> Option<i64> {
    let (status, body) = http(http_addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    let prefix = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

/// `strata_partition{figure=…}` of q/0.
fn partition_gauge(http_addr: &str, figure: &str) -> Option<i64> {
    metric(
        http_addr,
        "strata_partition",
        &format!("figure=\"{figure}\",partition=\"0\",topic=\"q\""),
    )
}

/// `strata_partition_replica_lag_entries` of q/0's replica on node
/// `replica`.
fn replica_lag(http_addr: &str, replica: u64) -> Option<i64> {
    metric(
        http_addr,
        "strata_partition_replica_lag_entries",
        &format!("partition=\"0\",replica=\"{replica}\",topic=\"q\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_through_lost_followers_writes_each_record_exactly_once() {
    strata_tests::init_test_logging();
    let (root, _tmp) = strata_tests::test_dir();
    let (mut nodes, admin, l) = cluster_with_q(&root).await;
    let followers: Vec<usize> = (1..=3).filter(|i| *i != l).collect();
    let leader_grpc = nodes[l - 1].grpc.clone();
    let leader_http = nodes[l - 1].http.clone();
    assert_eq!(partition_gauge(&leader_http, "leading"), Some(1));
    assert_eq!(partition_gauge(&leader_http, "quorum"), Some(1));
    assert_eq!(partition_gauge(&leader_http, "leader"), Some(l as i64));

    // One long-lived producer, ~200 records/s, every value unique.
    let producer = Producer::connect(
        &leader_grpc,
        ProducerConfig {
            linger: Duration::from_millis(2),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let offsets = Arc::new(Mutex::new(BTreeMap::<u64, String>::new()));
    let sender = {
        let (producer, stop, acked, failures, offsets) = (
            producer.clone(),
            stop.clone(),
            acked.clone(),
            failures.clone(),
            offsets.clone(),
        );
        tokio::spawn(async move {
            let mut waits = tokio::task::JoinSet::new();
            let mut sent = 0u64;
            // Bounded: at most 200 s of sending.
            while !stop.load(Ordering::Relaxed) && sent < 40_000 {
                let value = format!("v{sent}");
                let d = producer
                    .send("q", rec(value.clone()), Some(0))
                    .await
                    .unwrap();
                let (acked, failures, offsets) = (acked.clone(), failures.clone(), offsets.clone());
                waits.spawn(async move {
                    match d.await {
                        Ok(m) => {
                            offsets.lock().unwrap().insert(m.offset.unwrap(), value);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{value}: {e}")),
                    }
                });
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while waits.join_next().await.is_some() {}
            sent
        })
    };

    let rounds: usize = std::env::var("STRATA_QUORUM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for round in 0..rounds {
        let before = acked.load(Ordering::Relaxed);
        let a = acked.clone();
        poll_until_async("acknowledgements flow", Duration::from_secs(30), || {
            let a = a.clone();
            async move { a.load(Ordering::Relaxed) >= before + 200 }
        })
        .await;
        for f in &followers {
            nodes[f - 1].kill9();
        }
        // The leader notices it has lost its quorum (its probes go
        // unanswered) and says so, in its metrics and to producers.
        let h = leader_http.clone();
        poll_until_async(
            "the leader reports no quorum",
            Duration::from_secs(10),
            || {
                let h = h.clone();
                async move { partition_gauge(&h, "quorum") == Some(0) }
            },
        )
        .await;
        assert_eq!(partition_gauge(&leader_http, "leading"), Some(1));
        let mut raw = pb::strata_client::StrataClient::connect(format!("http://{leader_grpc}"))
            .await
            .unwrap();
        // ACKS_LEADER has ACKS_ALL's guarantee (documented in the proto):
        // the leader alone does not acknowledge either.
        for acks in [pb::Acks::All, pb::Acks::Leader] {
            let mut batch = Vec::new();
            encode_batch(&[rec("probe".into())], Compression::None, None, &mut batch).unwrap();
            let refused = raw
                .produce(pb::ProduceRequest {
                    topic: "q".into(),
                    partition: 0,
                    batch: batch.into(),
                    acks: acks as i32,
                })
                .await
                .expect_err("a leader without quorum acknowledged a write");
            let e = strata_client::ClientError::from(refused);
            assert_eq!(
                e.code(),
                Some(ErrorCode::NotEnoughReplicas),
                "{acks:?}: {e}"
            );
            assert!(e.is_retriable());
        }
        // The quorum stays away while the producer keeps sending and
        // retrying (the leader's lease lapses: proposals are refused).
        let stalled = acked.load(Ordering::Relaxed);
        // The fault's duration (the leader's lease lapses meanwhile), not a
        // wait for state.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            acked.load(Ordering::Relaxed),
            stalled,
            "round {round}: records were acknowledged without a quorum"
        );
        for f in &followers {
            nodes[f - 1].restart();
        }
        let h = leader_http.clone();
        poll_until_async("the quorum is back", Duration::from_secs(30), || {
            let h = h.clone();
            async move { partition_gauge(&h, "quorum") == Some(1) }
        })
        .await;
    }
    let before = acked.load(Ordering::Relaxed);
    let a = acked.clone();
    poll_until_async("acknowledgements resume", Duration::from_secs(60), || {
        let a = a.clone();
        async move { a.load(Ordering::Relaxed) >= before + 200 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::time::timeout(Duration::from_secs(150), sender)
        .await
        .expect("every record settles within the delivery timeout")
        .unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "records failed: {failures:?}");
    assert_eq!(acked.load(Ordering::Relaxed), sent);

    // The log holds every record exactly once, at the offset it was
    // acknowledged with.
    let mut c = strata_tests::reader(&leader_grpc, "q").await;
    let mut log: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (log.len() as u64) < sent {
        assert!(
            Instant::now() < deadline,
            "read {} of {sent} records",
            log.len()
        );
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            assert_eq!(r.offset, log.len() as u64, "offsets are dense");
            log.push(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    let end = admin
        .list_offsets("q", 0, strata_client::OffsetSpec::Latest)
        .await
        .unwrap()
        .offset;
    let mut seen = BTreeMap::<&str, u32>::new();
    for v in &log {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<u64> = (0..sent)
        .filter(|i| !seen.contains_key(format!("v{i}").as_str()))
        .collect();
    println!(
        "quorum loss: {rounds} rounds, {sent} records sent, {} in the log (end {end}), {} duplicated, {} missing",
        log.len(),
        duplicates.len(),
        missing.len()
    );
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert_eq!(end, sent, "the log holds more than was sent");
    for (offset, value) in offsets.lock().unwrap().iter() {
        assert_eq!(
            &log[*offset as usize], value,
            "acknowledged offset {offset}"
        );
    }
    // The leader exports every replica's lag, zero once caught up.
    let h = leader_http.clone();
    poll_until_async("every replica caught up", Duration::from_secs(30), || {
        let h = h.clone();
        async move { (1..=3).all(|r| replica_lag(&h, r) == Some(0)) }
    })
    .await;
}

/// A leader stopped with SIGSTOP (alive to TCP, answering nothing) is left
/// behind: the others elect a leader and a producer that was writing to
/// it moves there within seconds, losing and duplicating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_left_within_seconds() {
    strata_tests::init_test_logging();
    let (root, _tmp) = strata_tests::test_dir();
    let (nodes, _admin, l) = cluster_with_q(&root).await;
    let producer = Producer::connect(&nodes[l - 1].grpc, ProducerConfig::default())
        .await
        .unwrap();
    let mut values = Vec::new();
    for i in 0..100 {
        producer
            .send_and_wait("q", rec(format!("v{i}")), Some(0))
            .await
            .unwrap();
        values.push(format!("v{i}"));
    }
    nodes[l - 1].signal("STOP");
    let stopped = Instant::now();
    // One record at a time: how long until the first write after the
    // stop is acknowledged (by the new leader).
    let mut first_ack = None;
    for i in 100..200 {
        let m = tokio::time::timeout(
            Duration::from_secs(30),
            producer.send_and_wait("q", rec(format!("v{i}")), Some(0)),
        )
        .await
        .expect("the producer moves to the new leader")
        .unwrap();
        first_ack.get_or_insert(stopped.elapsed());
        assert!(m.offset.is_some());
        values.push(format!("v{i}"));
    }
    let first_ack = first_ack.unwrap();
    println!("stopped leader: the first write after SIGSTOP was acknowledged {first_ack:?} later");
    assert!(
        first_ack < Duration::from_secs(6),
        "writes resumed only {first_ack:?} after the leader stopped"
    );
    nodes[l - 1].signal("CONT");
    let other = (1..=3).find(|i| *i != l).unwrap();
    let mut c = strata_tests::reader(&nodes[other - 1].grpc, "q").await;
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.len() < values.len() {
        assert!(Instant::now() < deadline, "read {} records", log.len());
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            log.push(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    assert_eq!(log, values, "the log holds each record once, in order");
}

/// Guards issue 12 item 3 in a cluster: any node issues producer ids that
/// every partition leader accepts (the key is replicated metadata), an id
/// never issued is refused with UNKNOWN_PRODUCER, and idle producers are
/// forgotten by every replica alike (the leader replicates its clock in an
/// `ExpireProducers` command; followers run no expiry of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_from_any_node_and_idle_producers_expire_on_every_replica() {
    let (root, _keep) = strata_tests::test_dir();
    std::fs::create_dir_all(&root).unwrap();
    let config = root.join("broker.toml");
    std::fs::write(
        &config,
        "producer_id_expiration_ms = 3000\nretention_check_ms = 200\n",
    )
    .unwrap();
    let mut nodes =
        strata_tests::start_cluster_with(&root, true, &["--config", config.to_str().unwrap()]);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("q", 1, 3, TopicConfig::default())
        .await
        .unwrap();
    let mut l = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while l.is_none() {
        assert!(Instant::now() < deadline, "no leader for q/0");
        l = leader(&mut nodes, "q").await;
    }
    let l = l.unwrap() as usize;
    let other = if l == 1 { 2 } else { 1 };
    let connect = |addr: String| async move {
        pb::strata_client::StrataClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    };
    // Issued by a node that does not lead the partition.
    let id = connect(nodes[other - 1].grpc.clone())
        .await
        .init_producer(pb::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner()
        .producer_id;
    let raw = connect(nodes[l - 1].grpc.clone()).await;
    let produce = |id: u64, seq: u32| {
        let mut raw = raw.clone();
        async move {
            let mut batch = Vec::new();
            let p = strata_proto::ProducerInfo {
                producer_id: id,
                producer_epoch: 0,
                base_sequence: seq,
            };
            encode_batch(
                &[rec(format!("{seq}"))],
                Compression::None,
                Some(p),
                &mut batch,
            )
            .unwrap();
            raw.produce(pb::ProduceRequest {
                topic: "q".into(),
                partition: 0,
                batch: batch.into(),
                acks: pb::Acks::All as i32,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(strata_client::ClientError::from)
        }
    };
    let e = produce(3, 0)
        .await
        .expect_err("an id never issued was accepted");
    assert_eq!(e.code(), Some(ErrorCode::UnknownProducer), "{e}");
    let first = produce(id, 0).await.unwrap();
    assert_eq!(first.base_offset, Some(0));
    let e = produce(id, 9).await.expect_err("a gap was accepted");
    assert_eq!(e.code(), Some(ErrorCode::OutOfOrderSequence), "{e}");

    // Every replica knows the producer, then forgets it.
    let https: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
    for (want, what) in [
        (1, "every replica knows the producer"),
        (0, "every replica forgets it"),
    ] {
        let hs = https.clone();
        poll_until_async(what, Duration::from_secs(20), || {
            let hs = hs.clone();
            async move {
                hs.iter()
                    .all(|h| partition_gauge(h, "producers") == Some(want))
            }
        })
        .await;
    }
    // Forgotten: it starts afresh at any sequence.
    let again = produce(id, 9).await.unwrap();
    assert_eq!((again.base_offset, again.duplicate), (Some(1), false));
}

/// A produce to node 3 for `topic`: the error code of its refusal (`None`
/// when accepted, or when node 3 does not answer yet).
async fn refusal_at(grpc: &str, topic: &str) -> Option<Option<ErrorCode>> {
    let mut raw = pb::strata_client::StrataClient::connect(format!("http://{grpc}"))
        .await
        .ok()?;
    let mut batch = Vec::new();
    encode_batch(&[rec("x".into())], Compression::None, None, &mut batch).unwrap();
    let r = raw
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: 0,
            batch: batch.into(),
            acks: pb::Acks::All as i32,
        })
        .await;
    match r {
        Ok(_) => Some(None),
        Err(s) => {
            let e = strata_client::ClientError::from(s);
            if matches!(e, strata_client::ClientError::Unavailable(_)) {
                return None;
            }
            Some(Some(e.code().unwrap_or(ErrorCode::Unspecified)))
        }
    }
}

/// Regression (CI): a node restarted before it hears from the metadata
/// leader answered UNKNOWN_TOPIC, which producers take as final, for a
/// topic created while it was down. It now answers NOT_LEADER without a
/// hint (retriable, "ask another node") until its metadata has caught up,
/// and UNKNOWN_TOPIC only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_on_metadata_does_not_call_a_topic_unknown() {
    strata_tests::init_test_logging();
    let (root, _tmp) = strata_tests::test_dir();
    let mut nodes = start_cluster(&root);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    nodes[2].kill9();
    // Committed by nodes 1 and 2 while node 3 is down.
    admin
        .create_topic("late", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    nodes[0].kill9();
    nodes[1].kill9();
    nodes[2].restart();
    let grpc3 = nodes[2].grpc.clone();
    let mut answer = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while answer.is_none() {
        assert!(Instant::now() < deadline, "node 3 never answered");
        answer = refusal_at(&grpc3, "late").await;
    }
    assert_eq!(
        answer,
        Some(Some(ErrorCode::NotLeader)),
        "node 3, alone and behind, must not call \"late\" unknown"
    );
    assert_eq!(
        refusal_at(&grpc3, "never-created").await,
        Some(Some(ErrorCode::NotLeader)),
        "behind, it cannot tell a missing topic from one it has not heard of"
    );
    nodes[0].restart();
    nodes[1].restart();
    // Caught up, it knows both: "late" is served elsewhere (NOT_LEADER
    // with a hint, or accepted), and a topic nobody created is unknown.
    poll_until_async(
        "node 3 calls a topic nobody created unknown",
        Duration::from_secs(30),
        || {
            let g = grpc3.clone();
            async move { refusal_at(&g, "never-created").await == Some(Some(ErrorCode::UnknownTopic)) }
        },
    )
    .await;
    assert_ne!(
        refusal_at(&grpc3, "late").await,
        Some(Some(ErrorCode::UnknownTopic))
    );
}
