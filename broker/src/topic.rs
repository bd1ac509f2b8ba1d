//! Topics and partitions as the services see them: topic settings and name
//! rules, and [`Partition`], which puts a sequencer (Raft index assignment
//! and idempotent-producer dedup), a high watermark and reads around a
//! partition log's group-commit writer.
//!
//! A partition runs on one of two engines. On a single-node broker it is
//! its own trivial "Raft group": every entry gets term 1 and this node's
//! id, and the high watermark is the durable end of the local log. In a
//! cluster it is a real Raft group ([`crate::raft`]): only its leader
//! accepts batches (after the same dedup checks, against the producer state
//! the group has applied), a batch is acknowledged once a quorum has it
//! fsynced and it is applied, and the high watermark is the applied end.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::ReadPolicy;
use openraft::impls::ProgressResponder;

use serde::{Deserialize, Serialize};
use strata_proto::batch::{BatchLimits, ProducerInfo, VerifiedBatch, parse_header};
use tokio::sync::watch;

use crate::config::LogDefaults;
use crate::error::BrokerError;
use crate::log::{
    LogConfig, LogError, LogId, NewEntry, PartitionLog, PartitionWriter, Payload, RetentionReport,
    StoredBatch, SyncObserver, WriterConfig,
};
use crate::raft::sm::SmShared;
use crate::raft::{Cmd, Raft, RaftLogId, Reply};

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_MAX: usize = 249;
/// Batches remembered per producer for deduplicating retries. A client may
/// resend any batch it still has in flight, so this must be at least the
/// client's in-flight limit per partition (8); Kafka pairs 5 with 5.
pub const DEDUP_WINDOW: usize = 16;

/// Checks a topic name: 1–249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let bad = |why: &str| Err(BrokerError::InvalidTopicName(format!("{name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_MAX {
        return bad(&format!("longer than {TOPIC_NAME_MAX} characters"));
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Per-topic overrides of the broker's log defaults. `None`: use the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    /// Time retention in ms; -1 keeps forever.
    pub retention_ms: Option<i64>,
    /// Size retention in bytes per partition; -1 means no limit.
    pub retention_bytes: Option<i64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// Segment age before rolling.
    pub segment_ms: Option<i64>,
    /// Largest batch accepted.
    pub max_batch_bytes: Option<u32>,
}

impl TopicSettings {
    /// The log configuration these settings give over `d`.
    pub fn to_log_config(&self, d: &LogDefaults) -> LogConfig {
        let retention_ms = self.retention_ms.unwrap_or(d.retention_ms);
        let retention_bytes = self.retention_bytes.unwrap_or(d.retention_bytes);
        LogConfig {
            segment_bytes_max: self.segment_bytes.unwrap_or(d.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(d.segment_ms),
            index_interval_bytes: d.index_interval_bytes,
            batch_bytes_max: self.max_batch_bytes.unwrap_or(d.max_batch_bytes),
            retention_ms: (retention_ms >= 0).then_some(retention_ms),
            retention_bytes: (retention_bytes >= 0).then_some(retention_bytes as u64),
            ..LogConfig::default()
        }
    }

    /// Overwrites the settings that `other` sets.
    pub fn merge(&mut self, other: &TopicSettings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            retention_ms,
            retention_bytes,
            segment_bytes,
            segment_ms,
            max_batch_bytes
        );
    }

    /// Rejects values that are invalid on their own (the combination is
    /// checked by [`LogConfig::validate`]).
    pub fn validate(&self, d: &LogDefaults) -> Result<(), BrokerError> {
        for (name, v) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
        ] {
            if v.is_some_and(|v| v < -1 || v == 0) {
                return Err(BrokerError::InvalidConfig(format!(
                    "{name} must be positive or -1 (unlimited)"
                )));
            }
        }
        self.to_log_config(d)
            .validate()
            .map_err(BrokerError::InvalidConfig)
    }
}

/// Why a queued batch failed.
#[derive(Debug, Clone)]
enum Failure {
    /// Leadership moved before the batch committed (it may still commit;
    /// an idempotent retry is safe).
    NotLeader(Option<String>),
    /// Anything else.
    Other(String),
}

