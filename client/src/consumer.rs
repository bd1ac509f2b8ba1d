//! `Consumer`: reads assigned partitions of a topic from chosen positions,
//! returns records in offset order per partition, and commits its positions
//! for a group, so that after a restart it resumes from the committed
//! offset. Where there is no committed offset, the reset policy decides
//! (earliest, latest, or an error — explicitly).
//!
//! Each assigned partition has one server-streaming fetch that long-polls at
//! the tail; a seek restarts it. A transport failure restarts it from the
//! next offset not yet handed over; an out-of-range position surfaces as
//! [`ClientError::OffsetOutOfRange`] with the valid range, and that
//! partition stops until the caller seeks.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{BatchLimits, Header, decode_records};
use strata_proto::pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::admin::{Admin, OffsetSpec, Router, connect};
use crate::error::{ClientError, Result};
use crate::retry::Backoff;
use crate::types::TopicPartition;

/// Between reconnections of a fetch stream: 50 ms doubling up to 2 s,
/// jittered, and back to 50 ms once a message arrives.
const FETCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// What to do when a group has no committed offset for a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetPolicy {
    /// Start at the log start offset.
    Earliest,
    /// Start at the high watermark (only new records).
    Latest,
    /// Fail with [`ClientError::NoCommittedOffset`].
    Error,
}

/// Where to move a partition's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// An exact offset.
    Offset(u64),
    /// The first record at or after this timestamp (ms).
    Timestamp(i64),
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Group whose committed offsets are used and committed. `None`: no group.
    pub group: Option<String>,
    /// Policy when the group has no committed offset (or there is no group).
    pub reset: ResetPolicy,
    /// Bytes of batches per fetch message. Default 1 MiB.
    pub fetch_bytes_max: u32,
    /// Fetch messages buffered ahead of `poll`. Default 32.
    pub buffered_messages: usize,
    /// Most records one `poll` returns (the rest wait for the next). Default 500.
    pub max_poll_records: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            reset: ResetPolicy::Latest,
            fetch_bytes_max: 1 << 20,
            buffered_messages: 32,
            max_poll_records: 500,
        }
    }
}

/// A record as consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Producer timestamp (ms).
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Headers.
    pub headers: Vec<Header>,
}

type Delivered = (TopicPartition, u64, Result<pb::FetchResponse>);

/// The fetching machinery shared by [`Consumer`] and
/// [`crate::GroupConsumer`]: one fetch stream per assigned partition (of
/// any topic), records decoded in offset order per partition, positions.
pub(crate) struct Fetcher {
    router: Router,
    fetch_bytes_max: u32,
    max_poll_records: usize,
    /// Set for a group member: every fetch carries it, so the broker can
    /// refuse a zombie's.
    member: Option<pb::FetchMember>,
    /// Next offset `poll` returns, per partition.
    positions: BTreeMap<TopicPartition, u64>,
    /// Next offset to decode from fetched batches, per partition.
    fetched: BTreeMap<TopicPartition, u64>,
    /// Decoded records not yet returned.
    buffered: std::collections::VecDeque<ConsumerRecord>,
    /// A partition's failure, reported by the next `poll`.
    failed: Option<ClientError>,
    generation: BTreeMap<TopicPartition, u64>,
    next_generation: u64,
    tasks: BTreeMap<TopicPartition, JoinHandle<()>>,
    tx: mpsc::Sender<Delivered>,
    rx: mpsc::Receiver<Delivered>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

impl Fetcher {
    pub(crate) fn new(router: Router, config: &ConsumerConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.buffered_messages.max(1));
        Fetcher {
            router,
            fetch_bytes_max: config.fetch_bytes_max,
            max_poll_records: config.max_poll_records.max(1),
            member: None,
            positions: BTreeMap::new(),
            fetched: BTreeMap::new(),
            buffered: std::collections::VecDeque::new(),
            failed: None,
            generation: BTreeMap::new(),
            next_generation: 0,
            tasks: BTreeMap::new(),
            tx,
            rx,
        }
    }

    /// Fetches from now on carry this membership (streams already open
    /// keep theirs).
    pub(crate) fn set_member(&mut self, member: Option<pb::FetchMember>) {
        self.member = member;
    }

    /// Starts (or restarts) fetching `tp` at `offset`.
    pub(crate) fn assign(&mut self, tp: TopicPartition, offset: u64) {
        self.unassign(&tp);
        self.next_generation += 1;
        let gen_ = self.next_generation;
        self.generation.insert(tp.clone(), gen_);
        self.positions.insert(tp.clone(), offset);
        self.fetched.insert(tp.clone(), offset);
        let task = tokio::spawn(fetch_loop(
            self.router.clone(),
            tp.clone(),
            offset,
            self.fetch_bytes_max,
            self.member.clone(),
            gen_,
            self.tx.clone(),
        ));
        self.tasks.insert(tp, task);
    }

    /// Stops fetching `tp` and forgets its position and buffered records.
    pub(crate) fn unassign(&mut self, tp: &TopicPartition) {
        if let Some(t) = self.tasks.remove(tp) {
            t.abort();
        }
        self.generation.remove(tp);
        self.positions.remove(tp);
        self.fetched.remove(tp);
        self.buffered
            .retain(|r| r.topic != tp.0 || r.partition != tp.1);
    }

