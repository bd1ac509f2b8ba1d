//! `strata`: the operator CLI, a thin layer over `strata-client` (and, for
//! the offline `log` commands only, over the storage engine's read-only
//! inspector).
//!
//! Exit codes: 0 success; 1 other errors; 2 bad usage; 3 unknown topic or
//! partition; 4 offset out of range; 5 broker unreachable; 6 corruption
//! found by `log verify`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use strata_client::{
    Acks, Admin, ClientError, Compression, Consumer, ConsumerConfig, ConsumerRecord, OffsetSpec,
    Producer, ProducerConfig, Record, ResetPolicy, Seek, TopicConfig,
};

/// Strata operator CLI: topics, producing, consuming, consumer groups,
/// offline log inspection and benchmarks.
///
/// Exit codes: 0 success, 1 error, 2 bad usage, 3 unknown topic or
/// partition, 4 offset out of range, 5 broker unreachable, 6 corruption found.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Broker gRPC address.
    #[arg(
        long,
        short,
        global = true,
        env = "STRATA_BROKER",
        default_value = "127.0.0.1:7070"
    )]
    broker: String,
    /// Machine-readable JSON output instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Produce lines from stdin or a file, one record per line.
    Produce(ProduceArgs),
    /// Consume records and print them.
    Consume(ConsumeArgs),
    /// Consumer groups: committed offsets, commit, reset.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Cluster operations: status, init, add-node, remove-node,
    /// transfer-leader, reassign.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Offline inspection of a data directory (no broker needed; read-only).
    #[command(subcommand)]
    Log(LogCmd),
    /// Benchmarks against a running broker.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// ML models: `strata ml train|list|status|predict|rollback|serve …` (runs
    /// the `strata-ml` worker installed next to `strata`; see `strata ml --help`).
    #[command(disable_help_flag = true)]
    Ml {
        /// Arguments for strata-ml.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args, Debug, Clone, Default)]
struct ConfigArgs {
    /// Delete segments whose newest record is older than this (ms); -1 keeps forever.
    #[arg(long)]
    retention_ms: Option<i64>,
    /// Delete the oldest segments while a partition holds more than this (bytes); -1: no limit.
    #[arg(long)]
    retention_bytes: Option<i64>,
    /// Roll segments at this size (bytes).
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Roll segments at this age (ms).
    #[arg(long)]
    segment_ms: Option<i64>,
    /// Largest batch accepted (bytes).
    #[arg(long)]
    max_batch_bytes: Option<u32>,
}

impl From<ConfigArgs> for TopicConfig {
    fn from(a: ConfigArgs) -> Self {
        TopicConfig {
            retention_ms: a.retention_ms,
            retention_bytes: a.retention_bytes,
            segment_bytes: a.segment_bytes,
            segment_ms: a.segment_ms,
            max_batch_bytes: a.max_batch_bytes,
        }
    }
}

#[derive(Subcommand, Debug)]
enum TopicCmd {
    /// Create a topic.
    Create {
        /// Topic name: letters, digits, '.', '_', '-'; at most 249 characters.
        name: String,
        /// Number of partitions.
        #[arg(long, short, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (1 on a single node).
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List topics.
    List,
    /// Show a topic's settings and partitions (offsets, size, segments).
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's settings (only those given).
    Alter {
        /// Topic name.
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AcksArg {
    All,
    Leader,
    None,
}

#[derive(Args, Debug)]
struct ProduceArgs {
    /// Topic.
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Split each line at the first occurrence of this separator into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// Send every record to this partition (default: by key hash, else round robin).
    #[arg(long)]
    partition: Option<u32>,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Do not compress batches.
    #[arg(long)]
    no_compression: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    /// Topic.
    topic: String,
    /// Partitions to read (repeatable; default all).
    #[arg(long, short)]
    partition: Vec<u32>,
    /// Start offset (with one --partition).
    #[arg(long, conflicts_with_all = ["timestamp", "from"])]
    offset: Option<u64>,
    /// Start at the first record at or after this timestamp (ms since epoch).
    #[arg(long, conflicts_with = "from")]
    timestamp: Option<i64>,
    /// Start at the earliest or latest offset (without a group's committed offset).
    #[arg(long, value_enum)]
    from: Option<FromArg>,
    /// Consumer group: start at its committed offsets and commit as it goes.
    #[arg(long, short)]
    group: Option<String>,
    /// With --group and no committed offset: where to start (or fail).
    #[arg(long, value_enum, default_value_t = ResetArg::Earliest)]
    reset: ResetArg,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long, short = 'F')]
    follow: bool,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    max: Option<u64>,
    /// Print keys too ("key<TAB>value").
    #[arg(long)]
    print_key: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FromArg {
    Earliest,
    Latest,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ResetArg {
    Earliest,
    Latest,
    Error,
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Show committed offsets (of one group, or all) with lag.
    Offsets {
        /// Group (default: all groups).
        group: Option<String>,
    },
    /// Commit an offset (the next offset to consume) for a group.
    Commit {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        #[arg(long, short)]
        partition: u32,
        /// Offset.
        #[arg(long, short)]
        offset: u64,
    },
    /// Move a group's committed offsets.
    Reset {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Target: earliest, latest, an offset, or timestamp:<ms>.
        #[arg(long)]
        to: String,
        /// Partitions (default all).
        #[arg(long, short)]
        partition: Vec<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Every node (up or down), the metadata leader, and every partition's
    /// leader, replicas and their lag in records behind the leader.
    Status,
    /// Form a new cluster from nodes started with --node-id and --raft-addr
    /// but without --peers: run once, against any one of them.
    Init {
        /// Every initial voter as id=raft_host:port, comma-separated
        /// (e.g. 1=10.0.0.1:7071,2=10.0.0.2:7071,3=10.0.0.3:7071).
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<String>,
    },
    /// Add a started node (run with --node-id N --raft-addr H:P, no
    /// --peers) to the cluster as a metadata voter. Partitions move to it
    /// only with `strata cluster reassign`.
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's Raft address (host:port).
        #[arg(long)]
        raft_addr: String,
    },
    /// Remove a node that hosts no partition replicas (reassign them first).
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Move a partition's (or, without --topic, the metadata group's)
    /// leadership to another replica.
    TransferLeader {
        /// Topic (default: the metadata group).
        #[arg(long, requires = "partition")]
        topic: Option<String>,
        /// Partition.
        #[arg(long, short)]
        partition: Option<u32>,
        /// Node id of the new leader (a voter of the group).
        #[arg(long)]
        to: u64,
    },
    /// Move a partition to a new set of replicas (1 to 5 distinct nodes).
    /// New replicas catch up, from a snapshot if retention already deleted
    /// the start of the log, before the old ones leave.
    Reassign {
        /// Topic.
        topic: String,
        /// Partition.
        #[arg(long, short)]
        partition: u32,
        /// The new replicas, comma-separated node ids.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum LogCmd {
    /// Print every segment and entry of a data, topic or partition directory.
    Dump {
        /// Directory.
        dir: PathBuf,
        /// Also print each record.
        #[arg(long)]
        records: bool,
    },
    /// Verify every CRC and the offset and index chains; exit 6 on damage.
    Verify {
        /// Directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
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
struct BenchProduceArgs {
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

/// An error with the exit code it maps to.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::UnknownTopic(_)) => 3,
        Some(ClientError::Broker {
            code: strata_proto::pb::ErrorCode::UnknownPartition,
            ..
        }) => 3,
        Some(ClientError::OffsetOutOfRange { .. }) => 4,
        Some(ClientError::Connect { .. } | ClientError::Unavailable(_)) => 5,
        _ if e.downcast_ref::<Corruption>().is_some() => 6,
        _ => 1,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found")]
struct Corruption(usize);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Topic(t) => topic(&cli.broker, cli.json, t).await,
        Command::Produce(a) => produce(&cli.broker, a).await,
        Command::Consume(a) => consume(&cli.broker, cli.json, a).await,
        Command::Group(g) => group(&cli.broker, cli.json, g).await,
        Command::Cluster(c) => cluster(&cli.broker, cli.json, c).await,
        Command::Log(l) => log_cmd(cli.json, l),
        Command::Bench(b) => bench(&cli.broker, cli.json, b).await,
        Command::Ml { args } => ml(&cli.broker, &args),
    }
}

/// Runs `strata-ml` (next to this executable, else on PATH) with `args`.
fn ml(broker: &str, args: &[String]) -> anyhow::Result<()> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("strata-ml")));
    let program = sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("strata-ml"));
    let status = std::process::Command::new(&program)
        .arg("--broker")
        .arg(broker)
        .args(args)
        .status()
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build --release -p strata-ml`)",
                program.display()
            )
        })?;
    if !status.success() {
        bail!("strata-ml exited with {status}");
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn describe_json(d: &strata_proto::pb::TopicDescription) -> serde_json::Value {
    let c = d.config.unwrap_or_default();
    serde_json::json!({
        "name": d.name,
        "partitions": d.partitions,
        "config": {
            "retention_ms": c.retention_ms, "retention_bytes": c.retention_bytes,
            "segment_bytes": c.segment_bytes, "segment_ms": c.segment_ms, "max_batch_bytes": c.max_batch_bytes,
        },
        "partition_info": d.partition_info.iter().map(|p| serde_json::json!({
            "partition": p.partition, "leader": p.leader, "replicas": p.replicas,
            "log_start_offset": p.log_start_offset, "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes, "segments": p.segments,
        })).collect::<Vec<_>>(),
    })
}

fn print_describe(d: &strata_proto::pb::TopicDescription) {
    let c = d.config.unwrap_or_default();
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
            p.partition, p.leader, p.log_start_offset, p.high_watermark, p.size_bytes, p.segments
        );
    }
}

async fn topic(broker: &str, json: bool, cmd: TopicCmd) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match cmd {
        TopicCmd::Create {
            name,
            partitions,
            replication_factor,
            config,
        } => {
            let d = admin
                .create_topic(&name, partitions, replication_factor, config.into())
                .await?;
            if json {
                print_json(&describe_json(&d));
            } else {
                println!(
                    "created topic {} with {} partition(s)",
                    d.name, d.partitions
                );
            }
        }
        TopicCmd::List => {
            let topics = admin.list_topics().await?;
            if json {
                print_json(&serde_json::json!(
                    topics.iter().map(describe_json).collect::<Vec<_>>()
                ));
            } else {
                println!("{:<40} {:>10} {:>16}", "TOPIC", "PARTITIONS", "RECORDS");
                for t in topics {
                    let records: u64 = t
                        .partition_info
                        .iter()
                        .map(|p| p.high_watermark - p.log_start_offset)
                        .sum();
                    println!("{:<40} {:>10} {:>16}", t.name, t.partitions, records);
                }
            }
        }
        TopicCmd::Describe { name } => {
            let d = admin.describe_topic(&name).await?;
            if json {
                print_json(&describe_json(&d))
            } else {
                print_describe(&d)
            }
        }
        TopicCmd::Alter { name, config } => {
            let d = admin.alter_topic(&name, config.into()).await?;
            if json {
                print_json(&describe_json(&d))
            } else {
                print_describe(&d)
            }
        }
        TopicCmd::Delete { name } => {
            admin.delete_topic(&name).await?;
            if json {
                print_json(&serde_json::json!({"deleted": name}));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn acks(a: AcksArg) -> Acks {
    match a {
        AcksArg::All => Acks::All,
        AcksArg::Leader => Acks::Leader,
        AcksArg::None => Acks::None,
    }
}

async fn produce(broker: &str, a: ProduceArgs) -> anyhow::Result<()> {
    let config = ProducerConfig {
        acks: acks(a.acks),
        compression: if a.no_compression {
            Compression::None
        } else {
            Compression::Lz4
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker, config).await?;
    let input: Box<dyn BufRead> = match &a.file {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos} records sent, {per_sec}, {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    };
    let mut deliveries = std::collections::VecDeque::new();
    let mut sent = 0u64;
    let mut failed = 0u64;
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        let (key, value) = match &a.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (
                    Some(Bytes::copy_from_slice(k.as_bytes())),
                    Bytes::copy_from_slice(v.as_bytes()),
                ),
                None => (None, Bytes::from(line)),
            },
            None => (None, Bytes::from(line)),
        };
        let record = Record {
            key,
            value,
            headers: vec![],
            timestamp_ms: now_ms(),
        };
        deliveries.push_back(producer.send(&a.topic, record, a.partition).await?);
        sent += 1;
        bar.set_position(sent);
        // Reap acknowledgements as they come so errors surface early.
        while deliveries.len() > 100_000 {
            if let Some(d) = deliveries.pop_front()
                && let Err(e) = d.await
            {
                failed += 1;
                eprintln!("error: record not delivered: {e}");
            }
        }
    }
    producer.flush().await?;
    for d in deliveries {
        if let Err(e) = d.await {
            failed += 1;
            eprintln!("error: record not delivered: {e}");
        }
    }
    bar.finish_and_clear();
    producer.close().await?;
    if failed > 0 {
        bail!("{failed} of {sent} records were not delivered");
    }
    if !a.quiet {
        eprintln!("{sent} records produced to {}", a.topic);
    }
    Ok(())
}

fn record_json(r: &ConsumerRecord) -> serde_json::Value {
    let enc = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => serde_json::json!(s),
        Err(_) => {
            serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)})
        }
    };
    serde_json::json!({
        "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
        "key": r.key.as_ref().map(|k| enc(k)), "value": enc(&r.value),
        "headers": r.headers.iter().map(|h| serde_json::json!({"key": h.key, "value": enc(&h.value)})).collect::<Vec<_>>(),
    })
}

async fn consume(broker: &str, json: bool, a: ConsumeArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    let reset = match (a.from, a.reset, &a.group) {
        (Some(FromArg::Earliest), _, _) => ResetPolicy::Earliest,
        (Some(FromArg::Latest), _, _) => ResetPolicy::Latest,
        (None, ResetArg::Earliest, _) => ResetPolicy::Earliest,
        (None, ResetArg::Latest, _) => ResetPolicy::Latest,
        (None, ResetArg::Error, _) => ResetPolicy::Error,
    };
    if a.offset.is_some() && a.partition.len() != 1 {
        bail!("--offset needs exactly one --partition");
    }
    let partitions = (!a.partition.is_empty()).then(|| a.partition.clone());
    // --from overrides committed offsets: it is an explicit seek.
    let config = ConsumerConfig {
        group: a.group.clone(),
        reset,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(broker, &a.topic, partitions, config).await?;
    let assigned: Vec<u32> = consumer.positions().keys().copied().collect();
    for p in &assigned {
        if let Some(o) = a.offset {
            consumer.seek(*p, Seek::Offset(o)).await?;
        } else if let Some(t) = a.timestamp {
            consumer.seek(*p, Seek::Timestamp(t)).await?;
        } else if let Some(f) = a.from.filter(|_| a.group.is_some()) {
            consumer
                .seek(
                    *p,
                    if matches!(f, FromArg::Earliest) {
                        Seek::Earliest
                    } else {
                        Seek::Latest
                    },
                )
                .await?;
        }
    }
    // Without --follow, stop at the high watermark seen now.
    let mut ends = std::collections::BTreeMap::new();
    for p in &assigned {
        ends.insert(
            *p,
            admin
                .list_offsets(&a.topic, *p, OffsetSpec::Latest)
                .await?
                .offset,
        );
    }
    let done = |c: &Consumer| c.positions().iter().all(|(p, o)| *o >= ends[p]);
    let mut count = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while a.follow || !done(&consumer) {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        for r in &records {
            if a.max.is_some_and(|m| count >= m) {
                break;
            }
            if json {
                writeln!(out, "{}", record_json(r))?;
            } else if a.print_key {
                let k = r
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                writeln!(out, "{k}\t{}", String::from_utf8_lossy(&r.value))?;
            } else {
                writeln!(out, "{}", String::from_utf8_lossy(&r.value))?;
            }
            count += 1;
        }
        out.flush()?;
        if a.group.is_some() && !records.is_empty() {
            consumer.commit().await?;
        }
        if a.max.is_some_and(|m| count >= m) {
            break;
        }
    }
    Ok(())
}

fn parse_target(to: &str) -> anyhow::Result<Seek> {
    Ok(match to {
        "earliest" => Seek::Earliest,
        "latest" => Seek::Latest,
        t => match t.strip_prefix("timestamp:") {
            Some(ms) => Seek::Timestamp(
                ms.parse()
                    .with_context(|| format!("bad timestamp in {to:?}"))?,
            ),
            None => Seek::Offset(t.parse().with_context(|| {
                format!("--to must be earliest, latest, an offset or timestamp:<ms>, not {to:?}")
            })?),
        },
    })
}

async fn cluster(broker: &str, json: bool, cmd: ClusterCmd) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match cmd {
        ClusterCmd::Status => {
            let st = admin.cluster_status().await?;
            print_cluster_status(&st, json);
        }
        ClusterCmd::Init { peers } => {
            let mut map = std::collections::BTreeMap::new();
            for p in &peers {
                let (id, addr) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("peer {p:?} is not id=host:port"))?;
                let id: u64 = id
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("peer {p:?}: {id:?} is not a node id"))?;
                if map.insert(id, addr.trim().to_owned()).is_some() {
                    anyhow::bail!("node {id} is listed twice in --peers");
                }
            }
            let fresh = admin.init_cluster(map).await?;
            if json {
                print_json(&serde_json::json!({ "initialized": fresh }));
            } else if fresh {
                println!("cluster initialized with {} voters", peers.len());
            } else {
                println!("this node already belongs to a cluster; nothing changed");
            }
        }
        ClusterCmd::AddNode { id, raft_addr } => {
            admin.add_node(id, &raft_addr).await?;
            if !json {
                println!("node {id} ({raft_addr}) joined the cluster");
            }
        }
        ClusterCmd::RemoveNode { id } => {
            admin.remove_node(id).await?;
            if !json {
                println!("node {id} removed from the cluster");
            }
        }
        ClusterCmd::TransferLeader {
            topic,
            partition,
            to,
        } => {
            let group = topic.as_deref().map(|t| (t, partition.unwrap_or(0)));
            admin.transfer_leader(group, to).await?;
            if !json {
                match group {
                    Some((t, p)) => println!("{t}/{p} is now led by node {to}"),
                    None => println!("the metadata group is now led by node {to}"),
                }
            }
        }
        ClusterCmd::Reassign {
            topic,
            partition,
            replicas,
        } => {
            admin.reassign(&topic, partition, &replicas).await?;
            if !json {
                println!("{topic}/{partition} now on nodes {replicas:?}");
            }
        }
    }
    Ok(())
}

fn print_cluster_status(st: &strata_client::ClusterStatus, json: bool) {
    use strata_client::ReplicaLag;
    let lag_json = |l: &ReplicaLag| match l {
        ReplicaLag::Records(n) => serde_json::json!(n),
        ReplicaLag::Down => serde_json::json!("down"),
        ReplicaLag::Missing => serde_json::json!("missing"),
    };
    if json {
        print_json(&serde_json::json!({
            "metadata_leader": st.metadata_leader,
            "metadata_voters": st.metadata_voters,
            "nodes": st.nodes.iter().map(|n| serde_json::json!({
                "node_id": n.node_id,
                "grpc_addr": n.grpc_addr,
                "up": n.status.is_ok(),
                "raft_addr": n.status.as_ref().map(|s| s.raft_addr.clone()).ok(),
                "uptime_ms": n.status.as_ref().map(|s| s.uptime_ms).ok(),
                "error": n.status.as_ref().err(),
            })).collect::<Vec<_>>(),
            "partitions": st.partitions.iter().map(|p| serde_json::json!({
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

async fn group(broker: &str, json: bool, cmd: GroupCmd) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match cmd {
        GroupCmd::Offsets { group } => {
            let mut rows = Vec::new();
            for g in admin.list_groups().await? {
                if group.as_ref().is_some_and(|want| *want != g.group) {
                    continue;
                }
                for o in &g.offsets {
                    let hw = admin
                        .list_offsets(&g.topic, o.partition, OffsetSpec::Latest)
                        .await
                        .map(|x| x.high_watermark)
                        .ok();
                    rows.push((g.group.clone(), g.topic.clone(), o.partition, o.offset, hw));
                }
            }
            if json {
                print_json(
                    &serde_json::json!(rows.iter().map(|(g, t, p, o, hw)| serde_json::json!({
                    "group": g, "topic": t, "partition": p, "committed": o, "high_watermark": hw,
                    "lag": hw.map(|h| h.saturating_sub(*o)),
                })).collect::<Vec<_>>()),
                );
            } else {
                println!(
                    "{:<24} {:<24} {:>9} {:>14} {:>14} {:>10}",
                    "GROUP", "TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG"
                );
                for (g, t, p, o, hw) in rows {
                    let (hw_s, lag) = hw.map_or(("?".to_owned(), "?".to_owned()), |h| {
                        (h.to_string(), h.saturating_sub(o).to_string())
                    });
                    println!("{g:<24} {t:<24} {p:>9} {o:>14} {hw_s:>14} {lag:>10}");
                }
            }
        }
        GroupCmd::Commit {
            group,
            topic,
            partition,
            offset,
        } => {
            admin.commit(&group, &topic, &[(partition, offset)]).await?;
            if !json {
                println!("committed {group} {topic}/{partition} at {offset}");
            }
        }
        GroupCmd::Reset {
            group,
            topic,
            to,
            partition,
        } => {
            let target = parse_target(&to)?;
            let d = admin.describe_topic(&topic).await?;
            let parts = if partition.is_empty() {
                (0..d.partitions).collect()
            } else {
                partition
            };
            let mut offsets = Vec::new();
            for p in parts {
                let o = match target {
                    Seek::Offset(o) => o,
                    Seek::Earliest => {
                        admin
                            .list_offsets(&topic, p, OffsetSpec::Earliest)
                            .await?
                            .offset
                    }
                    Seek::Latest => {
                        admin
                            .list_offsets(&topic, p, OffsetSpec::Latest)
                            .await?
                            .offset
                    }
                    Seek::Timestamp(t) => {
                        admin
                            .list_offsets(&topic, p, OffsetSpec::Timestamp(t))
                            .await?
                            .offset
                    }
                };
                offsets.push((p, o));
            }
            admin.commit(&group, &topic, &offsets).await?;
            if json {
                print_json(&serde_json::json!(
                    offsets
                        .iter()
                        .map(|(p, o)| serde_json::json!({"partition": p, "offset": o}))
                        .collect::<Vec<_>>()
                ));
            } else {
                for (p, o) in offsets {
                    println!("reset {group} {topic}/{p} to {o}");
                }
            }
        }
    }
    Ok(())
}

fn log_cmd(json: bool, cmd: LogCmd) -> anyhow::Result<()> {
    use strata_log::inspect;
    let (dir, dump, records) = match &cmd {
        LogCmd::Dump { dir, records } => (dir.clone(), true, *records),
        LogCmd::Verify { dir } => (dir.clone(), false, false),
    };
    let partitions = inspect::partition_dirs(&dir)?;
    if partitions.is_empty() {
        bail!(
            "no partition directories (with .log segments) under {}",
            dir.display()
        );
    }
    let mut problems = 0;
    let mut all = Vec::new();
    for p in partitions {
        let reports = inspect::inspect_partition(&p, |_, meta, payload| {
            if !dump || json {
                return;
            }
            println!(
                "  entry {} kind {:?} offset {} records {} bytes {}",
                meta.log_id, meta.kind, meta.base_offset, meta.record_count, meta.len
            );
            if records && meta.record_count > 0 {
                match strata_proto::decode_records(
                    Bytes::copy_from_slice(payload),
                    &strata_proto::BatchLimits::UNLIMITED,
                ) {
                    Ok(rs) => {
                        for (i, r) in rs.iter().enumerate() {
                            println!(
                                "    {} ts {} value {}",
                                meta.base_offset + i as u64,
                                r.timestamp_ms,
                                String::from_utf8_lossy(&r.value)
                            );
                        }
                    }
                    Err(e) => println!("    cannot decode records: {e}"),
                }
            }
        })?;
        for r in reports {
            problems += r.problems.len();
            if json {
                all.push(serde_json::json!({
                    "path": r.path, "size_bytes": r.size_bytes, "entries": r.entries, "batches": r.batches,
                    "records": r.records, "offsets": r.offsets, "indexes": r.indexes, "sealed": r.sealed,
                    "problems": r.problems.iter().map(|p| serde_json::json!({"position": p.position, "reason": p.reason})).collect::<Vec<_>>(),
                }));
            } else {
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
        }
    }
    if json {
        print_json(&serde_json::json!(all));
    }
    if problems > 0 {
        return Err(Corruption(problems).into());
    }
    Ok(())
}

async fn bench(broker: &str, json: bool, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Produce(a) => bench_produce(broker, json, a).await,
        BenchCmd::Consume { topic, records } => bench_consume(broker, json, &topic, records).await,
    }
}

async fn bench_produce(broker: &str, json: bool, a: BenchProduceArgs) -> anyhow::Result<()> {
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
        acks: acks(a.acks),
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
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<(Instant, strata_client::Delivery)>(1 << 16);
            let reaper = tokio::spawn(async move {
                let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
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
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(h) = tasks.join_next().await {
        hist.add(h??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = per * a.producers.max(1) as u64;
    let rps = total as f64 / secs;
    let mbps = total as f64 * a.record_bytes as f64 / 1e6 / secs;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    if json {
        print_json(&serde_json::json!({
            "records": total, "record_bytes": a.record_bytes, "producers": a.producers, "seconds": secs,
            "records_per_s": rps, "mb_per_s": mbps,
            "latency_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": hist.max() as f64 / 1000.0},
        }));
    } else {
        println!(
            "produced {total} records of {} bytes in {secs:.2} s: {rps:.0} records/s, {mbps:.1} MB/s",
            a.record_bytes
        );
        println!(
            "send-to-ack latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max() as f64 / 1000.0
        );
    }
    Ok(())
}

async fn bench_consume(
    broker: &str,
    json: bool,
    topic: &str,
    records: Option<u64>,
) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    let d = admin.describe_topic(topic).await?;
    let available: u64 = d
        .partition_info
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
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
    let secs = started.elapsed().as_secs_f64();
    if json {
        print_json(
            &serde_json::json!({"records": n, "seconds": secs, "records_per_s": n as f64 / secs, "mb_per_s": bytes as f64 / 1e6 / secs}),
        );
    } else {
        println!(
            "replayed {n} records in {secs:.2} s: {:.0} records/s, {:.1} MB/s of values",
            n as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
    }
    Ok(())
}
