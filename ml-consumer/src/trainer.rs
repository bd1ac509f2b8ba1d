//! The training job: consumes a topic in a deterministic order, predicts
//! then learns every record (prequential), and checkpoints every N records
//! or T seconds.
//!
//! **Determinism.** Partitions take turns in index order; a turn reads one
//! partition from its position up to the next multiple of `block` offsets
//! (or its end). Block boundaries are absolute offsets and the turn is part
//! of the checkpoint, so a job resumed from any checkpoint processes exactly
//! the same records in exactly the same order as one never interrupted, and
//! its model is bit-identical. Without `follow`, the end of each partition
//! is its high watermark when the job starts; with `follow`, a turn waits
//! for its block to fill, so the order still does not depend on timing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_client::{Admin, ClientError, Consumer, ConsumerConfig, OffsetSpec, ResetPolicy, Seek};
use strata_proto::now_ms;

use crate::checkpoint::{Checkpoint, CheckpointError, Skipped, Store};
use crate::features::{FeatureSpec, extract};
use crate::learners::{Algo, Hyper, Learner};
use crate::metrics::Prequential;

/// Where a new job starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The log start of every partition.
    Earliest,
    /// The high watermark (only new records).
    Latest,
    /// This offset in every partition.
    Offset(u64),
    /// The first record at or after this timestamp (ms), per partition.
    Timestamp(i64),
}

/// A job's settings.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Broker address.
    pub broker: String,
    /// Topic.
    pub topic: String,
    /// Model name.
    pub model: String,
    /// Algorithm (new models only).
    pub algo: Algo,
    /// Hyperparameters (new models only).
    pub hyper: Hyper,
    /// Feature extraction (new models only).
    pub spec: FeatureSpec,
    /// Start position (new models only).
    pub start: Start,
    /// Checkpoint after this many records.
    pub checkpoint_every: u64,
    /// …or after this long.
    pub checkpoint_interval: Duration,
    /// Records per partition turn (the determinism unit).
    pub block: u64,
    /// Keep learning as records arrive.
    pub follow: bool,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Talking to the broker failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
}

/// Checks a model name: 1–128 characters of `[A-Za-z0-9._-]`.
pub fn validate_model_name(name: &str) -> Result<(), TrainError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(TrainError::Invalid(format!(
            "invalid model name {name:?}: use 1-128 letters, digits, '.', '_', '-'"
        )));
    }
    Ok(())
}

