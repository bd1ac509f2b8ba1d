//! `strata-compare`: runs the same workloads against Strata, Redis Streams
//! and NATS JetStream from one program (so client overhead is comparable),
//! measures the machine's physical limits in the same run, and prints a
//! table with absolute figures and Strata's ratio to the best peer.
//! `bench/compare.sh` installs and starts the servers and calls it.
//!
//! Every workload is bounded in count and in time.

use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use strata_client::{
    Acks, Admin, Compression, Consumer, ConsumerConfig, Producer, ProducerConfig, Record,
    ResetPolicy, TopicConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// Side-by-side benchmark of Strata, Redis Streams and NATS JetStream.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Strata gRPC address.
    #[arg(long)]
    strata: String,
    /// Redis address (host:port), configured with `appendfsync always`.
    #[arg(long)]
    redis: String,
    /// NATS address (host:port), with JetStream enabled (file storage).
    #[arg(long)]
    nats: String,
    /// Directory on the disk under test (for the physical limits).
    #[arg(long)]
    data_dir: PathBuf,
    /// Records per produce workload of 100-byte values (1 KiB workloads send a tenth).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Records replayed from the start.
    #[arg(long, default_value_t = 10_000_000)]
    replay_records: u64,
    /// Fixed rate of the latency workload (records/s).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Duration of the latency workload (s).
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Time limit of each produce workload (s); the rate is measured over what was sent.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Workloads to run (comma-separated: produce, replay, latency, rf3).
    #[arg(long, default_value = "produce,replay,latency", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A node of a 3-node Strata cluster, for the RF=3 workload (`rf3`).
    #[arg(long)]
    strata_cluster: Option<String>,
    /// A server of a 3-node NATS cluster with JetStream, for `rf3`.
    #[arg(long)]
    nats_cluster: Option<String>,
    /// Replicas of the logs created (set to 3 by the `rf3` workload).
    #[arg(long, default_value_t = 1, hide = true)]
    replication: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Strata,
    Redis,
    Nats,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Strata => "Strata",
            System::Redis => "Redis",
            System::Nats => "NATS",
        }
    }
}

const SYSTEMS: [System; 3] = [System::Strata, System::Redis, System::Nats];

/// Bounded, time-limited concurrent sends: a window of pending acks.
const WINDOW: usize = 4096;

fn payload(size: usize, i: u64) -> Bytes {
    let mut v = vec![b'x'; size];
    let tag = i.to_le_bytes();
    v[..8.min(size)].copy_from_slice(&tag[..8.min(size)]);
    Bytes::from(v)
}

// ---------- physical limits ----------

fn fsync_bandwidth(dir: &std::path::Path) -> anyhow::Result<f64> {
    let path = dir.join("strata-compare-fsync");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    let buf = vec![7u8; 1 << 20];
    let total = 256u64;
    let t = Instant::now();
    for i in 0..total {
        f.write_all_at(&buf, i << 20)?;
        f.sync_data()?;
    }
    let mbs = (total << 20) as f64 / 1e6 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(mbs)
}

fn fsync_latency(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("strata-compare-lat");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let buf = vec![7u8; 4096];
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..2000u64 {
        let t = Instant::now();
        f.write_all_at(&buf, i * 4096)?;
        f.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    ))
}

async fn loopback_bandwidth() -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total: u64 = 2 << 30;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        anyhow::Ok(got)
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![1u8; 1 << 20];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    s.shutdown().await?;
    let got = reader.await??;
    Ok(got as f64 / 1e6 / t.elapsed().as_secs_f64())
}

// ---------- clients ----------

