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

use std::sync::Arc;

use parking_lot::Mutex;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver as _;
use openraft::impls::ProgressResponder;

use strata_proto::batch::{BatchLimits, VerifiedBatch, parse_header};
use tokio::sync::watch;

use crate::dedup::{Expiry, ProducerTable};
use crate::error::BrokerError;
use crate::log::{
    LogConfig, LogError, LogId, NewEntry, PartitionLog, PartitionWriter, Payload, RetentionReport,
    StoredBatch, SyncObserver, WriterConfig, WriterPool,
};
use crate::raft::hibernate::Sleeper;
use crate::raft::sm::SmShared;
use crate::raft::{Cmd, Raft, RaftLogId, Reply};

/// How long a write waits for a quorum to renew its leader's lease before
/// it fails as NOT_LEADER (retriable).
const LEASE_RENEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a write at a replica without a live leader waits for one to be
/// elected before it answers NOT_LEADER without a hint (an election takes
/// 0.2-1.5 s after the old leader's node is found down).
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Between two looks at the group's leader while waiting for one.
const LEADER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

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
struct Sequencer {
    next_index: u64,
    producers: ProducerTable<watch::Receiver<Outcome>>,
    /// How long and how many producers are kept (the count is enforced as
    /// each new producer arrives).
    expiry: Expiry,
}

/// Wall time in ms since the Unix epoch (0 before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a replicated partition's clock may lag wall time while its
/// producers are active before the leader advances it (producers are
/// stamped with it, so it bounds how early one can be taken for idle).
fn clock_step_ms(expiry: Expiry) -> u64 {
    (expiry.idle_ms / 4).clamp(1, 60_000)
}

/// How a produce ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOutcome {
    /// Offset of the batch's first record (`None` when `acks=none`: the
    /// batch was answered once queued).
    pub base_offset: Option<u64>,
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
    /// Asked for as "durable on the leader": answered as `All` (a quorum's
    /// fsync), since a replicated write reports nothing earlier; on a
    /// single node the two are the same.
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
    /// A replicated partition's group: the wait ends early if its leader
    /// loses its quorum.
    quorum: Option<Arc<Sleeper>>,
}

impl Submitted {
    /// Waits as `acks` asks: not at all, or until the batch is durable (a
    /// duplicate: until its original is). In a cluster, a leader that
    /// loses its quorum meanwhile answers NOT_ENOUGH_REPLICAS at once: the
    /// batch stays in its log and may still commit if the quorum comes
    /// back, so the outcome is unknown and an idempotent retry is safe.
    pub async fn wait(self, acks: Acks) -> Result<ProduceOutcome, BrokerError> {
        let Some(group) = self.quorum.clone() else {
            return self.wait_durable(acks).await;
        };
        tokio::select! {
            r = self.wait_durable(acks) => r,
            () = group.quorum_lost() => Err(BrokerError::NotEnoughReplicas(
                "the quorum was lost with this batch in flight; its outcome is unknown until \
                 the quorum returns (an idempotent retry is safe)"
                    .into(),
            )),
        }
    }

