//! `strata-ml`: runs training jobs and serves predictions.
//!
//! `train` runs one job in the foreground (resuming from the model's latest
//! checkpoint if it has one); `serve` runs the predictive HTTP API, with
//! jobs started over HTTP; `list`, `status`, `predict` and `rollback` work
//! on the checkpoint store directly (the store admits one process at a
//! time, so use the HTTP API while `serve` runs).

mod bench;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use strata_ml::checkpoint::Store;
use strata_ml::features::{FeatureSpec, Format, extract};
use strata_ml::learners::{Algo, Hyper};
use strata_ml::serve::{Registry, parse_start, router};
use strata_ml::trainer::{JobConfig, run};

/// Strata's ML worker: incremental training from a topic with exactly-once
/// checkpoints, and predictions.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Checkpoint store directory.
    #[arg(long, global = true, default_value = "strata-ml-data")]
    store: PathBuf,
    /// Broker gRPC address.
    #[arg(
        long,
        short,
        global = true,
        env = "STRATA_BROKER",
        default_value = "127.0.0.1:7070"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (or resume training) a model on a topic; prints a line per checkpoint.
    Train {
        /// Topic to learn from.
        #[arg(long)]
        topic: String,
        /// Model name (letters, digits, '.', '_', '-').
        #[arg(long)]
        model: String,
        /// logistic-regression, linear-regression, softmax-regression, ftrl,
        /// gaussian-nb, multinomial-nb, kmeans, half-space-trees.
        #[arg(long, default_value = "logistic-regression")]
        algo: Algo,
        /// Label field (not for kmeans and half-space-trees).
        #[arg(long)]
        label: Option<String>,
        /// k-means: clusters.
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// k-means: weight of a new point in its center's update.
        #[arg(long, default_value_t = 0.1)]
        decay: f64,
        /// Seed of the learner's random number generator (half-space trees).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where a new model starts: earliest, latest, offset:N, timestamp:MS.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// SGD learning rate of the weights.
        #[arg(long, default_value_t = 0.01)]
        lr: f64,
        /// Learning rate of the intercept.
        #[arg(long, default_value_t = 0.01)]
        intercept_lr: f64,
        /// L2 penalty.
        #[arg(long, default_value_t = 0.0)]
        l2: f64,
        /// log2 of the hash buckets for categorical and text features.
        #[arg(long, default_value_t = 20)]
        hash_bits: u8,
        /// MurmurHash3 seed.
        #[arg(long, default_value_t = 0)]
        hash_seed: u32,
        /// Records are CSV lines with these comma-separated column names (default: JSON objects).
        #[arg(long)]
        csv_header: Option<String>,
        /// Fields to tokenize as text (repeatable).
        #[arg(long)]
        text: Vec<String>,
        /// Fields to ignore (repeatable).
        #[arg(long)]
        ignore: Vec<String>,
        /// Checkpoint every N records.
        #[arg(long, default_value_t = 10_000)]
        checkpoint_every: u64,
        /// …or every this many milliseconds.
        #[arg(long, default_value_t = 5_000)]
        checkpoint_ms: u64,
        /// Records per partition turn (fixes the training order; keep it for a model's lifetime).
        #[arg(long, default_value_t = 1000)]
        block: u64,
        /// Keep learning as records arrive.
        #[arg(long)]
        follow: bool,
    },
    /// List models with their head version.
    List,
    /// Show a model's versions and metrics.
    Status {
        /// Model.
        model: String,
    },
    /// Predict from JSON objects on stdin, one per line.
    Predict {
        /// Model.
        model: String,
    },
    /// Make an earlier version the head (serving and resumed training use it).
    Rollback {
        /// Model.
        model: String,
        /// Version.
        version: u64,
    },
    /// Measure training throughput on a topic (see `bench.rs`): end to end (broker → features
    /// → learn, one job, no intermediate checkpoints) and the same learner on
    /// the same records held in memory. Uses a scratch store.
    Bench {
        /// Topic holding JSON records.
        #[arg(long)]
        topic: String,
        /// Label field.
        #[arg(long)]
        label: String,
        /// SGD learning rate.
        #[arg(long, default_value_t = 0.01)]
        lr: f64,
    },
    /// Serve the predictive HTTP API.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:7090")]
        http_addr: std::net::SocketAddr,
    },
}

