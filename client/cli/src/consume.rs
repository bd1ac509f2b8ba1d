//! `strata consume`: reads records of a topic from a start (an offset, a
//! timestamp, earliest/latest, or a group's committed offsets) and prints
//! them, stopping at the high watermark seen at start unless `--follow`.
//!
//! With `--group` (and no `--partition`) it is a member of the consumer
//! group: the coordinator assigns it partitions, shared with the group's
//! other members, and moves them as members come and go; it commits as it
//! goes and, on SIGINT/SIGTERM or at the end, commits and leaves the group.
//! With `--group` and `--partition` it reads those partitions itself and
//! commits for the group (standalone; refused while the group has members).
//! A commit that fails for a retriable reason is reported on stderr and
//! retried with the next one; the command ends only on a fatal error, and
//! without `--follow` only once its last positions are committed.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use strata_client::{
    Admin, ClientError, Consumer, ConsumerConfig, GroupConsumer, GroupConsumerConfig, OffsetSpec,
    ResetPolicy, Seek, TopicPartition,
};

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
    /// As a group member: removed from the group after this long without a
    /// heartbeat (its partitions move to the other members). Default: the
    /// broker's (10 s).
    #[arg(long)]
    session_timeout_ms: Option<u64>,
    /// As a group member: static membership id (a member restarted with
    /// the same id gets its partitions back without a rebalance).
    #[arg(long)]
    instance_id: Option<String>,
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
    if a.group.is_some() && a.partition.is_empty() {
        if a.offset.is_some() || a.timestamp.is_some() {
            bail!(
                "--offset and --timestamp pick partitions' positions; a group member's partitions are assigned by the group (add --partition to read them standalone)"
            );
        }
        return run_member(broker, json, a).await;
    }
    if a.session_timeout_ms.is_some() || a.instance_id.is_some() {
        bail!(
            "--session-timeout-ms and --instance-id apply to a group member (--group without --partition)"
        );
    }
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
        let printed = print_upto(&mut out, &records, json, a.print_key, a.max, &mut count)?;
        // Records polled but not printed (`-n` reached) are not consumed:
        // positions go back to the first of them, so no commit covers them.
        for (p, o) in unprinted(&records[printed..]) {
            consumer.rewind(p.1, o)?;
        }
        if a.group.is_some() && printed > 0 {
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

/// `consume --group` as a member of the group.
async fn run_member(broker: &str, json: bool, a: ConsumeArgs) -> anyhow::Result<()> {
    let group = a.group.clone().unwrap_or_default();
    let mut config = GroupConsumerConfig::new(&group, &[a.topic.as_str()]);
    config.reset = match (a.from, a.reset) {
        (Some(FromArg::Earliest), _) | (None, ResetArg::Earliest) => ResetPolicy::Earliest,
        (Some(FromArg::Latest), _) | (None, ResetArg::Latest) => ResetPolicy::Latest,
        (None, ResetArg::Error) => ResetPolicy::Error,
    };
    config.session_timeout = a.session_timeout_ms.map(Duration::from_millis);
    config.instance_id = a.instance_id.clone();
    config.client_id = "strata-cli".to_owned();
    let admin = Admin::connect(broker).await?;
    let mut member = GroupConsumer::join(broker, config).await?;
    // Without --follow: the end of each partition is its high watermark
    // when this member was granted it.
    let mut ends: std::collections::BTreeMap<TopicPartition, u64> = Default::default();
    let mut count = 0u64;
    let mut uncommitted = false;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        let records = tokio::select! {
            r = member.poll(Duration::from_millis(500)) => r?,
            () = &mut stop => break,
        };
        let printed = print_upto(&mut out, &records, json, a.print_key, a.max, &mut count)?;
        for (tp, o) in unprinted(&records[printed..]) {
            member.rewind(&tp, o);
        }
        uncommitted |= printed > 0;
        if uncommitted {
            match tokio::time::timeout(COMMIT_TIMEOUT, member.commit()).await {
                Ok(Ok(())) => uncommitted = false,
                Ok(Err(e)) if e.is_retriable() || is_membership_error(&e) => {
                    eprintln!(
                        "warning: committing offsets failed, retrying with the next commit: {e}"
                    );
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => eprintln!(
                    "warning: commit not answered within {COMMIT_TIMEOUT:?}; retrying with the next"
                ),
            }
        }
        if a.max.is_some_and(|m| count >= m) {
            break;
        }
        if !a.follow && member.member_epoch() > 0 {
            for tp in member.assignment().clone() {
                if let std::collections::btree_map::Entry::Vacant(e) = ends.entry(tp) {
                    let (t, p) = e.key().clone();
                    let hw = admin.list_offsets(&t, p, OffsetSpec::Latest).await?.offset;
                    e.insert(hw);
                }
            }
            let positions = member.positions();
            let done = member
                .assignment()
                .iter()
                .all(|tp| positions.get(tp).is_some_and(|o| *o >= ends[tp]));
            if done && !uncommitted {
                break;
            }
        }
    }
    // Commit what was printed, release the partitions and leave the group.
    member
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("leaving the group failed (its session will expire): {e}"))?;
    Ok(())
}

/// Prints records until `max` (if any) have been printed in all; returns
/// how many of `records` were printed.
fn print_upto(
    out: &mut impl std::io::Write,
    records: &[strata_client::ConsumerRecord],
    json: bool,
    print_key: bool,
    max: Option<u64>,
    count: &mut u64,
) -> anyhow::Result<usize> {
    let mut printed = 0;
    for r in records {
        if max.is_some_and(|m| *count >= m) {
            break;
        }
        render::write_record(out, r, json, print_key)?;
        *count += 1;
        printed += 1;
    }
    out.flush()?;
    Ok(printed)
}

/// The first offset of each partition among records not printed.
fn unprinted(
    records: &[strata_client::ConsumerRecord],
) -> std::collections::BTreeMap<TopicPartition, u64> {
    let mut first = std::collections::BTreeMap::new();
    for r in records {
        first
            .entry((r.topic.clone(), r.partition))
            .or_insert(r.offset);
    }
    first
}

/// A membership error a member recovers from by rejoining.
fn is_membership_error(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            strata_client::ErrorCode::FencedMemberEpoch | strata_client::ErrorCode::UnknownMemberId
        )
    )
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
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
