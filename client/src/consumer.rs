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

type Delivered = (u32, u64, Result<pb::FetchResponse>);

/// Reads records from Strata.
pub struct Consumer {
    router: Router,
    admin: Admin,
    config: ConsumerConfig,
    topic: String,
    /// Next offset `poll` returns, per partition.
    positions: BTreeMap<u32, u64>,
    /// Next offset to decode from fetched batches, per partition.
    fetched: BTreeMap<u32, u64>,
    /// Decoded records not yet returned.
    buffered: std::collections::VecDeque<ConsumerRecord>,
    /// A partition's failure, reported by the next `poll`.
    failed: Option<ClientError>,
    generation: BTreeMap<u32, u64>,
    tasks: BTreeMap<u32, JoinHandle<()>>,
    tx: mpsc::Sender<Delivered>,
    rx: mpsc::Receiver<Delivered>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
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
        let (tx, rx) = mpsc::channel(config.buffered_messages.max(1));
        let mut c = Consumer {
            router,
            admin,
            topic: topic.to_owned(),
            positions: BTreeMap::new(),
            fetched: BTreeMap::new(),
            buffered: std::collections::VecDeque::new(),
            failed: None,
            generation: BTreeMap::new(),
            tasks: BTreeMap::new(),
            tx,
            rx,
            config,
        };
        for p in partitions {
            let start = match committed.get(&p) {
                Some(o) => *o,
                None => match c.config.reset {
                    ResetPolicy::Earliest => {
                        c.admin
                            .list_offsets(topic, p, OffsetSpec::Earliest)
                            .await?
                            .offset
                    }
                    ResetPolicy::Latest => {
                        c.admin
                            .list_offsets(topic, p, OffsetSpec::Latest)
                            .await?
                            .offset
                    }
                    ResetPolicy::Error => {
                        return Err(ClientError::NoCommittedOffset {
                            group: c.config.group.clone().unwrap_or_default(),
                            topic: topic.to_owned(),
                            partition: p,
                        });
                    }
                },
            };
            c.start(p, start);
        }
        Ok(c)
    }

    fn start(&mut self, partition: u32, offset: u64) {
        if let Some(t) = self.tasks.remove(&partition) {
            t.abort();
        }
        let gen_ = self.generation.get(&partition).map_or(0, |g| g + 1);
        self.generation.insert(partition, gen_);
        self.positions.insert(partition, offset);
        self.fetched.insert(partition, offset);
        self.buffered.retain(|r| r.partition != partition);
        let task = tokio::spawn(fetch_loop(
            self.router.clone(),
            self.topic.clone(),
            partition,
            offset,
            self.config.fetch_bytes_max,
            gen_,
            self.tx.clone(),
        ));
        self.tasks.insert(partition, task);
    }

    /// The assigned partitions and their next offsets.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    /// Moves a partition's position. An offset outside the readable range
    /// is refused with [`ClientError::OffsetOutOfRange`].
    pub async fn seek(&mut self, partition: u32, to: Seek) -> Result<u64> {
        if !self.positions.contains_key(&partition) {
            return Err(ClientError::Invalid(format!(
                "partition {partition} is not assigned"
            )));
        }
        let offset = match to {
            Seek::Offset(o) => {
                let r = self
                    .admin
                    .list_offsets(&self.topic, partition, OffsetSpec::Earliest)
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
                self.admin
                    .list_offsets(&self.topic, partition, OffsetSpec::Timestamp(t))
                    .await?
                    .offset
            }
            Seek::Earliest => {
                self.admin
                    .list_offsets(&self.topic, partition, OffsetSpec::Earliest)
                    .await?
                    .offset
            }
            Seek::Latest => {
                self.admin
                    .list_offsets(&self.topic, partition, OffsetSpec::Latest)
                    .await?
                    .offset
            }
        };
        self.start(partition, offset);
        Ok(offset)
    }

    /// Waits up to `timeout` for records; returns those available (possibly
    /// none), at most `max_poll_records`. Records of one partition come in
    /// offset order, each once.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let max = self.config.max_poll_records.max(1);
        let mut out = Vec::new();
        loop {
            while out.len() < max {
                let Some(r) = self.buffered.pop_front() else {
                    break;
                };
                self.positions.insert(r.partition, r.offset + 1);
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
            let (partition, gen_, r) = msg;
            if self.generation.get(&partition) != Some(&gen_) {
                continue; // from before a seek
            }
            let resp = match r {
                Ok(resp) => resp,
                Err(e) => {
                    self.tasks.remove(&partition);
                    if out.is_empty() {
                        return Err(e);
                    }
                    self.failed = Some(e);
                    return Ok(out);
                }
            };
            let Some(mut next) = self.fetched.get(&partition).copied() else {
                continue;
            };
            for b in resp.batches {
                let records = decode_records(b.batch, &BatchLimits::UNLIMITED).map_err(|e| {
                    ClientError::Batch(format!(
                        "{}/{partition} at offset {}: {e}",
                        self.topic, b.base_offset
                    ))
                })?;
                for (i, r) in records.into_iter().enumerate() {
                    let offset = b.base_offset + i as u64;
                    if offset < next {
                        continue;
                    }
                    if offset != next {
                        return Err(ClientError::Batch(format!(
                            "{}/{partition}: expected offset {next}, got {offset}",
                            self.topic
                        )));
                    }
                    next = offset + 1;
                    self.buffered.push_back(ConsumerRecord {
                        topic: self.topic.clone(),
                        partition,
                        offset,
                        timestamp_ms: r.timestamp_ms,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    });
                }
            }
            self.fetched.insert(partition, next);
        }
    }

    /// Commits the current positions for the group.
    pub async fn commit(&self) -> Result<()> {
        let group = self
            .config
            .group
            .as_deref()
            .ok_or_else(|| ClientError::Invalid("commit needs a group".into()))?;
        let offsets: Vec<(u32, u64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        self.admin.commit(group, &self.topic, &offsets).await
    }
}

async fn fetch_loop(
    router: Router,
    topic: String,
    partition: u32,
    mut offset: u64,
    max_bytes: u32,
    gen_: u64,
    tx: mpsc::Sender<Delivered>,
) {
    // Failures since the last message, for the backoff.
    let mut failures = 0;
    let mut hops = 0;
    let mut addr = router.bootstrap().to_owned();
    loop {
        let client = match router.client(&addr) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send((partition, gen_, Err(e))).await;
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
                            if tx.send((partition, gen_, Ok(resp))).await.is_err() {
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
            let _ = tx.send((partition, gen_, Err(err))).await;
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
