//! Many partitions on a 3-node cluster of real `strata-broker` processes:
//! hundreds of RF=3 partitions go to sleep once idle (no Raft timers), the
//! node leading the most of them is killed with SIGKILL, every group elects
//! a new leader and takes writes again, the killed node comes back, catches
//! up and sleeps again, and every acknowledged record is there, at the
//! offset it was acknowledged with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use strata_client::{
    Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Record, ResetPolicy, TopicConfig,
};
use strata_tests::{http, poll_until_async, start_cluster, wait_for_brokers};

const TOPICS: u32 = 2;
const PARTITIONS: u32 = 100;
const RECORDS_PER_PARTITION: u64 = 3;

fn rec(value: String) -> Record {
    Record {
        key: None,
        value: value.into(),
        headers: vec![],
        timestamp_ms: strata_proto::now_ms(),
    }
}

/// A gauge or counter of a node's `/metrics`, summed over its label sets
/// matching `label`.
fn metric(http_addr: &str, name: &str, label: &str) -> Option<f64> {
    let (status, body) = http(http_addr, "GET", "/metrics", b"");
    if status != 200 {
        return None;
    }
    let mut total = None;
    for line in body.lines() {
        if line.starts_with(name) && line.contains(label) {
            let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Sends `per` records to every partition of every topic through one
/// producer; answers (topic, partition) → [(offset, value)] acknowledged.
async fn write_round(
    bootstrap: &str,
    round: &str,
    per: u64,
) -> BTreeMap<(String, u32), Vec<(u64, String)>> {
    let producer = Producer::connect(
        bootstrap,
        ProducerConfig {
            retry_backoff: Duration::from_millis(20),
            retry_backoff_max: Duration::from_millis(500),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    for t in 0..TOPICS {
        let topic = format!("s{t}");
        for p in 0..PARTITIONS {
            for i in 0..per {
                let value = format!("{round}-{topic}-{p}-{i}");
                let d = producer
                    .send(&topic, rec(value.clone()), Some(p))
                    .await
                    .unwrap();
                pending.push(((topic.clone(), p), value, d));
            }
        }
    }
    let mut acked: BTreeMap<(String, u32), Vec<(u64, String)>> = BTreeMap::new();
    for (key, value, d) in pending {
        let m = d
            .await
            .unwrap_or_else(|e| panic!("{key:?} {value}: not acknowledged: {e}"));
        acked
            .entry(key)
            .or_default()
            .push((m.offset.unwrap(), value));
    }
    producer.close().await.unwrap();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_sleeping_groups_fail_over_together_and_lose_nothing() {
    strata_tests::init_test_logging();
    let (root, _tmp) = strata_tests::test_dir();
    let mut nodes = start_cluster(root.as_path());
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    let started = Instant::now();
    for t in 0..TOPICS {
        admin
            .create_topic(&format!("s{t}"), PARTITIONS, 3, TopicConfig::default())
            .await
            .unwrap();
    }
    let total = (TOPICS * PARTITIONS) as usize;
    let a = &admin;
    // A bound on waiting, not a performance target (creation times are a
    // benchmark's, `bench/partitions.sh`): 200 RF=3 partitions took 52 s to
    // be led in this debug build alone on 2 cores, and over 120 s once in
    // CI after the other test binaries.
    poll_until_async(
        "every partition led",
        Duration::from_secs(300),
        || async move {
            a.cluster_status().await.is_ok_and(|st| {
                st.partitions.len() == total && st.partitions.iter().all(|p| p.leader.is_some())
            })
        },
    )
    .await;
    eprintln!(
        "{total} partitions (RF=3) created and led in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut acked = write_round(&nodes[0].grpc, "a", RECORDS_PER_PARTITION).await;

    // Idle, every replica of every group goes to sleep: no ticks, no
    // heartbeats.
    for n in &nodes {
        let addr = n.http.clone();
        poll_until_async(
            "every replica asleep",
            Duration::from_secs(60),
            || {
                let addr = addr.clone();
                async move {
                    metric(&addr, "strata_raft_groups", "figure=\"asleep\"")
                        == Some(total as f64)
                }
            },
        )
        .await;
    }

    // Kill -9 the node that leads the most partitions.
    let mut led: HashMap<u64, usize> = HashMap::new();
    for t in 0..TOPICS {
        for p in admin
            .describe_topic(&format!("s{t}"))
            .await
            .unwrap()
            .partition_info
        {
            *led.entry(p.leader.unwrap()).or_default() += 1;
        }
    }
    let (&victim, &count) = led.iter().max_by_key(|(_, c)| **c).unwrap();
    assert!(count > 1, "leaders spread: {led:?}");
    nodes[victim as usize - 1].kill9();
    let killed = Instant::now();
    eprintln!("killed node {victim}, leader of {count} partitions");

    // Every partition takes a write again, through a survivor.
    let survivor = nodes
        .iter()
        .enumerate()
        .find(|(i, _)| *i as u64 + 1 != victim)
        .map(|(_, n)| n.grpc.clone())
        .unwrap();
    let after = write_round(&survivor, "b", 1).await;
    eprintln!(
        "every partition acknowledged a write {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    for (k, v) in after {
        acked.entry(k).or_default().extend(v);
    }

    // The killed node comes back: it catches up on every partition, and
    // its replicas go back to sleep.
    nodes[victim as usize - 1].restart();
    let survivor_admin = Admin::connect(&survivor).await.unwrap();
    let a = &survivor_admin;
    poll_until_async(
        "the restarted node caught up on every partition",
        Duration::from_secs(120),
        || async move {
            a.cluster_status().await.is_ok_and(|st| {
                st.partitions.len() == total
                    && st.partitions.iter().all(|p| {
                        p.lag.len() == 3
                            && p.lag
                                .values()
                                .all(|l| *l == strata_client::ReplicaLag::Records(0))
                    })
            })
        },
    )
    .await;
    let back = nodes[victim as usize - 1].http.clone();
    poll_until_async(
        "the restarted node's replicas asleep",
        Duration::from_secs(60),
        || {
            let back = back.clone();
            async move {
                metric(&back, "strata_raft_groups", "figure=\"asleep\"") == Some(total as f64)
            }
        },
    )
    .await;

    // Every acknowledged record is readable at its offset.
    for t in 0..TOPICS {
        let topic = format!("s{t}");
        let mut c = Consumer::connect(
            &survivor,
            &topic,
            None,
            ConsumerConfig {
                reset: ResetPolicy::Earliest,
                ..ConsumerConfig::default()
            },
        )
        .await
        .unwrap();
        let want: usize = (0..PARTITIONS)
            .map(|p| acked[&(topic.clone(), p)].len())
            .sum();
        let mut got: HashMap<(u32, u64), String> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "{topic}: read {} of {want}",
                got.len()
            );
            for r in c.poll(Duration::from_millis(500)).await.unwrap() {
                got.insert(
                    (r.partition, r.offset),
                    String::from_utf8(r.value.to_vec()).unwrap(),
                );
            }
        }
        for p in 0..PARTITIONS {
            for (offset, value) in &acked[&(topic.clone(), p)] {
                assert_eq!(
                    got.get(&(p, *offset)),
                    Some(value),
                    "{topic}/{p} offset {offset}: acknowledged record lost or moved"
                );
            }
        }
    }
}
