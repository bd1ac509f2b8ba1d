//! `strata produce`: one record per input line (stdin or `--file`),
//! optionally split into key and value, with a progress spinner on stderr.
//! Deliveries are awaited as they come so a failure is reported early; the
//! command fails if any record was not delivered.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use strata_client::{Acks, Compression, Producer, ProducerConfig, Record};
use strata_proto::now_ms;

/// Acknowledgement level, as a flag (shared with `bench produce`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AcksArg {
    /// Once fsynced on a quorum of the partition's replicas (the default).
    All,
    /// Accepted for compatibility; answered as `all`.
    Leader,
    /// Once queued at the broker; no offset is reported.
    None,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
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
    /// How long a record may take to be acknowledged, retries included,
    /// before it is reported as not delivered (a record whose batch reached
    /// a broker may then have been written or not, and says so).
    #[arg(long, default_value_t = 120_000, value_name = "MS")]
    delivery_timeout_ms: u64,
    /// How long a broker may leave a request unanswered before the
    /// producer retries elsewhere (the partition's leader as then known).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    request_timeout_ms: u64,
}

/// Deliveries awaited at most this far behind the send.
const DELIVERIES_PENDING_MAX: usize = 100_000;

pub async fn run(broker: &str, a: ProduceArgs) -> anyhow::Result<()> {
    let config = ProducerConfig {
        acks: a.acks.into(),
        compression: if a.no_compression {
            Compression::None
        } else {
            Compression::Lz4
        },
        delivery_timeout: Duration::from_millis(a.delivery_timeout_ms),
        request_timeout: Duration::from_millis(a.request_timeout_ms),
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
        while deliveries.len() > DELIVERIES_PENDING_MAX {
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