/// Opens an existing store (read commands must not create one).
fn existing_store(dir: &std::path::Path) -> anyhow::Result<Store> {
    if !dir.exists() {
        bail!(
            "no checkpoint store at {} (train a model first, or pass --store)",
            dir.display()
        );
    }
    open_store(dir)
}

fn open_store(dir: &std::path::Path) -> anyhow::Result<Store> {
    Store::open(dir).with_context(|| {
        format!(
            "opening checkpoint store {} (is another strata-ml using it?)",
            dir.display()
        )
    })
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: this is for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Train {
                topic, model, algo, label, k, decay, seed, from, lr, intercept_lr, l2, hash_bits, hash_seed, csv_header, text, ignore,
                checkpoint_every, checkpoint_ms, block, follow,
            } => {
                if algo.supervised() && label.is_none() {
                    bail!("{algo:?} needs --label");
                }
                let store = open_store(&cli.store)?;
                let cfg = JobConfig {
                    broker: cli.broker,
                    topic,
                    model,
                    algo,
                    hyper: Hyper { lr, intercept_lr, l2, k, decay, seed, ..Hyper::default() },
                    spec: FeatureSpec {
                        format: match csv_header {
                            Some(h) => Format::Csv { header: h.split(',').map(str::to_owned).collect() },
                            None => Format::Json,
                        },
                        label,
                        ignore,
                        text,
                        hash_bits,
                        hash_seed,
                    },
                    start: parse_start(&from)?,
                    checkpoint_every,
                    checkpoint_interval: Duration::from_millis(checkpoint_ms),
                    block,
                    follow,
                };
                let cp = run(&store, &cfg, |cp| {
                    println!("checkpoint version={} learned={} offsets={:?}", cp.version, cp.learned, cp.offsets);
                })
                .await?;
                println!("done version={} learned={} skipped={}", cp.version, cp.learned, cp.skipped);
                println!("metrics {}", serde_json::to_string(&cp.metrics.report(cp.learner.algo.task()))?);
            }
            Command::List => {
                let store = existing_store(&cli.store)?;
                println!("{:<24} {:<24} {:>8} {:>12}", "MODEL", "TOPIC", "VERSION", "LEARNED");
                for m in store.models()? {
                    if let Some(cp) = store.latest(&m)? {
                        println!("{:<24} {:<24} {:>8} {:>12}", m, cp.topic, cp.version, cp.learned);
                    }
                }
            }
            Command::Status { model } => {
                let store = existing_store(&cli.store)?;
                let Some(cp) = store.latest(&model)? else { bail!("unknown model {model:?}") };
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                    "model": model, "topic": cp.topic, "algo": cp.learner.algo, "version": cp.version,
                    "offsets": cp.offsets, "learned": cp.learned, "skipped": cp.skipped, "recent_skips": cp.recent_skips,
                    "metrics": cp.metrics.report(cp.learner.algo.task()), "versions": store.versions(&model)?,
                }))?);
            }
            Command::Predict { model } => {
                let store = existing_store(&cli.store)?;
                let Some(mut cp) = store.latest(&model)? else { bail!("unknown model {model:?}") };
                let spec = FeatureSpec { format: Format::Json, label: None, ..cp.spec.clone() };
                let stdin = std::io::stdin();
                for (n, line) in std::io::BufRead::lines(stdin.lock()).enumerate() {
                    let line = line?;
                    let ex = extract(&spec, line.as_bytes()).with_context(|| format!("line {}", n + 1))?;
                    let mut out = strata_ml::serve::prediction_json(&cp.learner.predict(&ex.features));
                    out["version"] = serde_json::json!(cp.version);
                    println!("{out}");
                }
            }
            Command::Rollback { model, version } => {
                let store = existing_store(&cli.store)?;
                let cp = store.rollback(&model, version)?;
                println!("model {model} now at version {} (offsets {:?})", cp.version, cp.offsets);
            }
            Command::Bench { topic, label, lr } => {
                let report = bench::training_throughput(&cli.broker, &topic, label, lr).await?;
                println!("{report}");
            }
            Command::Serve { http_addr } => {
                let store = open_store(&cli.store)?;
                let registry = Registry::new(store, cli.broker)?;
                let listener = tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("listening on {http_addr}"))?;
                println!("strata-ml ready http={}", listener.local_addr()?);
                axum::serve(listener, router(registry))
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
            }
        }
        anyhow::Ok(())
    })
}
