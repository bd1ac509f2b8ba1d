//! Network partition of a partition's leader, with real processes in
//! network namespaces (blackhole routes, since the kernel has no netem;
//! no root needed: each test re-runs itself in a user, network and mount
//! namespace of its own, see `enter_lab_namespaces`): the isolated leader cannot acknowledge a write, the majority
//! elects a leader and keeps acknowledging, and after healing all replicas
//! converge to the same bytes, without the minority's write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_client::{Admin, Producer, ProducerConfig, Record, TopicConfig};
use strata_log::{LogConfig, PartitionLog};
use strata_proto::batch::{Compression, encode_batch};
use strata_proto::pb;
use strata_tests::{
    BrokerProcess, NetLab, bin, enter_lab_namespaces, init_test_logging, poll_until_async,
    wait_caught_up, wait_for_brokers,
};

fn rec(value: &str) -> Record {
    Record {
        key: None,
        value: value.to_owned().into(),
        headers: vec![],
        timestamp_ms: 0,
    }
}

async fn produce_all(addr: &str, values: impl Iterator<Item = String>) {
    produce_to(addr, "p", values).await;
}

async fn produce_to(addr: &str, topic: &str, values: impl Iterator<Item = String>) {
    let p = Producer::connect(addr, ProducerConfig::default())
        .await
        .unwrap();
    let mut waits = Vec::new();
    for v in values {
        waits.push(p.send(topic, rec(&v), Some(0)).await.unwrap());
    }
    for w in waits {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("acknowledged within 30 s")
            .unwrap();
    }
    p.close().await.unwrap();
}

/// The partition leader as node `i` reports it (0: none).
async fn leader_seen_by(addr: &str) -> u64 {
    match Admin::connect(addr).await {
        Ok(a) => a
            .describe_topic("p")
            .await
            .map_or(0, |d| d.partition_info[0].leader.unwrap_or(0)),
        Err(_) => 0,
    }
}