/// What a duplicate (retried) batch gets answered with once its original
/// completes: the original base offset, or the original failure.
type Outcome = Option<Result<u64, Failure>>;

#[derive(Debug)]
struct Recent {
    base_sequence: u32,
    record_count: u32,
    outcome: watch::Receiver<Outcome>,
}

#[derive(Debug)]
struct ProducerState {
    epoch: u16,
    /// Sequence of the last record appended.
    last_sequence: u32,
    recent: VecDeque<Recent>,
}

#[derive(Debug)]
struct Sequencer {
    next_index: u64,
    producers: HashMap<u64, ProducerState>,
}

/// How a produce ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOutcome {
    /// Offset of the batch's first record (0 when `acks=none`).
    pub base_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
    /// The batch was a retry of one already appended.
    pub duplicate: bool,
}

/// When a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Once durable. On a single node `Leader` means the same.
    All,
    /// Once durable on the leader.
    Leader,
    /// Once queued (no offset is returned).
    None,
}

/// A batch queued at the writer, to be waited for.
#[derive(Debug)]
pub struct Submitted {
    outcome: watch::Receiver<Outcome>,
    duplicate: bool,
    record_count: u32,
    hw: watch::Receiver<u64>,
}

impl Submitted {
    /// Waits as `acks` asks: not at all, or until the batch is durable (a
    /// duplicate: until its original is).
    pub async fn wait(mut self, acks: Acks) -> Result<ProduceOutcome, BrokerError> {
        let (record_count, duplicate) = (self.record_count, self.duplicate);
        if acks == Acks::None && !duplicate {
            return Ok(ProduceOutcome {
                base_offset: 0,
                record_count,
                duplicate,
            });
        }
        let r = self
            .outcome
            .wait_for(|o| o.is_some())
            .await
            .map_err(|_| BrokerError::ShuttingDown)?
            .clone();
        match r {
            Some(Ok(base_offset)) => {
                // A duplicate may answer before its original's group is
                // durable everywhere readers look: wait for the watermark.
                let end = base_offset + u64::from(record_count);
                self.hw
                    .wait_for(|h| *h >= end)
                    .await
                    .map_err(|_| BrokerError::ShuttingDown)?;
                Ok(ProduceOutcome {
                    base_offset,
                    record_count,
                    duplicate,
                })
            }
            Some(Err(Failure::Other(e))) => Err(BrokerError::Storage(LogError::Invalid(e))),
            Some(Err(Failure::NotLeader(leader))) => Err(BrokerError::NotLeader { leader }),
            None => unreachable!("waited for Some"),
        }
    }
}

/// Maps a node id to its client (gRPC) address, for NOT_LEADER hints.
pub type LeaderHints = Arc<dyn Fn(u64) -> Option<String> + Send + Sync>;

/// The Raft side of a replicated partition.
pub struct RaftEngine {
    raft: Raft,
    sm: Arc<SmShared>,
    /// Producer state as of the tail of the log this leader proposes to,
    /// valid for one leadership (`leader`); rebuilt from the applied state
    /// when leadership changes.
    sequencer: tokio::sync::Mutex<RaftSequencer>,
    hints: LeaderHints,
}

impl std::fmt::Debug for RaftEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEngine").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct RaftSequencer {
    leader: Option<openraft::vote::leader_id_adv::LeaderId<u64, u64>>,
    producers: HashMap<u64, ProducerState>,
}

#[derive(Debug)]
enum Engine {
    Local(Mutex<Sequencer>),
    Raft(RaftEngine),
}

