//! End-to-end tests of a 3-node cluster of real `strata-broker` processes
//! (Raft peers on 127.0.0.1-3): failover under kill -9 with a history
//! check, catch-up of restarted nodes, byte-identical replicas, and
//! committed group offsets surviving the loss of any node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_client::{Admin, Producer, ProducerConfig, Record, TopicConfig};
use strata_log::{LogConfig, PartitionLog};
use strata_tests::{leader, poll_until_async, start_cluster, wait_for_brokers};

fn rec(value: String) -> Record {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Record {
        key: None,
        value: value.into(),
        headers: vec![],
        timestamp_ms: now,
    }
}

/// (offset, value) of every record below the high watermark, read through
/// the client (which follows the leader) starting at `bootstrap`.
async fn read_all(bootstrap: &str, topic: &str, end: u64) -> Vec<(u64, String)> {
    let mut c = strata_tests::reader(bootstrap, topic).await;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < end {
        assert!(
            Instant::now() < deadline,
            "reading back timed out at {}",
            out.len()
        );
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            out.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_9_loses_no_acknowledged_write_and_replicas_converge() {
    strata_tests::init_test_logging();
    let (root, _tmp) = strata_tests::test_dir();
    let mut nodes = start_cluster(root.as_path());
    let first = nodes[0].grpc.clone();
    let admin = Admin::connect(&first).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("h", 1, 3, TopicConfig::default())
        .await
        .unwrap();

    let a = &admin;
    poll_until_async(
        "topic visible on node 1",
        Duration::from_secs(10),
        || async move { a.describe_topic("h").await.is_ok() },
    )
    .await;
    let producer = Producer::connect(
        &first,
        ProducerConfig {
            batch_bytes_max: 16 << 10,
            retry_backoff: Duration::from_millis(20),
            retry_backoff_max: Duration::from_millis(200),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();

    // Leader kills: 3, or STRATA_KILL_ROUNDS for a soak.
    let rounds: u64 = std::env::var("STRATA_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Every send and its outcome: value index -> (offset, acknowledged at).
    // The producer runs, paced, until the kills are over (bounded by count,
    // ~5 s of traffic per round, and by the test's deadlines).
    let send_max: u64 = 100_000 * (rounds + 2);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<u64, (u64, Instant)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let sender = {
        let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut waiters = tokio::task::JoinSet::new();
            let started = Instant::now();
            let mut sent = 0;
            while sent < send_max && !stop.load(Ordering::Relaxed) {
                let i = sent;
                // Paced: ~20 k records/s.
                if i % 200 == 0 {
                    let due = started + Duration::from_millis(i / 20);
                    tokio::time::sleep_until(due.into()).await;
                }
                let d = producer
                    .send("h", rec(format!("v{i}")), Some(0))
                    .await
                    .unwrap();
                sent += 1;
                let (acked, failed) = (acked.clone(), failed.clone());
                waiters.spawn(async move {
                    match d.await {
                        Ok(m) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert(i, (m.offset.unwrap(), Instant::now()));
                        }
                        Err(e) => failed.lock().unwrap().push((i, e.to_string())),
                    }
                });
            }
            while waiters.join_next().await.is_some() {}
            sent
        })
    };
    // Waits until `n` more records are acknowledged than now.
    let more_acks = |n: u64| {
        let a = acked.clone();
        async move {
            let from = a.lock().unwrap().len() as u64;
            poll_until_async("acknowledgements", Duration::from_secs(60), || {
                let now = a.lock().unwrap().len() as u64;
                async move { now >= from + n }
            })
            .await;
        }
    };

    // Kill the partition's leader three times while the producer runs.
    let mut failovers = Vec::new();
    for round in 1..=rounds {
        more_acks(10_000).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let victim = loop {
            if let Some(l) = leader(&mut nodes, "h").await
                && nodes[l as usize - 1].is_running()
                && leader(&mut nodes[l as usize - 1..l as usize], "h").await == Some(l)
            {
                break l;
            }
            assert!(Instant::now() < deadline, "no partition leader reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        nodes[victim as usize - 1].kill9();
        let killed_at = Instant::now();
        let a = acked.clone();
        poll_until_async(
            "an acknowledged write after the kill",
            Duration::from_secs(30),
            || {
                let after = a.lock().unwrap().values().any(|(_, t)| *t > killed_at);
                async move { after }
            },
        )
        .await;
        // Acks the old leader sent just before dying may be recorded a few
        // ms late: count only writes past everything acknowledged by then.
        let grace = killed_at + Duration::from_millis(20);
        let a = acked.clone();
        poll_until_async(
            "a write past the old leader's",
            Duration::from_secs(30),
            || {
                let m = a.lock().unwrap();
                let before = m
                    .values()
                    .filter(|(_, t)| *t <= grace)
                    .map(|(o, _)| *o)
                    .max();
                let after = m.values().any(|(o, t)| *t > grace && Some(*o) > before);
                async move { after }
            },
        )
        .await;
        let first_ack = {
            let m = acked.lock().unwrap();
            let before = m
                .values()
                .filter(|(_, t)| *t <= grace)
                .map(|(o, _)| *o)
                .max();
            m.values()
                .filter(|(o, t)| *t > grace && Some(*o) > before)
                .map(|(_, t)| *t)
                .min()
                .unwrap()
        };
        let took = first_ack - killed_at;
        println!("failover {round}: node {victim} killed; next acknowledged write after {took:?}");
        failovers.push(took);
        nodes[victim as usize - 1].restart();
    }
    // The last restarted node rejoins under load before the producer stops.
    more_acks(10_000).await;
    stop.store(true, Ordering::Relaxed);
    let total = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("the producer finished within 2 minutes")
        .unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "sends failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, total);

    // History check: every acknowledged record is where its ack said, no
    // duplicates, offsets dense from 0.
    let got = read_all(&nodes[0].grpc, "h", total).await;
    let mut seen = HashSet::new();
    for (i, (offset, value)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are dense and monotonic");
        assert!(seen.insert(value.clone()), "duplicate {value} at {offset}");
    }
    assert_eq!(got.len() as u64, total, "nothing but the records sent");
    for (i, (offset, _)) in &acked {
        assert_eq!(
            got.get(*offset as usize).map(|(_, v)| v.as_str()),
            Some(format!("v{i}").as_str()),
            "acknowledged record v{i} not at offset {offset}"
        );
    }

    // Committed group offsets survive the loss of any one node (a commit
    // must not pass the high watermark, which is beyond 4242 here).
    assert!(got.len() > 4242, "only {} records in h/0", got.len());
    admin.commit("g", "h", &[(0, 4242)]).await.unwrap();
    for victim in 0..3 {
        nodes[victim].kill9();
        let other = &nodes[(victim + 1) % 3].grpc;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = match Admin::connect(other).await {
                Ok(a) => a.committed("g", "h").await.ok(),
                Err(_) => None,
            };
            if got == Some(vec![(0, 4242)]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "offsets not readable with node {} down: {got:?}",
                victim + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        nodes[victim].restart();
    }

    // Every replica caught up (restarted ones included) and holds the same
    // bytes at the same offsets.
    for n in nodes.iter_mut() {
        let grpc = n.grpc.clone();
        poll_until_async("replica caught up", Duration::from_secs(60), || {
            let grpc = grpc.clone();
            async move {
                match Admin::connect(&grpc).await {
                    Ok(a) => a
                        .describe_topic("h")
                        .await
                        .is_ok_and(|d| d.partition_info[0].high_watermark == total),
                    Err(_) => false,
                }
            }
        })
        .await;
    }
    for n in nodes.iter_mut() {
        assert!(n.stop(), "a node did not stop cleanly");
    }
    let mut replicas = Vec::new();
    for i in 1..=3 {
        let log = PartitionLog::open_dir(
            root.as_path().join(format!("n{i}/topics/h/0")),
            LogConfig::default(),
        )
        .unwrap();
        let mut batches = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < total {
            let b = log.read(offset, 1 << 20, Some(total)).unwrap();
            let last = b.last().unwrap();
            offset = last.last_offset() + 1;
            batches.extend(b.into_iter().map(|b| (b.base_offset, b.bytes)));
        }
        replicas.push(batches);
    }
    assert_eq!(replicas[0], replicas[1], "node 1 and node 2 differ");
    assert_eq!(replicas[0], replicas[2], "node 1 and node 3 differ");
    println!(
        "failover times: {:?}; {} batches identical on 3 replicas",
        failovers,
        replicas[0].len()
    );
    drop(producer);
}