/// The tests here run one at a time: each runs three brokers and measures
/// how long clients take to get through a cut.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three nodes, node `i` in the lab's namespace `i`, data in `dir/n<i>`.
fn start_lab_cluster(lab: &NetLab, dir: &Path) -> Vec<BrokerProcess> {
    let peers = (1..=3)
        .map(|i| format!("{i}={}:7071", lab.addr(i)))
        .collect::<Vec<_>>()
        .join(",");
    (1..=3)
        .map(|i| {
            let a = lab.addr(i);
            BrokerProcess::start_in(
                &lab.ns(i),
                &dir.join(format!("n{i}")),
                &[
                    "--grpc-addr",
                    &format!("{a}:7070"),
                    "--http-addr",
                    &format!("{a}:7080"),
                    "--raft-addr",
                    &format!("{a}:7071"),
                    "--node-id",
                    &i.to_string(),
                    "--peers",
                    &peers,
                ],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_ack_majority_continues_and_replicas_converge() {
    let _serial = SERIAL.lock().await;
    if !enter_lab_namespaces("isolated_leader_cannot_ack_majority_continues_and_replicas_converge")
    {
        return; // passed in its namespaces
    }
    init_test_logging();
    let mut lab = NetLab::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_lab_cluster(&lab, dir.path());
    let grpc: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let admin = Admin::connect(&grpc[0]).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("p", 1, 3, TopicConfig::default())
        .await
        .unwrap();
    produce_all(&grpc[0], (0..1000).map(|i| format!("before-{i}"))).await;

    // The leader, agreed on by every node.
    let deadline = Instant::now() + Duration::from_secs(20);
    let old = loop {
        let seen = [
            leader_seen_by(&grpc[0]).await,
            leader_seen_by(&grpc[1]).await,
            leader_seen_by(&grpc[2]).await,
        ];
        if seen[0] != 0 && seen.iter().all(|l| *l == seen[0]) {
            break seen[0] as usize;
        }
        assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    lab.isolate(old);
    let cut_at = Instant::now();

    // Minority: a write sent straight to the isolated leader is never
    // acknowledged (it has no quorum).
    let mut batch = Vec::new();
    encode_batch(&[rec("minority")], Compression::None, None, &mut batch).unwrap();
    // Raw gRPC: the client library would follow the leader elsewhere.
    let mut raw = pb::strata_client::StrataClient::connect(format!("http://{}", grpc[old - 1]))
        .await
        .unwrap();
    let minority = tokio::time::timeout(
        Duration::from_secs(5),
        raw.produce(pb::ProduceRequest {
            topic: "p".into(),
            partition: 0,
            batch: batch.into(),
            acks: pb::Acks::All as i32,
        }),
    )
    .await;
    // It says so (a retriable error) instead of holding the request until
    // the network heals.
    match minority {
        Err(_) => panic!("the isolated leader held a write for 5 s without an answer"),
        Ok(Err(status)) => {
            let e = strata_client::ClientError::from(status);
            assert_eq!(
                e.code(),
                Some(strata_client::ErrorCode::NotEnoughReplicas),
                "{e}"
            );
            assert!(e.is_retriable());
        }
        Ok(Ok(r)) => panic!("the isolated leader acknowledged a write: {r:?}"),
    }

    // Majority: elects a leader among themselves and acknowledges.
    let majority: Vec<usize> = (1..=3).filter(|i| *i != old).collect();
    let m0 = grpc[majority[0] - 1].clone();
    produce_all(&m0, (0..1000).map(|i| format!("during-{i}"))).await;
    let new = leader_seen_by(&m0).await as usize;
    assert!(
        majority.contains(&new),
        "leader {new} is not in the majority"
    );
    println!(
        "partition: node {old} isolated; majority leader {new}; 1000 writes acknowledged {:?} after the cut (after the minority's refusal)",
        cut_at.elapsed()
    );

    // Heal: everyone converges on the majority's log.
    lab.heal();
    let a = Admin::connect(&m0).await.unwrap();
    wait_caught_up(&a, Some(2000), Duration::from_secs(60)).await;
    let g = grpc[old - 1].clone();
    poll_until_async("the old leader follows", Duration::from_secs(30), || {
        let g = g.clone();
        async move { leader_seen_by(&g).await == new as u64 }
    })
    .await;

    // Exactly the acknowledged records, in order, readable from the old
    // leader's side of the cluster too; the minority write is gone.
    let mut c = strata_tests::reader(&grpc[old - 1], "p").await;
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while values.len() < 2000 {
        assert!(
            Instant::now() < deadline,
            "read stalled at {}",
            values.len()
        );
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            assert_eq!(r.offset, values.len() as u64, "offsets are dense");
            values.push(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    let expected: Vec<String> = (0..1000)
        .map(|i| format!("before-{i}"))
        .chain((0..1000).map(|i| format!("during-{i}")))
        .collect();
    assert_eq!(values, expected);
    assert!(!values.iter().any(|v| v == "minority"));
    drop(c);

    for n in nodes.iter_mut() {
        assert!(n.stop(), "a node did not stop cleanly");
    }
    let logs: Vec<Vec<(u64, Vec<u8>)>> = (1..=3)
        .map(|i| {
            let log = PartitionLog::open_dir(
                dir.path().join(format!("n{i}/topics/p/0")),
                LogConfig::default(),
            )
            .unwrap();
            assert_eq!(log.next_offset(), 2000, "node {i} holds more or less");
            log.read(0, 64 << 20, Some(2000))
                .unwrap()
                .into_iter()
                .map(|b| (b.base_offset, b.bytes.to_vec()))
                .collect()
        })
        .collect();
    assert_eq!(logs[0], logs[1], "node 1 and node 2 differ");
    assert_eq!(logs[0], logs[2], "node 1 and node 3 differ");
    let distinct: HashSet<_> = logs[0].iter().map(|b| b.0).collect();
    assert_eq!(distinct.len(), logs[0].len());
}

/// How soon after a cut producers bootstrapped anywhere must have finished
/// (issue 18's target).
const CUT_TARGET: Duration = Duration::from_secs(3);

/// The leader of `t/p` as node `addr` reports it (0: none).
async fn leader_of(addr: &str, p: usize) -> u64 {
    match Admin::connect(addr).await {
        Ok(a) => a
            .describe_topic("t")
            .await
            .map_or(0, |d| d.partition_info[p].leader.unwrap_or(0)),
        Err(_) => 0,
    }
}

/// Runs `strata -b broker produce t --partition p` on `lines` records in a
/// thread; answers (succeeded, stderr, when it ended).
fn produce_cli(
    broker: &str,
    partition: u32,
    tag: &str,
) -> std::thread::JoinHandle<(bool, String, Instant)> {
    let broker = broker.to_owned();
    let input: String = (0..20).map(|i| format!("{tag}-{i}\n")).collect();
    std::thread::spawn(move || {
        let out = strata_tests::cli(
            &broker,
            &[
                "produce",
                "t",
                "--partition",
                &partition.to_string(),
                "--quiet",
            ],
            Some(input.as_bytes()),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            Instant::now(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_leader_steps_aside_and_producers_bootstrapped_anywhere_finish_within_3_s() {
    let _serial = SERIAL.lock().await;
    if !enter_lab_namespaces(
        "cut_off_leader_steps_aside_and_producers_bootstrapped_anywhere_finish_within_3_s",
    ) {
        return; // passed in its namespaces
    }
    init_test_logging();
    let mut lab = NetLab::new(3);
    let (dir, _tmp) = strata_tests::test_dir();
    let mut nodes = start_lab_cluster(&lab, &dir);
    let grpc: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let admin = Admin::connect(&grpc[1]).await.unwrap();
    wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("t", 2, 3, TopicConfig::default())
        .await
        .unwrap();
    // Node 1 leads the metadata group and t/0; node 2 leads t/1.
    admin.transfer_leader(None, 1).await.unwrap();
    admin.transfer_leader(Some(("t", 0)), 1).await.unwrap();
    admin.transfer_leader(Some(("t", 1)), 2).await.unwrap();
    let g = grpc.clone();
    poll_until_async(
        "every node agrees on the leaders",
        Duration::from_secs(30),
        || {
            let g = g.clone();
            async move {
                for addr in &g {
                    if leader_of(addr, 0).await != 1 || leader_of(addr, 1).await != 2 {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    produce_to(&grpc[0], "t", (0..100).map(|i| format!("pre-{i}"))).await;

    // A group consumer bootstrapped at node 1 follows the topic.
    let mut consumer = Command::new(bin("strata"))
        .args([
            "--broker", &grpc[0], "consume", "t", "--group", "g", "--follow",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut consumer_out = consumer.stdout.take().unwrap();
    let printed = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = consumer_out.read_to_string(&mut s);
        s
    });
    let a = &admin;
    poll_until_async(
        "the consumer commits",
        Duration::from_secs(30),
        || async move {
            a.committed("g", "t")
                .await
                .is_ok_and(|c| c.iter().map(|(_, o)| o).sum::<u64>() >= 100)
        },
    )
    .await;

    lab.isolate(1);
    let cut = Instant::now();
    // Producers started right after the cut, bootstrapped at the cut-off
    // node and at a healthy one, for the partition the cut-off node led
    // and for the one led elsewhere.
    let runs = [
        ("cut-off node, its partition", produce_cli(&grpc[0], 0, "a")),
        (
            "cut-off node, other partition",
            produce_cli(&grpc[0], 1, "b"),
        ),
        (
            "healthy node, cut-off leader's partition",
            produce_cli(&grpc[2], 0, "c"),
        ),
        (
            "healthy node, other partition",
            produce_cli(&grpc[2], 1, "d"),
        ),
    ];
    let mut report = Vec::new();
    for (what, run) in runs {
        let (ok, stderr, ended) = run.join().unwrap();
        assert!(ok, "{what}: produce failed: {stderr}");
        if std::env::var_os("STRATA_LOG").is_some() {
            println!("--- {what}:\n{stderr}");
        }
        report.push((what, ended.duration_since(cut)));
    }
    println!("after the cut, producers finished: {report:?}");
    for (what, took) in &report {
        assert!(
            *took <= CUT_TARGET,
            "{what}: finished {took:?} after the cut (target {CUT_TARGET:?})"
        );
    }
    // The cut-off node no longer claims t/0 for writes: it answers
    // NOT_ENOUGH_REPLICAS, and the majority elected another leader.
    let new0 = leader_of(&grpc[2], 0).await;
    assert!(
        new0 == 2 || new0 == 3,
        "t/0 is led by {new0} on the majority side"
    );
    // The group consumer is still running although its commits fail.
    assert!(
        consumer.try_wait().unwrap().is_none(),
        "the consumer exited while its bootstrap node was cut off"
    );

    lab.heal();
    let g0 = grpc[0].clone();
    poll_until_async("the old leader follows", Duration::from_secs(30), || {
        let g0 = g0.clone();
        async move { leader_of(&g0, 0).await == new0 }
    })
    .await;
    // After the heal the consumer reads everything and commits it.
    poll_until_async(
        "the consumer commits every record",
        Duration::from_secs(60),
        || async move {
            a.committed("g", "t")
                .await
                .is_ok_and(|c| c.iter().map(|(_, o)| o).sum::<u64>() >= 180)
        },
    )
    .await;
    consumer.kill().unwrap();
    consumer.wait().unwrap();
    let printed = printed.join().unwrap();
    for tag in ["pre-0", "a-19", "b-19", "c-19", "d-19"] {
        assert!(printed.contains(tag), "the consumer never printed {tag}");
    }
    for n in nodes.iter_mut() {
        assert!(n.stop(), "a node did not stop cleanly");
    }
}