    async fn wait_durable(mut self, acks: Acks) -> Result<ProduceOutcome, BrokerError> {
        let (record_count, duplicate) = (self.record_count, self.duplicate);
        if acks == Acks::None && !duplicate {
            return Ok(ProduceOutcome {
                base_offset: None,
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
                    base_offset: Some(base_offset),
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
    /// The group's hibernation handle: a write renews the lease through it.
    sleeper: Arc<Sleeper>,
}

impl std::fmt::Debug for RaftEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEngine").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct RaftSequencer {
    leader: Option<openraft::vote::leader_id_adv::LeaderId<u64, u64>>,
    producers: ProducerTable<watch::Receiver<Outcome>>,
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

impl Partition {
    /// Opens the partition's log and rebuilds its producer state from the
    /// newest segments.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        topic: &str,
        id: u32,
        node_id: u64,
        log: PartitionLog,
        pool: &WriterPool,
        writer_config: WriterConfig,
        observer: Option<SyncObserver>,
        expiry: Expiry,
    ) -> Result<Self, BrokerError> {
        let next_index = log.last_log_id().map_or(0, |l| l.index + 1);
        let hw = log.durable_next_offset();
        let limits = batch_limits(log.config());
        let mut producers = rebuild_producers(&log, now_ms())?;
        producers.expire(now_ms(), u64::MAX, expiry);
        let writer = PartitionWriter::spawn_in(pool, log, writer_config, observer);
        Ok(Partition {
            topic: topic.to_owned(),
            id,
            node_id,
            writer: Arc::new(writer),
            engine: Engine::Local(Mutex::new(Sequencer {
                next_index,
                producers,
                expiry,
            })),
            hw: Arc::new(watch::channel(hw).0),
            limits: Mutex::new(limits),
        })
    }

    /// A replicated partition over a running Raft group whose log store
    /// uses `writer`.
    #[allow(clippy::too_many_arguments)]
    pub fn replicated(
        topic: &str,
        id: u32,
        node_id: u64,
        writer: Arc<PartitionWriter>,
        raft: Raft,
        sm: Arc<SmShared>,
        hints: LeaderHints,
        sleeper: Arc<Sleeper>,
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
                sleeper,
            }),
            limits: Mutex::new(limits),
        }
    }

    /// Renews a replicated group's leader lease before an operation that
    /// needs it (a membership change, a leadership transfer).
    pub async fn renew_lease(&self) -> Result<(), BrokerError> {
        match &self.engine {
            Engine::Local(_) => Ok(()),
            Engine::Raft(r) => r.renew_lease().await,
        }
    }

    /// Whether this node's probes find a quorum of the group's voters
    /// alive (always on a single node).
    pub fn quorum_reachable(&self) -> bool {
        match &self.engine {
            Engine::Local(_) => true,
            Engine::Raft(r) => r.sleeper.quorum_reachable(),
        }
    }

