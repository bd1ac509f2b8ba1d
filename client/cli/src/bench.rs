//! `strata bench produce|consume|groups`: load against a running broker.
//!
//! `produce` runs concurrent producers, optionally paced to a target rate,
//! and measures send-to-acknowledgement latency from each record's
//! *scheduled* send time (no coordinated omission) into an HDR histogram;
//! `consume` replays a topic from its start; `groups` measures offset
//! commits over many groups and the time rebalances take. Both print rates (and
//! percentiles) through `render`.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use strata_client::{
    Admin, ClientError, Compression, Consumer, ConsumerConfig, Delivery, GroupConsumer,
    GroupConsumerConfig, Producer, ProducerConfig, Record, ResetPolicy, TopicConfig,
};
use strata_proto::now_ms;

use crate::produce::AcksArg;
use crate::render::{self, ConsumeBench, ProduceBench};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Produce records as fast as acknowledgements allow; prints rate and latency percentiles.
    Produce(BenchProduceArgs),
    /// Replay a topic from offset 0; prints records/s and MB/s.
    Consume {
        /// Topic.
        topic: String,
        /// Stop after this many records (default: up to the high watermark at start).
        #[arg(long)]
        records: Option<u64>,
    },
    /// Offset commits/s over many groups (standalone commits of every
    /// partition), then a member join and a member crash: how long each
    /// takes to rebalance.
    Groups(BenchGroupsArgs),
}

#[derive(Args, Debug)]
pub struct BenchProduceArgs {
    /// Topic (created with --partitions if missing).
    topic: String,
    /// Records to send (bounded run).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Producer linger in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Compress batches with LZ4.
    #[arg(long)]
    lz4: bool,
    /// Target rate in records/s across all producers (0: as fast as
    /// acknowledgements allow). Latency is measured from each record's
    /// scheduled send time, so a stall is not hidden (no coordinated
    /// omission).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Replication factor when the topic is created (cluster mode).
    #[arg(long, default_value_t = 1)]
    replication_factor: u32,
}

/// Latencies are recorded in µs, from 1 µs to 60 s, to 3 significant digits.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub async fn run(broker: &str, json: bool, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Produce(a) => produce(broker, json, a).await,
        BenchCmd::Consume { topic, records } => consume(broker, json, &topic, records).await,
        BenchCmd::Groups(a) => groups(broker, json, a).await,
    }
}