/// One partition of a topic, served by this node.
#[derive(Debug)]
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub id: u32,
    node_id: u64,
    writer: Arc<PartitionWriter>,
    engine: Engine,
    hw: Arc<watch::Sender<u64>>,
    limits: Mutex<BatchLimits>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Partition {
    /// Opens the partition's log and rebuilds its producer state from the
    /// newest segments.
    pub fn open(
        topic: &str,
        id: u32,
        node_id: u64,
        log: PartitionLog,
        writer_config: WriterConfig,
        observer: Option<SyncObserver>,
    ) -> Result<Self, BrokerError> {
        let next_index = log.last_log_id().map_or(0, |l| l.index + 1);
        let hw = log.durable_next_offset();
        let limits = batch_limits(log.config());
        let producers = rebuild_producers(&log)?;
        let writer =
            PartitionWriter::spawn_observed(log, writer_config, observer).map_err(|e| {
                BrokerError::Storage(LogError::Invalid(format!(
                    "cannot start the writer thread: {e}"
                )))
            })?;
        Ok(Partition {
            topic: topic.to_owned(),
            id,
            node_id,
            writer: Arc::new(writer),
            engine: Engine::Local(Mutex::new(Sequencer {
                next_index,
                producers,
            })),
            hw: Arc::new(watch::channel(hw).0),
            limits: Mutex::new(limits),
        })
    }

    /// A replicated partition over a running Raft group whose log store
    /// uses `writer`.
    pub fn replicated(
        topic: &str,
        id: u32,
        node_id: u64,
        writer: Arc<PartitionWriter>,
        raft: Raft,
        sm: Arc<SmShared>,
        hints: LeaderHints,
    ) -> Self {
        let limits = batch_limits(writer.read().config());
        Partition {
            topic: topic.to_owned(),
            id,
            node_id,
            writer,
            hw: sm.applied_watch.clone(),
            engine: Engine::Raft(RaftEngine {
                raft,
                sm,
                sequencer: tokio::sync::Mutex::new(RaftSequencer::default()),
                hints,
            }),
            limits: Mutex::new(limits),
        }
    }

    /// The Raft group, if replicated.
    pub fn raft(&self) -> Option<&Raft> {
        match &self.engine {
            Engine::Raft(r) => Some(&r.raft),
            Engine::Local(_) => None,
        }
    }

    /// The log writer (reads, retention, inspection).
    pub fn writer(&self) -> &Arc<PartitionWriter> {
        &self.writer
    }

    /// Fails with `NOT_LEADER` (and a hint) unless this node leads the
    /// partition. Always succeeds on a single node.
    pub fn check_leader(&self) -> Result<(), BrokerError> {
        match &self.engine {
            Engine::Local(_) => Ok(()),
            Engine::Raft(r) => r.check_leader().map(|_| ()),
        }
    }

    /// Current limits for incoming batches.
    pub fn batch_limits(&self) -> BatchLimits {
        *lock(&self.limits)
    }

    /// Applies new settings to the live log.
    pub fn set_config(&self, config: LogConfig) -> Result<(), BrokerError> {
        *lock(&self.limits) = batch_limits(&config);
        self.writer.write().set_config(config)?;
        Ok(())
    }

    /// The high watermark: offsets below it are durable and readable.
    pub fn high_watermark(&self) -> u64 {
        *self.hw.borrow()
    }

    /// A receiver notified when the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hw.subscribe()
    }

    /// The log start offset (in a cluster, the replicated one, which moves
    /// before the local files are deleted).
    pub fn log_start_offset(&self) -> u64 {
        let local = self.writer.read().log_start_offset();
        match &self.engine {
            Engine::Local(_) => local,
            Engine::Raft(r) => local.max(*r.sm.start_watch.borrow()),
        }
    }

    /// Size in bytes and segment count.
    pub fn size(&self) -> (u64, usize) {
        let log = self.writer.read();
        (log.size_bytes(), log.segments().len())
    }

    /// Appends a verified batch: deduplicates idempotent retries, assigns
    /// the Raft index, queues it at the group-commit writer, and (unless
    /// `acks=none`) waits until it is durable.
    pub async fn produce(
        &self,
        batch: VerifiedBatch,
        acks: Acks,
    ) -> Result<ProduceOutcome, BrokerError> {
        self.submit(batch).await?.wait(acks).await
    }

    /// The first half of [`Self::produce`]: dedup, index assignment and
    /// enqueue, in call order. Callers that must keep order across requests
    /// (the produce stream) submit sequentially and wait concurrently.
    pub async fn submit(&self, batch: VerifiedBatch) -> Result<Submitted, BrokerError> {
        let record_count = batch.record_count();
        let (outcome, duplicate) = match &self.engine {
            Engine::Local(seq) => tokio::task::block_in_place(|| self.enqueue(seq, batch))?,
            Engine::Raft(r) => r.propose(batch).await?,
        };
        Ok(Submitted {
            outcome,
            duplicate,
            record_count,
            hw: self.hw.subscribe(),
        })
    }

    /// Under the sequencer lock: dedup, index assignment, enqueue. Returns
    /// the receiver of the batch's outcome and whether it is a duplicate.
    fn enqueue(
        &self,
        seq: &Mutex<Sequencer>,
        batch: VerifiedBatch,
    ) -> Result<(watch::Receiver<Outcome>, bool), BrokerError> {
        let mut seq = lock(seq);
        let header = *batch.header();
        if let Some(dup) = check_sequence(&seq.producers, &batch)? {
            return Ok((dup, true));
        }
        let index = seq.next_index;
        let (tx, rx) = watch::channel::<Outcome>(None);
        let hw = self.hw.clone();
        let entry = NewEntry {
            log_id: LogId::new(1, self.node_id, index),
            payload: Payload::Batch(batch),
        };
        self.writer
            .append(
                vec![entry],
                Box::new(move |r| {
                    let outcome = match r {
                        Ok(a) => {
                            let end = a[0].base_offset + u64::from(a[0].record_count);
                            hw.send_if_modified(|h| {
                                let moved = end > *h;
                                *h = (*h).max(end);
                                moved
                            });
                            Ok(a[0].base_offset)
                        }
                        Err(e) => Err(Failure::Other(e.to_string())),
                    };
                    tx.send_replace(Some(outcome));
                }),
            )
            .map_err(BrokerError::Storage)?;
        seq.next_index += 1;
        if let Some(p) = header.producer {
            remember(&mut seq.producers, p, header.record_count, rx.clone());
        }
        Ok((rx, false))
    }

    /// Reads batches from `offset` below the high watermark. In a cluster
    /// only the leader serves reads (see [`Self::read_replica`]).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>, BrokerError> {
        self.check_leader()?;
        self.read_replica(offset, max_bytes)
    }

    /// Reads from this replica, leader or not, below its own high
    /// watermark (committed data only, possibly behind the leader's).
    pub fn read_replica(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        let hw = self.high_watermark();
        let log_start_offset = self.log_start_offset();
        let log = self.writer.read();
        if offset < log_start_offset || offset > hw {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark: hw,
            });
        }
        Ok(log.read(offset, max_bytes, Some(hw))?)
    }

    /// First offset with a timestamp at or after `timestamp_ms`, below the
    /// high watermark; the high watermark if there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, BrokerError> {
        let hw = self.high_watermark();
        let found = self.writer.read().offset_for_timestamp(timestamp_ms)?;
        Ok(found.filter(|o| *o < hw).unwrap_or(hw))
    }

    /// Runs retention. In a cluster the leader proposes the trim point and
    /// every replica deletes once it applies it; here only aged segments
    /// are rolled.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, BrokerError> {
        let r = match &self.engine {
            Engine::Local(_) => return Ok(self.writer.write().enforce_retention()?),
            Engine::Raft(r) => r,
        };
        self.writer.write().roll_if_due()?;
        let point = self.writer.read().retention_point();
        let mut report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..Default::default()
        };
        let Some((upto, log_start_offset)) = point else {
            return Ok(report);
        };
        if log_start_offset <= report.log_start_offset || r.check_leader().is_err() {
            return Ok(report);
        }
        let upto: RaftLogId = crate::raft::from_log_id(upto);
        r.raft
            .client_write(Cmd::Trim {
                upto,
                log_start_offset,
            })
            .await
            .map_err(|e| {
                r.write_error(
                    &e.to_string(),
                    e.forward_to_leader().and_then(|f| f.leader_id),
                )
            })?;
        report.log_start_offset = log_start_offset;
        Ok(report)
    }

    /// Waits for everything queued to be durable.
    pub fn close(&self) -> Result<(), BrokerError> {
        Ok(self.writer.flush()?)
    }
}