async fn redis_conn(addr: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn nats_js(addr: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::connect(addr).await?;
    Ok(async_nats::jetstream::new(client))
}

async fn nats_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    use async_nats::jetstream::stream::{Config, StorageType};
    let _ = js.delete_stream(name).await;
    // A fresh JetStream cluster answers "insufficient resources" until its
    // meta leader is elected and the peers are known: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match js
            .create_stream(Config {
                name: name.to_owned(),
                subjects: vec![format!("{name}.>")],
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("creating NATS stream {name} (R{replicas}): {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates an empty log named `name` on `sys`: a one-partition topic, a
/// JetStream file stream, or a fresh Redis stream key.
async fn create_log(a: &Args, sys: System, name: &str) -> anyhow::Result<()> {
    match sys {
        System::Strata => {
            Admin::connect(&a.strata)
                .await?
                .create_topic(name, 1, a.replication, TopicConfig::default())
                .await?;
            if a.replication > 1 {
                // Start the clock once the partition's group has a leader.
                let admin = Admin::connect(&a.strata).await?;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let st = admin.cluster_status().await?;
                    if st
                        .partitions
                        .iter()
                        .any(|p| p.topic == name && p.leader.is_some())
                    {
                        break;
                    }
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "no leader for {name} within 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        System::Nats => nats_stream(&nats_js(&a.nats).await?, name, a.replication as usize).await?,
        System::Redis => {
            let mut c = redis_conn(&a.redis).await?;
            redis::cmd("DEL")
                .arg(name)
                .query_async::<()>(&mut c)
                .await?;
        }
    }
    Ok(())
}

/// Writes back every dirty page on the machine, so data the previous runs
/// left in the page cache (NATS syncs lazily, every 2 minutes) is not
/// written back during a latency run of a system that fsyncs every write.
fn quiesce_disk() -> anyhow::Result<()> {
    let status = std::process::Command::new("sync").status()?;
    anyhow::ensure!(status.success(), "sync failed");
    Ok(())
}

/// Waits (up to 120 s) until every replica of every Strata partition and
/// every NATS stream has caught up with its leader.
async fn settle(a: &Args) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    quiesce_disk()?;
    let admin = Admin::connect(&a.strata).await?;
    loop {
        let st = admin.cluster_status().await?;
        if st.partitions.iter().all(|p| {
            p.lag
                .values()
                .all(|l| *l == strata_client::ReplicaLag::Records(0))
        }) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Strata replicas did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = nats_js(&a.nats).await?;
    let mut names = Vec::new();
    let mut list = js.stream_names();
    while let Some(n) = list.next().await {
        names.push(n?);
    }
    for n in names {
        loop {
            let info = js.get_stream(&n).await?.info().await?.clone();
            let caught_up = info.cluster.as_ref().is_none_or(|c| {
                c.replicas
                    .iter()
                    .all(|r| r.current && r.lag.unwrap_or(0) == 0)
            });
            if caught_up {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "NATS stream {n} did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Produces `n` records of `size` bytes from `producers` concurrent
/// producers, acknowledged durably; returns (records sent, seconds).
async fn produce(
    a: &Args,
    sys: System,
    name: &str,
    size: usize,
    producers: usize,
    n: u64,
) -> anyhow::Result<(u64, f64)> {
    let per = n / producers as u64;
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    create_log(a, sys, name).await?;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let (a_strata, a_redis, a_nats, name) = (
            a.strata.clone(),
            a.redis.clone(),
            a.nats.clone(),
            name.to_owned(),
        );
        tasks.spawn(async move {
            let mut sent = 0u64;
            match sys {
                System::Strata => {
                    let cfg = ProducerConfig {
                        compression: Compression::None,
                        acks: Acks::All,
                        ..ProducerConfig::default()
                    };
                    let producer = Producer::connect(&a_strata, cfg).await?;
                    let mut pending = VecDeque::new();
                    while sent < per && Instant::now() < deadline {
                        let r = Record {
                            key: None,
                            value: payload(size, sent),
                            headers: vec![],
                            timestamp_ms: 0,
                        };
                        pending.push_back(producer.send(&name, r, Some(0)).await?);
                        sent += 1;
                        while pending.len() > 100_000 {
                            if let Some(d) = pending.pop_front() {
                                d.await?;
                            }
                        }
                    }
                    producer.flush().await?;
                    for d in pending {
                        d.await?;
                    }
                    producer.close().await?;
                }
                System::Redis => {
                    let mut c = redis_conn(&a_redis).await?;
                    while sent < per && Instant::now() < deadline {
                        let mut pipe = redis::pipe();
                        let k = 1000.min(per - sent);
                        for i in 0..k {
                            pipe.cmd("XADD")
                                .arg(&name)
                                .arg("*")
                                .arg("v")
                                .arg(payload(size, sent + i).as_ref())
                                .ignore();
                        }
                        pipe.query_async::<()>(&mut c).await?;
                        sent += k;
                    }
                }
                System::Nats => {
                    let js = nats_js(&a_nats).await?;
                    let subject = format!("{name}.p{p}");
                    let mut acks = VecDeque::new();
                    while sent < per && Instant::now() < deadline {
                        acks.push_back(js.publish(subject.clone(), payload(size, sent)).await?);
                        sent += 1;
                        if acks.len() >= WINDOW
                            && let Some(f) = acks.pop_front()
                        {
                            f.await?;
                        }
                    }
                    for f in acks {
                        f.await?;
                    }
                }
            }
            anyhow::Ok(sent)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

/// Replays `n` records (produced first) from the start; returns (records, seconds).
async fn replay(a: &Args, sys: System, n: u64) -> anyhow::Result<(u64, f64)> {
    let name = "replay";
    let (written, _) = produce(a, sys, name, 100, 1, n).await?;
    let t = Instant::now();
    let mut got = 0u64;
    match sys {
        System::Strata => {
            let cfg = ConsumerConfig {
                reset: ResetPolicy::Earliest,
                fetch_bytes_max: 4 << 20,
                max_poll_records: 100_000,
                ..ConsumerConfig::default()
            };
            let mut c = Consumer::connect(&a.strata, name, None, cfg).await?;
            while got < written {
                let rs = c.poll(Duration::from_secs(5)).await?;
                if rs.is_empty() {
                    bail!("Strata replay stalled at {got}");
                }
                got += rs.len() as u64;
            }
        }
        System::Redis => {
            let mut c = redis_conn(&a.redis).await?;
            let mut from = "-".to_owned();
            while got < written {
                let v: redis::Value = redis::cmd("XRANGE")
                    .arg(name)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut c)
                    .await?;
                let ids = entry_ids(&v);
                let Some(last) = ids.last() else {
                    bail!("Redis replay stalled at {got}")
                };
                got += ids.len() as u64;
                from = format!("({last}");
            }
        }
        System::Nats => {
            use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
            let js = nats_js(&a.nats).await?;
            let stream = js.get_stream(name).await?;
            let consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    ..Default::default()
                })
                .await?;
            while got < written {
                let mut batch = consumer
                    .fetch()
                    .max_messages(10_000)
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await?;
                let before = got;
                while let Some(m) = batch.next().await {
                    m.map_err(|e| anyhow::anyhow!("{e}"))?;
                    got += 1;
                }
                if got == before {
                    bail!("NATS replay stalled at {got}");
                }
            }
        }
    }
    Ok((got, t.elapsed().as_secs_f64()))
}

/// Whether `items` is one stream entry: `[id, [field, value, …]]` (the
/// per-stream `[key, [entries…]]` pair of XREAD has arrays inside instead).
fn is_entry(items: &[redis::Value]) -> bool {
    matches!(items, [redis::Value::BulkString(_), redis::Value::Array(fields)]
        if fields.iter().all(|f| matches!(f, redis::Value::BulkString(_))))
}

/// Stream entry ids in an XRANGE/XREAD reply, in order.
fn entry_ids(v: &redis::Value) -> Vec<String> {
    fn walk(v: &redis::Value, out: &mut Vec<String>) {
        if let redis::Value::Array(items) = v {
            if let (true, [redis::Value::BulkString(id), _]) = (is_entry(items), items.as_slice()) {
                out.push(String::from_utf8_lossy(id).into_owned());
                return;
            }
            for i in items {
                walk(i, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// Values in an XREAD reply.
fn entry_values(v: &redis::Value, out: &mut Vec<Vec<u8>>) {
    if let redis::Value::Array(items) = v {
        if let (true, [_, redis::Value::Array(fields)]) = (is_entry(items), items.as_slice()) {
            if let Some(redis::Value::BulkString(val)) = fields.get(1) {
                out.push(val.clone());
            }
            return;
        }
        for i in items {
            entry_values(i, out);
        }
    }
}

/// End-to-end latency at a fixed rate: each record carries its *intended*
/// send time, so a stalled sender does not hide latency (no coordinated
/// omission). Returns p50, p99, p99.9 in ms and the records received.
async fn latency(a: &Args, sys: System) -> anyhow::Result<(f64, f64, f64, u64)> {
    let name = "latency";
    let total = a.rate * a.latency_seconds;
    let epoch = Instant::now();
    create_log(a, sys, name).await?;
    let stamp = |i: u64| -> Bytes {
        let intended = Duration::from_secs_f64(1.0 + i as f64 / a.rate as f64).as_nanos() as u64;
        let mut v = vec![b'x'; 100];
        v[..8].copy_from_slice(&intended.to_le_bytes());
        Bytes::from(v)
    };
    let read = |b: &[u8]| -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[..8]);
        u64::from_le_bytes(x)
    };
    // Consumer first.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1 << 16);
    let (sa, ra, na) = (a.strata.clone(), a.redis.clone(), a.nats.clone());
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        match sys {
            System::Strata => {
                let cfg = ConsumerConfig {
                    reset: ResetPolicy::Earliest,
                    ..ConsumerConfig::default()
                };
                let mut c = Consumer::connect(&sa, name, None, cfg).await?;
                while got < total {
                    for r in c.poll(Duration::from_millis(200)).await? {
                        let _ = tx
                            .send(
                                epoch.elapsed().as_nanos() as u64
                                    - read(&r.value).min(epoch.elapsed().as_nanos() as u64),
                            )
                            .await;
                        got += 1;
                    }
                    if epoch.elapsed() > Duration::from_secs(30 + total / 1000) {
                        break;
                    }
                }
            }
            System::Redis => {
                let mut c = redis_conn(&ra).await?;
                let mut last = "0".to_owned();
                while got < total {
                    let v: redis::Value = redis::cmd("XREAD")
                        .arg("BLOCK")
                        .arg(200)
                        .arg("COUNT")
                        .arg(1000)
                        .arg("STREAMS")
                        .arg(name)
                        .arg(&last)
                        .query_async(&mut c)
                        .await?;
                    let mut vals = Vec::new();
                    entry_values(&v, &mut vals);
                    let ids = entry_ids(&v);
                    let now = epoch.elapsed().as_nanos() as u64;
                    for val in &vals {
                        let _ = tx.send(now.saturating_sub(read(val))).await;
                        got += 1;
                    }
                    if let Some(l) = ids.last() {
                        last = l.clone();
                    }
                    if epoch.elapsed() > Duration::from_secs(30 + total / 1000) {
                        break;
                    }
                }
            }
            System::Nats => {
                use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
                let js = nats_js(&na).await?;
                let stream = js.get_stream(name).await?;
                let consumer = stream
                    .create_consumer(pull::Config {
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::None,
                        ..Default::default()
                    })
                    .await?;
                let mut messages = consumer.messages().await?;
                while got < total {
                    let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
                    let Ok(Some(m)) = next else { break };
                    let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
                    let now = epoch.elapsed().as_nanos() as u64;
                    let _ = tx.send(now.saturating_sub(read(&m.payload))).await;
                    got += 1;
                }
            }
        }
        anyhow::Ok(got)
    });
    let collector = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?;
        while let Some(ns) = rx.recv().await {
            h.record(ns.max(1))?;
        }
        anyhow::Ok(h)
    });
    // Producer at the fixed rate, starting 1 s after the epoch.
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        epoch + Duration::from_secs(1),
    ))
    .await;
    match sys {
        System::Strata => {
            let cfg = ProducerConfig {
                linger: Duration::ZERO,
                compression: Compression::None,
                ..ProducerConfig::default()
            };
            let p = Producer::connect(&a.strata, cfg).await?;
            let mut pending = VecDeque::new();
            for i in 0..total {
                tokio::time::sleep_until(tokio::time::Instant::from_std(
                    epoch + Duration::from_secs_f64(1.0 + i as f64 / a.rate as f64),
                ))
                .await;
                pending.push_back(
                    p.send(
                        name,
                        Record {
                            key: None,
                            value: stamp(i),
                            headers: vec![],
                            timestamp_ms: 0,
                        },
                        Some(0),
                    )
                    .await?,
                );
                while pending.front().is_some() && pending.len() > 10_000 {
                    if let Some(d) = pending.pop_front() {
                        d.await?;
                    }
                }
            }
            p.flush().await?;
        }
        System::Redis => {
            // Commands are pipelined on the multiplexed connection (as the
            // other clients pipeline), a bounded window of them in flight.
            let c = redis_conn(&a.redis).await?;
            let mut inflight = tokio::task::JoinSet::new();
            for i in 0..total {
                tokio::time::sleep_until(tokio::time::Instant::from_std(
                    epoch + Duration::from_secs_f64(1.0 + i as f64 / a.rate as f64),
                ))
                .await;
                let mut c = c.clone();
                let v = stamp(i);
                inflight.spawn(async move {
                    redis::cmd("XADD")
                        .arg(name)
                        .arg("*")
                        .arg("v")
                        .arg(v.as_ref())
                        .query_async::<redis::Value>(&mut c)
                        .await
                });
                while inflight.len() > WINDOW {
                    if let Some(r) = inflight.join_next().await {
                        r??;
                    }
                }
            }
            while let Some(r) = inflight.join_next().await {
                r??;
            }
        }
        System::Nats => {
            let js = nats_js(&a.nats).await?;
            let mut acks = VecDeque::new();
            for i in 0..total {
                tokio::time::sleep_until(tokio::time::Instant::from_std(
                    epoch + Duration::from_secs_f64(1.0 + i as f64 / a.rate as f64),
                ))
                .await;
                acks.push_back(js.publish(format!("{name}.x"), stamp(i)).await?);
                if acks.len() > WINDOW
                    && let Some(f) = acks.pop_front()
                {
                    f.await?;
                }
            }
            for f in acks {
                f.await?;
            }
        }
    }
    let got = consumer.await??;
    let h = collector.await??;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    Ok((ms(0.5), ms(0.99), ms(0.999), got))
}

type Rows = Vec<(String, BTreeMap<System, String>, String)>;

/// Adds a throughput row (higher is better): the figures, and Strata's
/// ratio to the best peer.
/// Runs the latency workload on each of `systems`: the table cells, each
/// system's p99, and the JSON results.
async fn latency_row(
    a: &Args,
    systems: &[System],
    label: &str,
) -> anyhow::Result<(
    BTreeMap<System, String>,
    BTreeMap<System, f64>,
    BTreeMap<&'static str, serde_json::Value>,
)> {
    let (mut row, mut p99s, mut lat) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for &sys in systems {
        eprintln!("{label}: {}…", sys.name());
        let (p50, p99, p999, got) = latency(a, sys)
            .await
            .with_context(|| format!("{label} on {}", sys.name()))?;
        row.insert(sys, format!("{p50:.2} / {p99:.2} / {p999:.2} ({got} recv)"));
        p99s.insert(sys, p99);
        lat.insert(
            sys.name(),
            serde_json::json!({"p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "received": got}),
        );
    }
    Ok((row, p99s, lat))
}

fn push_throughput(
    rows: &mut Rows,
    results: &mut BTreeMap<String, serde_json::Value>,
    label: String,
    figures: BTreeMap<System, f64>,
) {
    let best_peer = figures[&System::Redis].max(figures[&System::Nats]);
    let row = figures
        .iter()
        .map(|(k, v)| (*k, format!("{v:.0}")))
        .collect();
    rows.push((
        label.clone(),
        row,
        format!("{:.2}", figures[&System::Strata] / best_peer),
    ));
    results.insert(
        label,
        serde_json::json!(
            figures
                .iter()
                .map(|(k, v)| (k.name(), v))
                .collect::<BTreeMap<_, _>>()
        ),
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut results: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut rows: Rows = Vec::new();

    eprintln!("physical limits…");
    let bw = fsync_bandwidth(&a.data_dir)?;
    let (l50, l99) = fsync_latency(&a.data_dir)?;
    let tcp = loopback_bandwidth().await?;
    results.insert("physical".into(), serde_json::json!({"fsync_write_mb_s": bw, "fsync_4k_p50_us": l50, "fsync_4k_p99_us": l99, "loopback_tcp_mb_s": tcp}));

    let run = |w: &str| a.workloads.iter().any(|x| x == w);
    for (size, producers) in [(100usize, 1usize), (100, 4), (1024, 1), (1024, 4)]
        .into_iter()
        .filter(|_| run("produce"))
    {
        let n = if size >= 1024 {
            a.records / 10
        } else {
            a.records
        };
        let label = format!("produce {size} B, {producers} producer(s), durable (records/s)");
        let mut figures = BTreeMap::new();
        for sys in SYSTEMS {
            eprintln!("{label}: {}…", sys.name());
            let name = format!("p{size}x{producers}");
            let (sent, secs) = produce(&a, sys, &name, size, producers, n)
                .await
                .with_context(|| format!("{label} on {}", sys.name()))?;
            figures.insert(sys, sent as f64 / secs);
        }
        push_throughput(&mut rows, &mut results, label, figures);
    }

    if run("replay") {
        let label = format!(
            "replay {} records of 100 B from the start (records/s)",
            a.replay_records
        );
        let mut figures = BTreeMap::new();
        for sys in SYSTEMS {
            eprintln!("{label}: {}…", sys.name());
            let (got, secs) = replay(&a, sys, a.replay_records)
                .await
                .with_context(|| format!("replay on {}", sys.name()))?;
            figures.insert(sys, got as f64 / secs);
        }
        push_throughput(&mut rows, &mut results, label, figures);
    }

    if run("latency") {
        quiesce_disk()?;
        let label = format!(
            "end-to-end latency at {} records/s for {} s, p50/p99/p99.9 ms",
            a.rate, a.latency_seconds
        );
        let (row, p99s, lat) = latency_row(&a, &SYSTEMS, &label).await?;
        let best_peer = p99s[&System::Redis].min(p99s[&System::Nats]);
        rows.push((
            label.clone(),
            row,
            format!(
                "{:.2} (p99, lower is better)",
                p99s[&System::Strata] / best_peer
            ),
        ));
        results.insert(label, serde_json::json!(lat));
    }

    if run("rf3") {
        match (&a.strata_cluster, &a.nats_cluster) {
            (Some(sc), Some(nc)) => {
                let r3 = Args {
                    strata: sc.clone(),
                    nats: nc.clone(),
                    replication: 3,
                    ..a.clone()
                };
                for (size, producers) in [(100usize, 1usize), (100, 4), (1024, 1)] {
                    let n = if size >= 1024 {
                        a.records / 10
                    } else {
                        a.records
                    };
                    let label = format!(
                        "RF=3 produce {size} B, {producers} producer(s), quorum-acknowledged (records/s)"
                    );
                    let mut figures = BTreeMap::new();
                    for sys in [System::Strata, System::Nats] {
                        eprintln!("{label}: {}…", sys.name());
                        let name = format!("r3p{size}x{producers}");
                        let (sent, secs) = produce(&r3, sys, &name, size, producers, n)
                            .await
                            .with_context(|| format!("{label} on {}", sys.name()))?;
                        figures.insert(sys, sent as f64 / secs);
                    }
                    let ratio = figures[&System::Strata] / figures[&System::Nats];
                    let mut row: BTreeMap<System, String> = figures
                        .iter()
                        .map(|(k, v)| (*k, format!("{v:.0}")))
                        .collect();
                    row.insert(System::Redis, "— (no replication)".into());
                    rows.push((label.clone(), row, format!("{ratio:.2} (vs NATS)")));
                    results.insert(
                        label,
                        serde_json::json!(
                            figures
                                .iter()
                                .map(|(k, v)| (k.name(), v))
                                .collect::<BTreeMap<_, _>>()
                        ),
                    );
                }
                // Both clusters finish replicating what the throughput runs
                // left behind before latency is measured.
                settle(&r3).await?;
                let label = format!(
                    "RF=3 end-to-end latency at {} records/s for {} s, p50/p99/p99.9 ms",
                    a.rate, a.latency_seconds
                );
                let (mut row, p99s, lat) =
                    latency_row(&r3, &[System::Strata, System::Nats], &label).await?;
                row.insert(System::Redis, "—".into());
                rows.push((
                    label.clone(),
                    row,
                    format!(
                        "{:.2} (p99 vs NATS, lower is better)",
                        p99s[&System::Strata] / p99s[&System::Nats]
                    ),
                ));
                results.insert(label, serde_json::json!(lat));
            }
            _ => anyhow::bail!("the rf3 workload needs --strata-cluster and --nats-cluster"),
        }
    }

    let mut out = String::new();
    out.push_str(&format!(
        "physical limits: fsynced 1 MiB sequential writes {bw:.0} MB/s; 4 KiB write+fdatasync p50 {l50:.0} µs, p99 {l99:.0} µs; one loopback TCP stream {tcp:.0} MB/s\n\n"
    ));
    out.push_str("| workload | Strata | Redis (appendfsync always) | NATS JetStream (file, lazy fsync) | Strata / best peer |\n|---|---:|---:|---:|---:|\n");
    for (label, row, ratio) in &rows {
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {ratio} |\n",
            row[&System::Strata],
            row[&System::Redis],
            row[&System::Nats]
        ));
    }
    print!("{out}");
    std::io::stdout().flush()?;
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
