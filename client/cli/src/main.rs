//! `strata`: the operator CLI, a thin layer over `strata-client` (and, for
//! the offline `log` commands only, over the storage engine's read-only
//! inspector). This file parses arguments and dispatches to one module per
//! command group; every table and JSON document is shaped in [`render`].
//!
//! Exit codes: 0 success; 1 other errors; 2 bad usage; 3 unknown topic or
//! partition; 4 offset out of range; 5 broker unreachable; 6 corruption
//! found by `log verify`.

mod bench;
mod cluster;
mod consume;
mod group;
mod log;
mod ml;
mod produce;
mod render;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_client::{ClientError, ErrorCode};

/// Strata operator CLI: topics, producing, consuming, consumer groups,
/// offline log inspection and benchmarks.
///
/// Exit codes: 0 success, 1 error, 2 bad usage, 3 unknown topic or
/// partition, 4 offset out of range, 5 broker unreachable, 6 corruption found.
#[derive(Parser, Debug)]
// The command's name defaults to the package's; `strata --version` has
// always printed "strata-client <version>" (the binary lived in that
// package), and its output is an interface, so the name is pinned.
#[command(name = "strata-client", version, propagate_version = true)]
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
    Topic(topic::TopicCmd),
    /// Produce lines from stdin or a file, one record per line.
    Produce(produce::ProduceArgs),
    /// Consume records and print them.
    Consume(consume::ConsumeArgs),
    /// Consumer groups: committed offsets, commit, reset.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// Cluster operations: status, init, add-node, remove-node,
    /// transfer-leader, reassign.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Offline inspection of a data directory (no broker needed; read-only).
    #[command(subcommand)]
    Log(log::LogCmd),
    /// Benchmarks against a running broker.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// ML models: `strata ml train|list|status|predict|rollback|serve …` (runs
    /// the `strata-ml` worker installed next to `strata`; see `strata ml --help`).
    #[command(disable_help_flag = true)]
    Ml {
        /// Arguments for strata-ml.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// An error with the exit code it maps to.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::UnknownTopic(_)) => 3,
        Some(ClientError::Broker {
            code: ErrorCode::UnknownPartition,
            ..
        }) => 3,
        Some(ClientError::OffsetOutOfRange { .. }) => 4,
        Some(ClientError::Connect { .. } | ClientError::Unavailable(_)) => 5,
        _ if e.downcast_ref::<log::Corruption>().is_some() => 6,
        _ => 1,
    }
}

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
        Command::Topic(t) => topic::run(&cli.broker, cli.json, t).await,
        Command::Produce(a) => produce::run(&cli.broker, a).await,
        Command::Consume(a) => consume::run(&cli.broker, cli.json, a).await,
        Command::Group(g) => group::run(&cli.broker, cli.json, g).await,
        Command::Cluster(c) => cluster::run(&cli.broker, cli.json, c).await,
        Command::Log(l) => log::run(cli.json, l),
        Command::Bench(b) => bench::run(&cli.broker, cli.json, b).await,
        Command::Ml { args } => ml::run(&cli.broker, &args),
    }
}
