//! `strata consume`: reads records of a topic from a start (an offset, a
//! timestamp, earliest/latest, or a group's committed offsets) and prints
//! them, stopping at the high watermark seen at start unless `--follow`.
//! With `--group` it commits as it goes: a commit that fails for a
//! retriable reason (no metadata leader reachable, a timeout) is reported
//! on stderr and retried with the next one; the command ends only on a
//! fatal error, and without `--follow` only once its last positions are
//! committed.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use strata_client::{Admin, ClientError, Consumer, ConsumerConfig, OffsetSpec, ResetPolicy, Seek};

use crate::render;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
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

pub async fn run(broker: &str, json: bool, a: ConsumeArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    let reset = match (a.from, a.reset) {
        (Some(FromArg::Earliest), _) => ResetPolicy::Earliest,
        (Some(FromArg::Latest), _) => ResetPolicy::Latest,
        (None, ResetArg::Earliest) => ResetPolicy::Earliest,
        (None, ResetArg::Latest) => ResetPolicy::Latest,
        (None, ResetArg::Error) => ResetPolicy::Error,
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
    let mut uncommitted = false;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while a.follow || !done(&consumer) {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        for r in &records {
            if a.max.is_some_and(|m| count >= m) {
                break;
            }
            render::write_record(&mut out, r, json, a.print_key)?;
            count += 1;
        }
        out.flush()?;
        if a.group.is_some() && !records.is_empty() {
            uncommitted = true;
        }
        if uncommitted {
            // A failed commit is retried with the next one (it carries every
            // position); only a fatal error ends the consumer.
            match commit(&consumer).await {
                Ok(()) => uncommitted = false,
                Err(e) if e.is_retriable() => {
                    eprintln!(
                        "warning: committing offsets failed, retrying with the next commit: {e}"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        if a.max.is_some_and(|m| count >= m) {
            break;
        }
    }
    // The last positions must be committed before a non-following consumer
    // reports success.
    let deadline = Instant::now() + FINAL_COMMIT_WAIT;
    let mut tries = 0;
    while uncommitted {
        match commit(&consumer).await {
            Ok(()) => uncommitted = false,
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200 * tries.min(5))).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "records were printed but their offsets could not be committed: {e}"
                ));
            }
        }
    }
    Ok(())
}

/// How long one offset commit may take before it counts as failed (and is
/// retried with the next).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final commit is retried before the command fails.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Commits the consumer's positions, bounded by [`COMMIT_TIMEOUT`].
async fn commit(consumer: &Consumer) -> Result<(), ClientError> {
    tokio::time::timeout(COMMIT_TIMEOUT, consumer.commit())
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Unavailable(format!(
                "no answer within {COMMIT_TIMEOUT:?}"
            )))
        })
}