    /// Resolves when [`Self::quorum_reachable`] turns false (never on a
    /// single node).
    pub async fn quorum_lost(&self) {
        match &self.engine {
            Engine::Local(_) => std::future::pending().await,
            Engine::Raft(r) => r.sleeper.quorum_lost().await,
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

    /// Sets the consumer-group hold retention respects (see
    /// `crate::log::RetentionHold`).
    pub fn set_retention_hold(&self, hold: Option<crate::log::RetentionHold>) {
        self.writer.write().set_retention_hold(hold);
    }

    /// Bytes retention keeps for the hold now.
    pub fn held_bytes(&self) -> u64 {
        self.writer.read().held_bytes()
    }

    /// The Raft term this node leads the partition in (0 on a single
    /// node), or `NOT_LEADER`. State derived from the log while leading
    /// (the group coordinator's) is valid for one term only.
    pub fn leader_term(&self) -> Result<u64, BrokerError> {
        match &self.engine {
            Engine::Local(_) => Ok(0),
            Engine::Raft(r) => r.check_leader().map(|l| l.term),
        }
    }

    /// Current limits for incoming batches.
    pub fn batch_limits(&self) -> BatchLimits {
        *self.limits.lock()
    }

    /// Applies new settings to the live log.
    pub fn set_config(&self, config: LogConfig) -> Result<(), BrokerError> {
        *self.limits.lock() = batch_limits(&config);
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
        let (outcome, duplicate, quorum) = match &self.engine {
            Engine::Local(seq) => {
                let (o, d) = tokio::task::block_in_place(|| self.enqueue(seq, batch))?;
                (o, d, None)
            }
            Engine::Raft(r) => {
                let (o, d) = r.propose(batch).await?;
                (o, d, Some(r.sleeper.clone()))
            }
        };
        Ok(Submitted {
            outcome,
            duplicate,
            record_count,
            hw: self.hw.subscribe(),
            quorum,
        })
    }

    /// Under the sequencer lock: dedup, index assignment, enqueue. Returns
    /// the receiver of the batch's outcome and whether it is a duplicate.
    fn enqueue(
        &self,
        seq: &Mutex<Sequencer>,
        batch: VerifiedBatch,
    ) -> Result<(watch::Receiver<Outcome>, bool), BrokerError> {
        let mut seq = seq.lock();
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
            let known = seq.producers.get(p.producer_id).is_some();
            seq.producers
                .remember(p, header.record_count, rx.clone(), now_ms());
            if !known && seq.producers.len() > seq.expiry.producers_max as usize {
                let expiry = seq.expiry;
                seq.producers.expire(now_ms(), u64::MAX, expiry);
            }
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
            // Deleting segment files blocks: off the async workers.
            Engine::Local(_) => {
                return Ok(crate::raft::blocking(|| {
                    self.writer.write().enforce_retention()
                })?);
            }
            Engine::Raft(r) => r,
        };
        crate::raft::blocking(|| self.writer.write().roll_if_due())?;
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
        r.renew_lease().await?;
        r.raft
            .client_write(Cmd::Trim {
                upto,
                log_start_offset,
            })
            .await
            .map_err(|e| r.client_write_failed(&e))?;
        report.log_start_offset = log_start_offset;
        Ok(report)
    }

    /// Forgets idle producers, and the least recently seen past the
    /// maximum (`expiry`). On a single node at once, by wall time; in a
    /// cluster the leader proposes `ExpireProducers` with its clock when
    /// some producer is due (or the group's clock has fallen behind while
    /// producers are active), so every replica forgets the same ones.
    /// Returns how many producers were forgotten.
    pub async fn expire_producers(&self, expiry: Expiry) -> Result<usize, BrokerError> {
        match &self.engine {
            Engine::Local(seq) => {
                let mut seq = seq.lock();
                seq.expiry = expiry;
                Ok(seq.producers.expire(now_ms(), u64::MAX, expiry).len())
            }
            Engine::Raft(r) => r.expire_producers(expiry).await,
        }
    }

    /// Idempotent producers this replica's state holds.
    pub fn producer_count(&self) -> usize {
        match &self.engine {
            Engine::Local(seq) => seq.lock().producers.len(),
            Engine::Raft(r) => r.sm.state().partition().map_or(0, |p| p.producers.len()),
        }
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
    producers: &ProducerTable<watch::Receiver<Outcome>>,
    batch: &VerifiedBatch,
) -> Result<Option<watch::Receiver<Outcome>>, BrokerError> {
    let header = batch.header();
    let Some(p) = header.producer else {
        return Ok(None);
    };
    Ok(producers.check(p, header.record_count)?.cloned())
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

    /// Fails with NOT_ENOUGH_REPLICAS when the node's probes find most of
    /// the group's voters down: the leader could commit nothing.
    fn check_quorum(&self) -> Result<(), BrokerError> {
        if self.sleeper.quorum_reachable() {
            return Ok(());
        }
        Err(BrokerError::NotEnoughReplicas(
            "most of its replicas' nodes do not answer".into(),
        ))
    }

    /// Renews the leader's lease if it may have lapsed (sleeping leaders
    /// send no heartbeats) before a write. A leader that is still the
    /// leader but gets no quorum acknowledgement answers
    /// NOT_ENOUGH_REPLICAS; one that lost leadership, NOT_LEADER.
    async fn renew_lease(&self) -> Result<(), BrokerError> {
        self.check_quorum()?;
        let renewed = tokio::select! {
            r = self.sleeper.ready_to_write(LEASE_RENEW_TIMEOUT) => r,
            () = self.sleeper.quorum_lost() => Err("its replicas' nodes stopped answering".into()),
        };
        match renewed {
            Ok(()) => Ok(()),
            Err(e) if self.raft.as_leader().is_ok() => {
                tracing::debug!(why = e, "no quorum renewed the lease");
                Err(BrokerError::NotEnoughReplicas(e))
            }
            Err(e) => Err(self.write_error(&e, None)),
        }
    }

    /// How a failed `client_write` (a trim, an expiry) reads to clients.
    fn client_write_failed(
        &self,
        e: &openraft::errors::RaftError<
            crate::raft::Tc,
            openraft::errors::ClientWriteError<crate::raft::Tc>,
        >,
    ) -> BrokerError {
        use openraft::errors::{ClientWriteError, RaftError};
        match e {
            RaftError::APIError(
                ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f),
            ) => self.write_error("write refused", f.leader_id),
            RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
                BrokerError::InvalidRequest(format!("write precondition failed: {p}"))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                BrokerError::InvalidRequest(format!("membership change refused: {c}"))
            }
            RaftError::Fatal(f) => fatal(f),
        }
    }

