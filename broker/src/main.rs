//! `strata-broker`: reads configuration (embedded defaults, then an
//! optional TOML file, then flags) and runs the broker until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use strata_broker::config::BrokerConfig;

/// The Strata broker. With no arguments it serves on embedded defaults:
/// data in ./strata-data, gRPC on 127.0.0.1:7070, HTTP on 127.0.0.1:7080,
/// the Kafka protocol on 127.0.0.1:9092.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (keys as in `BrokerConfig`; flags win over it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Kafka protocol listen address (port 0 picks a free port), or `off`
    /// to run without the Kafka listener. Default 127.0.0.1:9092.
    #[arg(long, value_name = "ADDR|off")]
    kafka_addr: Option<String>,
    /// The Kafka address clients are told in Metadata, when it differs from
    /// the bound one (behind NAT, or bound to 0.0.0.0).
    #[arg(long)]
    kafka_advertised_addr: Option<SocketAddr>,
    /// This node's id.
    #[arg(long)]
    node_id: Option<u64>,
    /// How often retention runs, in milliseconds.
    #[arg(long)]
    retention_check_ms: Option<u64>,
    /// Raft peer listen address; makes this broker a cluster node.
    #[arg(long)]
    raft_addr: Option<SocketAddr>,
    /// Initial cluster voters, `id=host:port` of their Raft addresses
    /// (this node included), comma-separated.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Metadata group: snapshot after this many log entries, then delete
    /// the log behind the snapshot.
    #[arg(long)]
    meta_snapshot_entries: Option<u64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
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
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| strata_broker::DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            BrokerConfig::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.grpc_addr {
        config.grpc_addr = v;
    }
    if let Some(v) = args.http_addr {
        config.http_addr = v;
    }
    match args.kafka_addr.as_deref() {
        None => {}
        Some("off") => config.kafka_enabled = false,
        Some(a) => {
            config.kafka_enabled = true;
            config.kafka_addr = a.parse().map_err(|e| {
                anyhow::anyhow!("--kafka-addr {a:?}: expected host:port or \"off\" ({e})")
            })?;
        }
    }
    if let Some(v) = args.kafka_advertised_addr {
        config.kafka_advertised_addr = Some(v);
    }
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.retention_check_ms {
        config.retention_check_ms = v;
    }
    if let Some(v) = args.raft_addr {
        config.raft_addr = Some(v);
    }
    if let Some(v) = args.meta_snapshot_entries {
        config.meta_snapshot_entries = v;
    }
    if !args.peers.is_empty() {
        config.peers = args.peers;
    }
    if args.print_config {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot install SIGTERM handler");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        strata_broker::node::run(config, shutdown).await
    })?;
    Ok(())
}