/// Creates `topic` with `partitions` and `replication_factor` unless it
/// exists.
async fn ensure_topic(
    admin: &Admin,
    topic: &str,
    partitions: u32,
    replication_factor: u32,
) -> anyhow::Result<()> {
    match admin.describe_topic(topic).await {
        Ok(_) => Ok(()),
        Err(ClientError::UnknownTopic(_)) => {
            admin
                .create_topic(
                    topic,
                    partitions,
                    replication_factor,
                    TopicConfig::default(),
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn produce(broker: &str, json: bool, a: BenchProduceArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    ensure_topic(&admin, &a.topic, a.partitions, a.replication_factor).await?;
    // Seconds between two records of one producer, when paced.
    let interval = (a.rate > 0).then(|| a.producers.max(1) as f64 / a.rate as f64);
    let config = ProducerConfig {
        batch_bytes_max: a.batch_bytes,
        linger: Duration::from_millis(a.linger_ms),
        acks: a.acks.into(),
        compression: if a.lz4 {
            Compression::Lz4
        } else {
            Compression::None
        },
        ..ProducerConfig::default()
    };
    let value = Bytes::from(vec![b'x'; a.record_bytes]);
    let per = a.records / a.producers.max(1) as u64;
    // Warm-up, not measured: every producer gets its id and one record per
    // partition acknowledged, so a just-created topic has elected its
    // leaders and the clients have found them.
    let partitions = admin.describe_topic(&a.topic).await?.partitions;
    let mut producers = Vec::new();
    for _ in 0..a.producers.max(1) {
        let producer = Producer::connect(broker, config.clone()).await?;
        for p in 0..partitions {
            let record = Record {
                key: None,
                value: value.clone(),
                headers: vec![],
                timestamp_ms: now_ms(),
            };
            producer.send_and_wait(&a.topic, record, Some(p)).await?;
        }
        producers.push(producer);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for producer in producers {
        let (topic, value) = (a.topic.clone(), value.clone());
        tasks.spawn(async move {
            // A reaper awaits deliveries in send order (one partition's
            // acknowledgements arrive in order) and records send-to-ack time.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Delivery)>(1 << 16);
            let reaper = tokio::spawn(async move {
                let mut hist = latency_histogram()?;
                while let Some((t0, d)) = rx.recv().await {
                    d.await?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                }
                anyhow::Ok(hist)
            });
            for k in 0..per {
                let t0 = match interval {
                    Some(i) => {
                        let due = started + Duration::from_secs_f64(i * k as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let record = Record {
                    key: None,
                    value: value.clone(),
                    headers: vec![],
                    timestamp_ms: now_ms(),
                };
                let d = producer.send(&topic, record, None).await?;
                tx.send((t0, d))
                    .await
                    .map_err(|_| anyhow::anyhow!("latency reaper stopped"))?;
            }
            drop(tx);
            producer.flush().await?;
            let hist = reaper.await??;
            producer.close().await?;
            anyhow::Ok(hist)
        });
    }
    let mut latency_us = latency_histogram()?;
    while let Some(h) = tasks.join_next().await {
        latency_us.add(h??)?;
    }
    render::print_produce_bench(
        &ProduceBench {
            records: per * a.producers.max(1) as u64,
            record_bytes: a.record_bytes,
            producers: a.producers,
            seconds: started.elapsed().as_secs_f64(),
            latency_us,
        },
        json,
    );
    Ok(())
}

async fn consume(
    broker: &str,
    json: bool,
    topic: &str,
    records: Option<u64>,
) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    let available = admin.describe_topic(topic).await?.records();
    let target = records.unwrap_or(available).min(available);
    if target == 0 {
        bail!("topic {topic} has no records to replay");
    }
    let config = ConsumerConfig {
        reset: ResetPolicy::Earliest,
        fetch_bytes_max: 4 << 20,
        ..ConsumerConfig::default()
    };
    let started = Instant::now();
    let mut consumer = Consumer::connect(broker, topic, None, config).await?;
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < target {
        let rs = consumer.poll(Duration::from_secs(5)).await?;
        if rs.is_empty() {
            bail!("no records for 5 s after {n} of {target}");
        }
        n += rs.len() as u64;
        bytes += rs.iter().map(|r| r.value.len() as u64).sum::<u64>();
    }
    render::print_consume_bench(
        &ConsumeBench {
            records: n,
            value_bytes: bytes,
            seconds: started.elapsed().as_secs_f64(),
        },
        json,
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchGroupsArgs {
    /// Topic the groups commit offsets for (created with --partitions if
    /// missing; gets --commits records per partition first).
    #[arg(long, default_value = "bench-groups")]
    topic: String,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Replication factor when the topic is created (cluster mode).
    #[arg(long, default_value_t = 1)]
    replication_factor: u32,
    /// Groups committing.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Commits per group (each carries every partition's offset).
    #[arg(long, default_value_t = 10)]
    commits: u64,
    /// Commit requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Members' session timeout for the rebalance measurements, in ms.
    #[arg(long, default_value_t = 3000)]
    session_timeout_ms: u64,
}

/// `bench groups`: offset commits/s over many groups, then the time a
/// member join and a member crash take to rebalance.
async fn groups(broker: &str, json: bool, a: BenchGroupsArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    ensure_topic(&admin, &a.topic, a.partitions, a.replication_factor).await?;
    let partitions = admin.describe_topic(&a.topic).await?.partitions;
    // Records to commit offsets over (a commit may not pass the high
    // watermark).
    let producer = Producer::connect(broker, ProducerConfig::default()).await?;
    for p in 0..partitions {
        for _ in 0..a.commits {
            let record = Record {
                key: None,
                value: Bytes::from_static(b"x"),
                headers: vec![],
                timestamp_ms: now_ms(),
            };
            producer.send(&a.topic, record, Some(p)).await?;
        }
    }
    producer.flush().await?;
    producer.close().await?;

    // Commits: group g commits offsets 1..=commits on every partition.
    let run_id = now_ms();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = a.groups.div_ceil(a.concurrency.max(1));
    for t in 0..a.concurrency.max(1) {
        let admin = admin.clone();
        let topic = a.topic.clone();
        let commits = a.commits;
        let groups: Vec<usize> = (t * per_task..((t + 1) * per_task).min(a.groups)).collect();
        tasks.spawn(async move {
            let mut hist = latency_histogram()?;
            for c in 1..=commits {
                for g in &groups {
                    let offsets: Vec<(u32, u64)> = (0..partitions).map(|p| (p, c)).collect();
                    let t0 = Instant::now();
                    admin
                        .commit(&format!("bench-{run_id}-{g}"), &topic, &offsets)
                        .await?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                }
            }
            anyhow::Ok(hist)
        });
    }
    let mut latency_us = latency_histogram()?;
    while let Some(h) = tasks.join_next().await {
        latency_us.add(h??)?;
    }
    let commit_secs = started.elapsed().as_secs_f64();
    let commit_requests = latency_us.len();

    // Rebalance: member A alone, then B joins, then B crashes.
    let group = format!("bench-{run_id}-rebalance");
    let session = Duration::from_millis(a.session_timeout_ms);
    let config = |id: &str| {
        let mut c = GroupConsumerConfig::new(&group, &[a.topic.as_str()]);
        c.session_timeout = Some(session);
        c.client_id = format!("bench-{id}");
        c
    };
    let deadline = Duration::from_secs(60) + session * 2;
    let t0 = Instant::now();
    let mut m1 = GroupConsumer::join(broker, config("a")).await?;
    while m1.assignment().len() < partitions as usize {
        if t0.elapsed() > deadline {
            bail!("the first member never got every partition");
        }
        m1.poll(Duration::from_millis(20)).await?;
    }
    let first_join = t0.elapsed();
    let t0 = Instant::now();
    let mut m2 = GroupConsumer::join(broker, config("b")).await?;
    let half = partitions as usize / 2;
    while m2.assignment().len() < half || m1.assignment().len() > partitions as usize - half {
        if t0.elapsed() > deadline {
            bail!("the second member never got its share");
        }
        m1.poll(Duration::from_millis(10)).await?;
        m2.poll(Duration::from_millis(10)).await?;
    }
    let second_join = t0.elapsed();
    // A crash: B stops heartbeating and is not closed.
    drop(m2);
    let t0 = Instant::now();
    while m1.assignment().len() < partitions as usize {
        if t0.elapsed() > deadline {
            bail!("the crashed member's partitions never moved");
        }
        m1.poll(Duration::from_millis(20)).await?;
    }
    let crash = t0.elapsed();
    m1.close().await?;

    let q = |p: f64| latency_us.value_at_quantile(p) as f64 / 1000.0;
    if json {
        render::print_json(&serde_json::json!({
            "groups": a.groups, "partitions": partitions, "commit_requests": commit_requests,
            "commits_per_s": commit_requests as f64 / commit_secs,
            "partition_offsets_per_s": (commit_requests * u64::from(partitions)) as f64 / commit_secs,
            "commit_ms": {"p50": q(0.5), "p99": q(0.99), "max": latency_us.max() as f64 / 1000.0},
            "first_join_ms": first_join.as_secs_f64() * 1000.0,
            "second_join_ms": second_join.as_secs_f64() * 1000.0,
            "crash_ms": crash.as_secs_f64() * 1000.0,
            "session_timeout_ms": a.session_timeout_ms,
        }));
    } else {
        println!(
            "{commit_requests} commits of {partitions} partitions over {} groups in {commit_secs:.2} s: {:.0} commits/s ({:.0} partition offsets/s), latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            a.groups,
            commit_requests as f64 / commit_secs,
            (commit_requests * u64::from(partitions)) as f64 / commit_secs,
            q(0.5),
            q(0.99),
            latency_us.max() as f64 / 1000.0
        );
        println!(
            "rebalance: first member owns all {partitions} partitions after {:.0} ms; a second member has its share after {:.0} ms; a crashed member's partitions move after {:.0} ms (session timeout {} ms)",
            first_join.as_secs_f64() * 1000.0,
            second_join.as_secs_f64() * 1000.0,
            crash.as_secs_f64() * 1000.0,
            a.session_timeout_ms
        );
    }
    Ok(())
}