    pub(crate) fn positions(&self) -> &BTreeMap<TopicPartition, u64> {
        &self.positions
    }

    /// As [`Consumer::poll`].
    pub(crate) async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let max = self.max_poll_records;
        let mut out = Vec::new();
        loop {
            while out.len() < max {
                let Some(r) = self.buffered.pop_front() else {
                    break;
                };
                self.positions
                    .insert((r.topic.clone(), r.partition), r.offset + 1);
                out.push(r);
            }
            if out.len() >= max {
                return Ok(out);
            }
            let msg = if out.is_empty() {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => return Ok(out),
                }
            } else {
                match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => return Ok(out),
                }
            };
            let (tp, gen_, r) = msg;
            if self.generation.get(&tp) != Some(&gen_) {
                continue; // from before a seek or an unassign
            }
            let resp = match r {
                Ok(resp) => resp,
                Err(e) => {
                    self.tasks.remove(&tp);
                    if out.is_empty() {
                        return Err(e);
                    }
                    self.failed = Some(e);
                    return Ok(out);
                }
            };
            let Some(mut next) = self.fetched.get(&tp).copied() else {
                continue;
            };
            let (topic, partition) = &tp;
            for b in resp.batches {
                let records = decode_records(b.batch, &BatchLimits::UNLIMITED).map_err(|e| {
                    ClientError::Batch(format!(
                        "{topic}/{partition} at offset {}: {e}",
                        b.base_offset
                    ))
                })?;
                for (i, r) in records.into_iter().enumerate() {
                    let offset = b.base_offset + i as u64;
                    if offset < next {
                        continue;
                    }
                    if offset != next {
                        return Err(ClientError::Batch(format!(
                            "{topic}/{partition}: expected offset {next}, got {offset}"
                        )));
                    }
                    next = offset + 1;
                    self.buffered.push_back(ConsumerRecord {
                        topic: topic.clone(),
                        partition: *partition,
                        offset,
                        timestamp_ms: r.timestamp_ms,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    });
                }
            }
            self.fetched.insert(tp, next);
        }
    }
}

/// Reads records from Strata.
pub struct Consumer {
    admin: Admin,
    config: ConsumerConfig,
    topic: String,
    fetcher: Fetcher,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("positions", &self.fetcher.positions)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Connects and assigns `partitions` of `topic` (all of them if `None`),
    /// positioned at the group's committed offsets or by the reset policy.
    pub async fn connect(
        addr: &str,
        topic: &str,
        partitions: Option<Vec<u32>>,
        config: ConsumerConfig,
    ) -> Result<Self> {
        let client = connect(addr).await?;
        let router = Router::new(addr, client);
        router.refresh().await;
        let admin = Admin::connect(addr).await?;
        let d = admin.describe_topic(topic).await?;
        let partitions = partitions.unwrap_or_else(|| (0..d.partitions).collect());
        if let Some(p) = partitions.iter().find(|p| **p >= d.partitions) {
            return Err(ClientError::Invalid(format!(
                "topic {topic} has {} partitions; there is no partition {p}",
                d.partitions
            )));
        }
        let committed: BTreeMap<u32, u64> = match &config.group {
            Some(g) => admin.committed(g, topic).await?.into_iter().collect(),
            None => BTreeMap::new(),
        };
        let mut c = Consumer {
            fetcher: Fetcher::new(router, &config),
            admin,
            topic: topic.to_owned(),
            config,
        };
        for p in partitions {
            let start = match committed.get(&p) {
                Some(o) => *o,
                None => {
                    reset_position(
                        &c.admin,
                        c.config.reset,
                        c.config.group.as_deref(),
                        topic,
                        p,
                    )
                    .await?
                }
            };
            c.fetcher.assign((topic.to_owned(), p), start);
        }
        Ok(c)
    }

    /// The assigned partitions and their next offsets.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        self.fetcher
            .positions()
            .iter()
            .map(|((_, p), o)| (*p, *o))
            .collect()
    }

    /// Moves a partition's position. An offset outside the readable range
    /// is refused with [`ClientError::OffsetOutOfRange`].
    pub async fn seek(&mut self, partition: u32, to: Seek) -> Result<u64> {
        let tp = (self.topic.clone(), partition);
        if !self.fetcher.positions().contains_key(&tp) {
            return Err(ClientError::Invalid(format!(
                "partition {partition} is not assigned"
            )));
        }
        let offset = resolve_seek(&self.admin, &self.topic, partition, to).await?;
        self.fetcher.assign(tp, offset);
        Ok(offset)
    }

    /// Moves a partition's position back to `offset`, locally (no request):
    /// for an application that stops part-way through a poll, so the
    /// records it did not process are read again and a commit does not
    /// cover them. A position already at or before `offset` is left alone.
    pub fn rewind(&mut self, partition: u32, offset: u64) -> Result<()> {
        let tp = (self.topic.clone(), partition);
        match self.fetcher.positions().get(&tp) {
            None => Err(ClientError::Invalid(format!(
                "partition {partition} is not assigned"
            ))),
            Some(p) if *p <= offset => Ok(()),
            Some(_) => {
                self.fetcher.assign(tp, offset);
                Ok(())
            }
        }
    }

    /// Waits up to `timeout` for records; returns those available (possibly
    /// none), at most `max_poll_records`. Records of one partition come in
    /// offset order, each once.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        self.fetcher.poll(timeout).await
    }

    /// Commits the current positions for the group (a standalone commit:
    /// refused with GROUP_NOT_EMPTY while the group has members; use
    /// [`crate::GroupConsumer`] to consume as a member).
    pub async fn commit(&self) -> Result<()> {
        let group = self
            .config
            .group
            .as_deref()
            .ok_or_else(|| ClientError::Invalid("commit needs a group".into()))?;
        let offsets: Vec<(u32, u64)> = self.positions().into_iter().collect();
        self.admin.commit(group, &self.topic, &offsets).await
    }
}