    /// How a failed read-index check (a new leadership's first write)
    /// reads to clients.
    fn read_index_failed(
        &self,
        e: &openraft::errors::RaftError<
            crate::raft::Tc,
            openraft::errors::LinearizableReadError<crate::raft::Tc>,
        >,
    ) -> BrokerError {
        use openraft::errors::{LinearizableReadError, RaftError};
        match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
                self.write_error("leadership lost", f.leader_id)
            }
            RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => {
                BrokerError::NotEnoughReplicas(q.to_string())
            }
            RaftError::Fatal(f) => fatal(f),
        }
    }

    fn write_error(&self, why: &str, leader: Option<u64>) -> BrokerError {
        tracing::debug!(why, "replicated write failed");
        BrokerError::NotLeader {
            leader: leader.and_then(|n| (self.hints)(n)),
        }
    }

    /// The current leader id if this node leads. Otherwise NOT_LEADER with
    /// a hint; when no live leader is known (an election is under way, or
    /// the known leader's node stopped answering), waits up to
    /// [`LEADER_WAIT`] for one, so the client is told where to go the
    /// moment the election ends instead of polling for it.
    async fn await_leader(
        &self,
    ) -> Result<openraft::vote::leader_id_adv::LeaderId<u64, u64>, BrokerError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            match self.check_leader() {
                Err(BrokerError::NotLeader { leader: None })
                    if tokio::time::Instant::now() < deadline =>
                {
                    // Liveness changes without a metrics change: poll too.
                    let _ = tokio::time::timeout(LEADER_POLL, metrics.changed()).await;
                }
                r => return r,
            }
        }
    }

    /// See [`Partition::expire_producers`]. Proposed under the sequencer's
    /// lock, so no batch is proposed between the command and its outcome:
    /// the sequencer then forgets exactly the producers the group forgot
    /// (it must never forget one the group still knows, or it would let a
    /// gap into the log).
    async fn expire_producers(&self, expiry: Expiry) -> Result<usize, BrokerError> {
        let now = now_ms();
        let due = |seq_len: usize| {
            let st = self.sm.state();
            let Some(p) = st.partition() else {
                unreachable!("a partition's state machine holds a partition")
            };
            let stale_clock = now.saturating_sub(p.clock_ms) >= clock_step_ms(expiry)
                && p.producers
                    .iter()
                    .any(|(_, s)| s.last_seen_ms >= p.clock_ms);
            (p.clock_ms == 0 && !p.producers.is_empty())
                || stale_clock
                || p.producers.expiry_due(now, expiry)
                || seq_len > expiry.producers_max as usize
        };
        if self.check_leader().is_err() {
            return Ok(0);
        }
        let mut seq = self.sequencer.lock().await;
        if !due(seq.producers.len()) {
            return Ok(0);
        }
        self.renew_lease().await?;
        let write = self.raft.client_write(Cmd::ExpireProducers {
            now_ms: now,
            expiry,
        });
        let r = tokio::time::timeout(LEASE_RENEW_TIMEOUT, write).await;
        match r {
            Ok(Ok(resp)) => {
                let Reply::Expired(gone) = resp.data else {
                    unreachable!("ExpireProducers answers Expired, got {:?}", resp.data)
                };
                for id in &gone {
                    seq.producers.forget(*id);
                }
                if !gone.is_empty() {
                    tracing::debug!(forgotten = gone.len(), "idle producers expired");
                }
                Ok(gone.len())
            }
            Ok(Err(e)) => Err(self.client_write_failed(&e)),
            // It may still commit: the sequencer keeps the producers it
            // would forget, which is safe (stricter than the group).
            Err(_) => Err(BrokerError::NotEnoughReplicas(
                "expiring producers: no commit within the lease timeout".into(),
            )),
        }
    }

    /// Dedup and propose, in call order, under this leadership.
    async fn propose(
        &self,
        batch: VerifiedBatch,
    ) -> Result<(watch::Receiver<Outcome>, bool), BrokerError> {
        let leader = self.await_leader().await?;
        self.check_quorum()?;
        let mut seq = self.sequencer.lock().await;
        self.renew_lease().await?;
        if seq.leader != Some(leader) {
            // A new leadership: its producer state is what the group has
            // applied once everything before this term is applied.
            seq.leader = None;
            self.raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
                .map_err(|e| self.read_index_failed(&e))?;
            // The read index covers what is committed, not what this
            // leader has appended and not committed yet. A rebuild within
            // one leadership (after a failed proposal or read) must also
            // wait for those: they will commit, and a table without them
            // would take a retry of one as new (a duplicate in the log) and
            // refuse the producer's next batch as out of order.
            let last = self.raft.metrics().borrow_watched().last_log_index;
            self.raft
                .wait(Some(LEASE_RENEW_TIMEOUT))
                .applied_index_at_least(last, "producer state rebuild")
                .await
                .map_err(|_| {
                    BrokerError::NotEnoughReplicas(
                        "this leader's last entries have not committed yet; retry".into(),
                    )
                })?;
            let st = self.sm.state();
            let Some(p) = st.partition() else {
                unreachable!("a partition's state machine holds a partition")
            };
            seq.producers = p
                .producers
                .map(|base_offset| watch::channel(Some(Ok(*base_offset))).1);
            drop(st);
            tracing::debug!(
                %leader,
                producers = ?seq.producers.iter().map(|(id, p)| (id, p.last_sequence)).collect::<Vec<_>>(),
                "new leadership: producer state rebuilt from the applied log"
            );
            seq.leader = Some(leader);
        }
        if let Some(dup) = check_sequence(&seq.producers, &batch)? {
            return Ok((dup, true));
        }
        let header = *batch.header();
        let (tx, rx) = watch::channel::<Outcome>(None);
        let (responder, mut done) = ProgressResponder::complete_only();
        let submitted = self
            .raft
            .write(Cmd::Batch(batch))
            .with_leader(leader)
            .responder(responder)
            .await;
        if let Err(f) = submitted {
            seq.leader = None;
            return Err(fatal(&f));
        }
        // openraft refuses a proposal (lease lapsed, leadership moving) as
        // it takes it from its queue, answering at once. A request through
        // the same queue behind it tells a refused proposal from one in the
        // log before the sequence is remembered: a refused batch consumes
        // no sequence (else every retry would get its cached failure, and a
        // later batch of the producer could enter the log past the gap).
        if let Err(f) = self.raft.with_raft_state(|_| ()).await {
            seq.leader = None;
            return Err(fatal(&f));
        }
        let early = match done.try_recv() {
            Ok(r) => Some(r),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                // Dropped unanswered: the core is stopping.
                seq.leader = None;
                return Err(BrokerError::ShuttingDown);
            }
        };
        if let Some(Err(openraft::errors::ClientWriteError::ForwardToLeader(f))) = &early {
            return Err(match f.leader_id {
                None if self.raft.as_leader().is_ok() => BrokerError::NotEnoughReplicas(
                    "its lease lapsed: no quorum acknowledged it lately".into(),
                ),
                l => self.write_error("proposal refused", l),
            });
        }
        if let Some(p) = header.producer {
            // The sequencer's times are not used: the group's clock ages
            // producers (`expire_producers`).
            seq.producers
                .remember(p, header.record_count, rx.clone(), 0);
        }
        drop(seq);
        let hints = self.hints.clone();
        let settle = move |r: Result<Result<_, openraft::errors::ClientWriteError<_>>, ()>| {
            let outcome = match r {
                Ok(Ok(openraft::raft::ClientWriteResponse { data, .. })) => match data {
                    Reply::Appended { base_offset } => Ok(base_offset),
                    other => Err(Failure::Other(format!("unexpected reply {other:?}"))),
                },
                Ok(Err(
                    openraft::errors::ClientWriteError::ForwardToLeader(f)
                    | openraft::errors::ClientWriteError::LogEntryDiscarded(f),
                )) => Err(Failure::NotLeader(f.leader_id.and_then(|n| hints(n)))),
                Ok(Err(e)) => Err(Failure::Other(e.to_string())),
                Err(()) => Err(Failure::NotLeader(None)),
            };
            tx.send_replace(Some(outcome));
        };
        match early {
            Some(r) => settle(Ok(r)),
            None => {
                tokio::spawn(async move { settle(done.await.map_err(|_| ())) });
            }
        }
        Ok((rx, false))
    }
}