/// Checks an idempotent producer's batch against its state: a retry of a
/// remembered batch returns the original's outcome; a gap, a stale epoch or
/// a non-zero first sequence of a new epoch is refused.
fn check_sequence(
    producers: &HashMap<u64, ProducerState>,
    batch: &VerifiedBatch,
) -> Result<Option<watch::Receiver<Outcome>>, BrokerError> {
    let header = batch.header();
    let (Some(p), true) = (header.producer, true) else {
        return Ok(None);
    };
    let Some(state) = producers.get(&p.producer_id) else {
        return Ok(None);
    };
    if p.producer_epoch < state.epoch {
        return Err(BrokerError::ProducerFenced {
            producer_id: p.producer_id,
            epoch: p.producer_epoch,
            current: state.epoch,
        });
    }
    if p.producer_epoch == state.epoch {
        if let Some(r) = state
            .recent
            .iter()
            .find(|r| r.base_sequence == p.base_sequence && r.record_count == header.record_count)
        {
            return Ok(Some(r.outcome.clone()));
        }
        let expected = state.last_sequence.wrapping_add(1);
        if p.base_sequence != expected {
            return Err(BrokerError::OutOfOrderSequence {
                producer_id: p.producer_id,
                expected,
                got: p.base_sequence,
            });
        }
    } else if p.base_sequence != 0 {
        return Err(BrokerError::OutOfOrderSequence {
            producer_id: p.producer_id,
            expected: 0,
            got: p.base_sequence,
        });
    }
    Ok(None)
}