/// Where a partition without a committed offset starts, by `policy`.
pub(crate) async fn reset_position(
    admin: &Admin,
    policy: ResetPolicy,
    group: Option<&str>,
    topic: &str,
    partition: u32,
) -> Result<u64> {
    Ok(match policy {
        ResetPolicy::Earliest => {
            admin
                .list_offsets(topic, partition, OffsetSpec::Earliest)
                .await?
                .offset
        }
        ResetPolicy::Latest => {
            admin
                .list_offsets(topic, partition, OffsetSpec::Latest)
                .await?
                .offset
        }
        ResetPolicy::Error => {
            return Err(ClientError::NoCommittedOffset {
                group: group.unwrap_or_default().to_owned(),
                topic: topic.to_owned(),
                partition,
            });
        }
    })
}

/// The offset a seek moves to.
async fn resolve_seek(admin: &Admin, topic: &str, partition: u32, to: Seek) -> Result<u64> {
    Ok(match to {
        Seek::Offset(o) => {
            let r = admin
                .list_offsets(topic, partition, OffsetSpec::Earliest)
                .await?;
            if o < r.log_start_offset || o > r.high_watermark {
                return Err(ClientError::OffsetOutOfRange {
                    offset: o,
                    log_start_offset: r.log_start_offset,
                    high_watermark: r.high_watermark,
                });
            }
            o
        }
        Seek::Timestamp(t) => {
            admin
                .list_offsets(topic, partition, OffsetSpec::Timestamp(t))
                .await?
                .offset
        }
        Seek::Earliest => {
            admin
                .list_offsets(topic, partition, OffsetSpec::Earliest)
                .await?
                .offset
        }
        Seek::Latest => {
            admin
                .list_offsets(topic, partition, OffsetSpec::Latest)
                .await?
                .offset
        }
    })
}

async fn fetch_loop(
    router: Router,
    tp: TopicPartition,
    mut offset: u64,
    max_bytes: u32,
    member: Option<pb::FetchMember>,
    gen_: u64,
    tx: mpsc::Sender<Delivered>,
) {
    let (topic, partition) = tp.clone();
    // Failures since the last message, for the backoff.
    let mut failures = 0;
    let mut hops = 0;
    let mut addr = router.bootstrap().to_owned();
    loop {
        let client = match router.client(&addr) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send((tp.clone(), gen_, Err(e))).await;
                return;
            }
        };
        let req = pb::FetchRequest {
            topic: topic.clone(),
            partition,
            start: Some(pb::fetch_request::Start::Offset(offset)),
            max_bytes,
            follow: true,
            max_wait_ms: 0,
            member: member.clone(),
        };
        let err = match client.clone().fetch(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            failures = 0;
                            if let Some(last) = resp.batches.last() {
                                let n = decode_count(&last.batch);
                                offset = last.base_offset + n;
                            }
                            if tx.send((tp.clone(), gen_, Ok(resp))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break ClientError::Unavailable("fetch stream ended".into()),
                        Err(s) => break ClientError::from(s),
                    }
                }
            }
            Err(s) => ClientError::from(s),
        };
        if !err.is_retriable() {
            let _ = tx.send((tp.clone(), gen_, Err(err))).await;
            return;
        }
        tracing::debug!(partition, error = %err, "fetch interrupted; reconnecting");
        // A hint to another broker is followed at once (a few hops; then
        // the backoff applies, in case hints go round in circles).
        let hinted = matches!(&err, ClientError::NotLeader { leader: Some(l), .. } if *l != addr);
        if let Some(next) = router.next(&addr, &err) {
            addr = next;
        }
        if hinted && hops < 3 {
            hops += 1;
            continue;
        }
        hops = 0;
        tokio::time::sleep(FETCH_BACKOFF.delay(failures)).await;
        failures = failures.saturating_add(1);
    }
}

/// Record count from a batch header (the stream handler needs only that).
fn decode_count(batch: &[u8]) -> u64 {
    strata_proto::batch::parse_header(batch).map_or(0, |h| u64::from(h.record_count))
}
