//! `strata bench produce|consume`: load against a running broker.
//!
//! `produce` runs concurrent producers, optionally paced to a target rate,
//! and measures send-to-acknowledgement latency from each record's
//! *scheduled* send time (no coordinated omission) into an HDR histogram;
//! `consume` replays a topic from its start. Both print rates (and
//! percentiles) through `render`.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use strata_client::{
    Admin, ClientError, Compression, Consumer, ConsumerConfig, Delivery, Producer, ProducerConfig,
    Record, ResetPolicy, TopicConfig,
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
    }
}

async fn produce(broker: &str, json: bool, a: BenchProduceArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match admin.describe_topic(&a.topic).await {
        Ok(_) => {}
        Err(ClientError::UnknownTopic(_)) => {
            admin
                .create_topic(
                    &a.topic,
                    a.partitions,
                    a.replication_factor,
                    TopicConfig::default(),
                )
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
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