impl RaftEngine {
    /// The current leader id if this node leads, else `NOT_LEADER`.
    fn check_leader(
        &self,
    ) -> Result<openraft::vote::leader_id_adv::LeaderId<u64, u64>, BrokerError> {
        match self.raft.as_leader() {
            Ok(l) => Ok(l.to_committed_leader_id()),
            Err(f) => Err(BrokerError::NotLeader {
                leader: f.leader_id.and_then(|n| (self.hints)(n)),
            }),
        }
    }

    fn write_error(&self, why: &str, leader: Option<u64>) -> BrokerError {
        tracing::debug!(why, "replicated write failed");
        BrokerError::NotLeader {
            leader: leader.and_then(|n| (self.hints)(n)),
        }
    }

    /// Dedup and propose, in call order, under this leadership.
    async fn propose(
        &self,
        batch: VerifiedBatch,
    ) -> Result<(watch::Receiver<Outcome>, bool), BrokerError> {
        let leader = self.check_leader()?;
        let mut seq = self.sequencer.lock().await;
        if seq.leader != Some(leader) {
            // A new leadership: its producer state is what the group has
            // applied once everything before this term is applied.
            seq.leader = None;
            self.raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
                .map_err(|e| self.write_error(&e.to_string(), None))?;
            let st = self.sm.state();
            let Some(p) = st.partition() else {
                unreachable!("a partition's state machine holds a partition")
            };
            seq.producers = p
                .producers
                .iter()
                .map(|(id, snap)| {
                    let recent = snap
                        .recent
                        .iter()
                        .map(|(base_sequence, record_count, base_offset)| Recent {
                            base_sequence: *base_sequence,
                            record_count: *record_count,
                            outcome: watch::channel(Some(Ok(*base_offset))).1,
                        })
                        .collect();
                    let state = ProducerState {
                        epoch: snap.epoch,
                        last_sequence: snap.last_sequence,
                        recent,
                    };
                    (*id, state)
                })
                .collect();
            drop(st);
            tracing::debug!(
                %leader,
                producers = ?seq.producers.iter().map(|(id, p)| (*id, p.last_sequence)).collect::<Vec<_>>(),
                "new leadership: producer state rebuilt from the applied log"
            );
            seq.leader = Some(leader);
        }
        if let Some(dup) = check_sequence(&seq.producers, &batch)? {
            return Ok((dup, true));
        }
        let header = *batch.header();
        let (tx, rx) = watch::channel::<Outcome>(None);
        let (responder, done) = ProgressResponder::complete_only();
        let submitted = self
            .raft
            .write(Cmd::Batch(batch))
            .with_leader(leader)
            .responder(responder)
            .await;
        if submitted.is_err() {
            seq.leader = None;
            return Err(BrokerError::ShuttingDown);
        }
        if let Some(p) = header.producer {
            remember(&mut seq.producers, p, header.record_count, rx.clone());
        }
        drop(seq);
        let hints = self.hints.clone();
        tokio::spawn(async move {
            let outcome = match done.await {
                Ok(Ok(resp)) => match resp.data {
                    Reply::Appended { base_offset } => Ok(base_offset),
                    other => Err(Failure::Other(format!("unexpected reply {other:?}"))),
                },
                Ok(Err(
                    openraft::errors::ClientWriteError::ForwardToLeader(f)
                    | openraft::errors::ClientWriteError::LogEntryDiscarded(f),
                )) => Err(Failure::NotLeader(f.leader_id.and_then(|n| hints(n)))),
                Ok(Err(e)) => Err(Failure::Other(e.to_string())),
                Err(_) => Err(Failure::NotLeader(None)),
            };
            tx.send_replace(Some(outcome));
        });
        Ok((rx, false))
    }
}

