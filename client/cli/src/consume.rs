//! `strata consume`: reads records of a topic from a start (an offset, a
//! timestamp, earliest/latest, or a group's committed offsets) and prints
//! them, stopping at the high watermark seen at start unless `--follow`.
//! With `--group` it commits as it goes.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use strata_client::{Admin, Consumer, ConsumerConfig, OffsetSpec, ResetPolicy, Seek};

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
            consumer.commit().await?;
        }
        if a.max.is_some_and(|m| count >= m) {
            break;
        }
    }
    Ok(())
}