/// A group whose Raft core stopped: the node is shutting down (retriable
/// at another broker), or the replica's storage failed or its core
/// panicked (`STORAGE_ERROR` with the cause; the other replicas elect
/// another leader), never "not the leader".
fn fatal(f: &openraft::errors::Fatal<crate::raft::Tc>) -> BrokerError {
    use openraft::errors::Fatal;
    match f {
        Fatal::Stopped => BrokerError::ShuttingDown,
        Fatal::StorageError(e) => BrokerError::Storage(LogError::Invalid(format!(
            "this replica's storage failed and its Raft group stopped: {e}"
        ))),
        Fatal::Panicked => BrokerError::Storage(LogError::Invalid(
            "this replica's Raft group stopped after a panic".into(),
        )),
    }
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
fn rebuild_producers(
    log: &PartitionLog,
    now_ms: u64,
) -> Result<ProducerTable<watch::Receiver<Outcome>>, BrokerError> {
    let segments = log.segments();
    let from = segments
        .len()
        .checked_sub(2)
        .map_or(log.log_start_offset(), |i| {
            segments[i].base_offset.max(log.log_start_offset())
        });
    let mut producers = ProducerTable::default();
    let mut offset = from;
    while offset < log.next_offset() {
        let batches = log.read(offset, 16 << 20, None)?;
        let Some(last) = batches.last() else { break };
        offset = last.last_offset() + 1;
        for b in batches {
            let h = parse_header(&b.bytes)
                .map_err(|e| BrokerError::Storage(LogError::Invalid(e.to_string())))?;
            let Some(p) = h.producer else { continue };
            // Seen at the restart: the log does not say when (producer
            // timestamps are the client's).
            let outcome = watch::channel(Some(Ok(b.base_offset))).1;
            producers.remember(p, h.record_count, outcome, now_ms);
        }
    }
    Ok(producers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::pb::ErrorCode;

    /// Guards issue 12 item 6: every Raft write failure was answered
    /// NOT_LEADER (or SHUTTING_DOWN), so clients retried a replica whose
    /// storage had failed as if leadership had merely moved.
    #[test]
    fn a_stopped_group_is_not_reported_as_a_leader_change() {
        use openraft::errors::Fatal;
        assert_eq!(fatal(&Fatal::Stopped).code(), ErrorCode::ShuttingDown);
        let panicked = fatal(&Fatal::Panicked);
        assert_eq!(panicked.code(), ErrorCode::StorageError);
        assert!(panicked.to_string().contains("panic"), "{panicked}");
        use openraft::errors::ErrorSource as _;
        let io = openraft::StorageError::<crate::raft::Tc>::write(
            openraft::impls::BoxedErrorSource::from_string("disk gone"),
        );
        let failed = fatal(&Fatal::StorageError(io));
        assert_eq!(failed.code(), ErrorCode::StorageError);
        assert!(failed.to_string().contains("disk gone"), "{failed}");
    }
}