/// Records an appended (or recovered) batch of an idempotent producer: a new
/// epoch resets its window; the window keeps the last `DEDUP_WINDOW` batches.
fn remember(
    producers: &mut HashMap<u64, ProducerState>,
    p: ProducerInfo,
    record_count: u32,
    outcome: watch::Receiver<Outcome>,
) {
    let state = producers.entry(p.producer_id).or_insert(ProducerState {
        epoch: p.producer_epoch,
        last_sequence: 0,
        recent: VecDeque::new(),
    });
    if state.epoch != p.producer_epoch {
        state.epoch = p.producer_epoch;
        state.recent.clear();
    }
    state.last_sequence = p.base_sequence.wrapping_add(record_count - 1);
    if state.recent.len() == DEDUP_WINDOW {
        state.recent.pop_front();
    }
    state.recent.push_back(Recent {
        base_sequence: p.base_sequence,
        record_count,
        outcome,
    });
}

fn batch_limits(config: &LogConfig) -> BatchLimits {
    BatchLimits {
        batch_bytes_max: config.batch_bytes_max as usize,
        uncompressed_bytes_max: (config.batch_bytes_max as usize)
            .saturating_mul(16)
            .max(16 << 20),
    }
}

/// Rebuilds idempotent-producer state from the batch headers of the last
/// two segments. A producer whose last batch is older than that is
/// unknown after a restart and may resume at any sequence (documented).
fn rebuild_producers(log: &PartitionLog) -> Result<HashMap<u64, ProducerState>, BrokerError> {
    let segments = log.segments();
    let from = segments
        .len()
        .checked_sub(2)
        .map_or(log.log_start_offset(), |i| {
            segments[i].base_offset.max(log.log_start_offset())
        });
    let mut producers: HashMap<u64, ProducerState> = HashMap::new();
    let mut offset = from;
    while offset < log.next_offset() {
        let batches = log.read(offset, 16 << 20, None)?;
        let Some(last) = batches.last() else { break };
        offset = last.last_offset() + 1;
        for b in batches {
            let h = parse_header(&b.bytes)
                .map_err(|e| BrokerError::Storage(LogError::Invalid(e.to_string())))?;
            let Some(p) = h.producer else { continue };
            remember(
                &mut producers,
                p,
                h.record_count,
                watch::channel(Some(Ok(b.base_offset))).1,
            );
        }
    }
    Ok(producers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(BrokerError::InvalidTopicName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn settings_merge_and_map_unlimited() {
        let d = LogDefaults::default();
        let mut s = TopicSettings {
            retention_ms: Some(-1),
            ..Default::default()
        };
        s.merge(&TopicSettings {
            retention_bytes: Some(1000),
            ..Default::default()
        });
        let c = s.to_log_config(&d);
        assert_eq!((c.retention_ms, c.retention_bytes), (None, Some(1000)));
        assert!(
            TopicSettings {
                retention_ms: Some(0),
                ..Default::default()
            }
            .validate(&d)
            .is_err()
        );
        assert!(
            TopicSettings {
                segment_bytes: Some(10),
                ..Default::default()
            }
            .validate(&d)
            .is_err()
        );
    }
}