/// Runs (or resumes) a job until every partition reaches its end (or, with
/// `follow`, forever). `on_checkpoint` sees every saved checkpoint.
pub async fn run(
    store: &Store,
    cfg: &JobConfig,
    mut on_checkpoint: impl FnMut(&Checkpoint),
) -> Result<Checkpoint, TrainError> {
    validate_model_name(&cfg.model)?;
    if cfg.block == 0 || cfg.checkpoint_every == 0 {
        return Err(TrainError::Invalid(
            "block and checkpoint_every must be positive".into(),
        ));
    }
    let admin = Admin::connect(&cfg.broker).await?;
    let partitions = admin.describe_topic(&cfg.topic).await?.partitions;
    let mut cp = match store.latest(&cfg.model)? {
        Some(cp) => {
            if cp.topic != cfg.topic {
                return Err(TrainError::Invalid(format!(
                    "model {} was trained on topic {}, not {}",
                    cfg.model, cp.topic, cfg.topic
                )));
            }
            tracing::info!(model = %cfg.model, version = cp.version, learned = cp.learned, "resuming from checkpoint");
            cp
        }
        None => {
            let mut offsets = BTreeMap::new();
            for p in 0..partitions {
                let o = match cfg.start {
                    Start::Earliest => {
                        admin
                            .list_offsets(&cfg.topic, p, OffsetSpec::Earliest)
                            .await?
                            .offset
                    }
                    Start::Latest => {
                        admin
                            .list_offsets(&cfg.topic, p, OffsetSpec::Latest)
                            .await?
                            .offset
                    }
                    Start::Timestamp(t) => {
                        admin
                            .list_offsets(&cfg.topic, p, OffsetSpec::Timestamp(t))
                            .await?
                            .offset
                    }
                    Start::Offset(o) => o,
                };
                offsets.insert(p, o);
            }
            Checkpoint {
                version: 0,
                model: cfg.model.clone(),
                topic: cfg.topic.clone(),
                offsets,
                turn: 0,
                spec: cfg.spec.clone(),
                learner: Learner::new(cfg.algo, cfg.hyper),
                metrics: Prequential::default(),
                learned: 0,
                skipped: 0,
                recent_skips: Vec::new(),
                saved_ms: 0,
            }
        }
    };
    let mut ends = BTreeMap::new();
    if !cfg.follow {
        for p in 0..partitions {
            ends.insert(
                p,
                admin
                    .list_offsets(&cfg.topic, p, OffsetSpec::Latest)
                    .await?
                    .offset,
            );
        }
    }
    let mut consumers = BTreeMap::new();
    for (&p, &o) in &cp.offsets {
        let c = ConsumerConfig {
            reset: ResetPolicy::Earliest,
            max_poll_records: cfg.block as usize,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::connect(&cfg.broker, &cfg.topic, Some(vec![p]), c).await?;
        consumer.seek(p, Seek::Offset(o)).await?;
        consumers.insert(p, consumer);
    }
    let mut since_cp = 0u64;
    let mut last_cp = Instant::now();
    let mut pending: BTreeMap<u32, std::collections::VecDeque<strata_client::ConsumerRecord>> =
        BTreeMap::new();
    loop {
        let done = !cfg.follow && cp.offsets.iter().all(|(p, o)| *o >= ends[p]);
        if done {
            break;
        }
        let p = cp.turn;
        let pos = cp.offsets[&p];
        let block_end = (pos / cfg.block + 1) * cfg.block;
        let turn_end = if cfg.follow {
            block_end
        } else {
            block_end.min(ends[&p])
        };
        // Gather the turn's records (possibly already buffered).
        let buf = pending.entry(p).or_default();
        let consumer = consumers
            .get_mut(&p)
            .ok_or_else(|| TrainError::Invalid(format!("partition {p} not assigned")))?;
        while pos < turn_end && buf.back().is_none_or(|r| r.offset + 1 < turn_end) {
            let rs = consumer.poll(Duration::from_secs(1)).await?;
            buf.extend(rs);
        }
        while let Some(r) = buf.front() {
            if r.offset >= turn_end {
                break;
            }
            let Some(r) = buf.pop_front() else { break };
            match extract(&cp.spec, &r.value) {
                Ok(ex) if ex.label.is_none() && cp.learner.algo.supervised() => {
                    skip(&mut cp, p, r.offset, "no label".into())
                }
                Ok(ex) => {
                    let prediction = cp.learner.predict(&ex.features);
                    match cp.learner.learn(&ex.features, ex.label.as_ref()) {
                        Ok(()) => {
                            cp.metrics.update(&prediction, ex.label.as_ref());
                            cp.learned += 1;
                        }
                        Err(e) => skip(&mut cp, p, r.offset, e.to_string()),
                    }
                }
                Err(e) => skip(&mut cp, p, r.offset, e.to_string()),
            }
            cp.offsets.insert(p, r.offset + 1);
            since_cp += 1;
        }
        cp.offsets.insert(p, turn_end.max(cp.offsets[&p]));
        cp.turn = (p + 1) % partitions;
        if since_cp >= cfg.checkpoint_every || last_cp.elapsed() >= cfg.checkpoint_interval {
            cp.saved_ms = now_ms();
            store.save(&mut cp)?;
            on_checkpoint(&cp);
            since_cp = 0;
            last_cp = Instant::now();
        }
    }
    if since_cp > 0 || cp.version == 0 {
        cp.saved_ms = now_ms();
        store.save(&mut cp)?;
        on_checkpoint(&cp);
    }
    Ok(cp)
}

fn skip(cp: &mut Checkpoint, partition: u32, offset: u64, reason: String) {
    tracing::warn!(partition, offset, %reason, "skipping record");
    cp.skipped += 1;
    cp.recent_skips.push(Skipped {
        partition,
        offset,
        reason,
    });
    if cp.recent_skips.len() > 10 {
        cp.recent_skips.remove(0);
    }
}
