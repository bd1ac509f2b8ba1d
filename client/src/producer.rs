//! `Producer`: batches records per partition by size and linger time,
//! compresses (LZ4) and checksums each batch, keeps a bounded number of
//! bytes in flight (sending waits when the budget is used up), and retries
//! with jittered exponential backoff without ever duplicating: every batch carries
//! an idempotent-producer id, epoch and sequence, and the broker answers a
//! retried batch with the original offsets.
//!
//! Each partition has one worker task that owns its batches: it sends them
//! in sequence order on one ordered produce stream, several in flight (see
//! `MAX_IN_FLIGHT_PER_PARTITION`), and on a failure resends the failed batch
//! and every later one, in order, after a backoff. A batch the broker rejects for good (too large, unknown
//! topic, …) fails its records; the worker then takes a new producer id so
//! the batches after it are not stuck behind the sequence gap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::ErrorCode;
use bytes::Bytes;
use strata_proto::batch::{Compression, ProducerInfo, Record, encode_batch};
use strata_proto::partitioner::partition_for_key;
use strata_proto::pb::{self, strata_client::StrataClient};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::admin::{Router, connect};
use crate::convert;
use crate::error::{ClientError, Result};
use crate::retry::Backoff;
pub use crate::types::Acks;

/// Batches in flight per partition. They travel on one ordered
/// `ProduceStream`, which the broker appends and answers in order (separate
/// unary calls ride concurrent HTTP/2 streams that may be handled out of
/// order and would break the per-producer sequence). Must not exceed the
/// broker's deduplication window (16 batches per producer): a resent batch
/// older than the window could not be recognised as a duplicate.
const MAX_IN_FLIGHT_PER_PARTITION: usize = 8;

/// Producer settings; the defaults suit throughput with bounded latency.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// A batch is sent once its records reach this size. Default 256 KiB.
    pub batch_bytes_max: usize,
    /// A batch waits at most this long for more records. Default 5 ms.
    pub linger: Duration,
    /// Batch compression. Default LZ4.
    pub compression: Compression,
    /// Acknowledgement level. Default all.
    pub acks: Acks,
    /// Bytes of records buffered or in flight; `send` waits beyond it. Default 64 MiB.
    pub buffer_bytes_max: usize,
    /// Attempts per batch before its records fail. Default 10.
    pub attempts_max: u32,
    /// Base of the retry backoff: the delay before a batch's n-th retry is
    /// drawn uniformly from `[0, retry_backoff · 2^n]`, the bound capped at
    /// `retry_backoff_max`. Default 50 ms.
    pub retry_backoff: Duration,
    /// Largest bound of a retry delay. Default 2 s.
    pub retry_backoff_max: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes_max: 256 << 10,
            linger: Duration::from_millis(5),
            compression: Compression::Lz4,
            acks: Acks::All,
            buffer_bytes_max: 64 << 20,
            attempts_max: 10,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(2),
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition.
    pub partition: u32,
    /// Offset; `None` with `acks=none`.
    pub offset: Option<u64>,
}

/// Resolves when the record is acknowledged (or has failed for good).
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<RecordMetadata>>);

impl std::future::Future for Delivery {
    type Output = Result<RecordMetadata>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

struct Pending {
    record: Record,
    done: oneshot::Sender<Result<RecordMetadata>>,
    _permit: OwnedSemaphorePermit,
}

enum Msg {
    Record(Pending, usize),
    Flush(oneshot::Sender<()>),
}

struct Batch {
    records: Vec<Pending>,
    bytes: usize,
    /// Sequence of the first record once assigned (at first send).
    sequence: Option<u32>,
    attempts: u32,
}

#[derive(Clone)]
struct TopicHandle {
    partitions: u32,
    workers: Vec<mpsc::Sender<Msg>>,
}

/// Publishes records to Strata.
#[derive(Clone)]
pub struct Producer {
    client: StrataClient<Channel>,
    router: Router,
    config: Arc<ProducerConfig>,
    budget: Arc<Semaphore>,
    topics: Arc<Mutex<HashMap<String, TopicHandle>>>,
    round_robin: Arc<AtomicU32>,
    /// The producer id every partition starts with, taken once (one
    /// `InitProducer` per producer, not per partition: sequences are per
    /// partition, so one id serves them all). A partition whose batches
    /// failed for good moves to an id of its own.
    shared_id: Arc<tokio::sync::OnceCell<(u64, u16)>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn record_size(r: &Record) -> usize {
    18 + r.key.as_ref().map_or(0, |k| k.len())
        + r.value.len()
        + r.headers
            .iter()
            .map(|h| 6 + h.key.len() + h.value.len())
            .sum::<usize>()
}

impl Producer {
    /// Connects to a broker.
    pub async fn connect(addr: &str, config: ProducerConfig) -> Result<Self> {
        if config.batch_bytes_max == 0 || config.attempts_max == 0 {
            return Err(ClientError::Invalid(
                "batch_bytes_max and attempts_max must be positive".into(),
            ));
        }
        let client = connect(addr).await?;
        let router = Router::new(addr, client.clone());
        router.refresh().await;
        Ok(Producer {
            client,
            router,
            budget: Arc::new(Semaphore::new(config.buffer_bytes_max)),
            config: Arc::new(config),
            topics: Arc::new(Mutex::new(HashMap::new())),
            round_robin: Arc::new(AtomicU32::new(0)),
            shared_id: Arc::new(tokio::sync::OnceCell::new()),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        })
    }

    async fn topic(&self, topic: &str) -> Result<TopicHandle> {
        let mut topics = self.topics.lock().await;
        if let Some(t) = topics.get(topic) {
            return Ok(t.clone());
        }
        let d = self
            .client
            .clone()
            .describe_topic(pb::DescribeTopicRequest {
                name: topic.to_owned(),
            })
            .await?
            .into_inner();
        let mut tasks = self.tasks.lock().await;
        let workers = (0..d.partitions)
            .map(|p| {
                let (tx, rx) = mpsc::channel(1024);
                let w = Worker {
                    client: self.client.clone(),
                    addr: self.router.bootstrap().to_owned(),
                    router: self.router.clone(),
                    config: self.config.clone(),
                    topic: topic.to_owned(),
                    partition: p,
                    producer: None,
                    shared_id: Some(self.shared_id.clone()),
                    next_sequence: 0,
                };
                tasks.spawn(w.run(rx));
                tx
            })
            .collect();
        let h = TopicHandle {
            partitions: d.partitions,
            workers,
        };
        topics.insert(topic.to_owned(), h.clone());
        Ok(h)
    }

    /// Queues a record. Waits while the buffer is full (backpressure); the
    /// returned [`Delivery`] resolves once the record is acknowledged. The
    /// partition is `partition` if given, else the key's hash, else round
    /// robin.
    pub async fn send(
        &self,
        topic: &str,
        record: Record,
        partition: Option<u32>,
    ) -> Result<Delivery> {
        let t = self.topic(topic).await?;
        let p = match (partition, &record.key) {
            (Some(p), _) if p >= t.partitions => {
                return Err(ClientError::Invalid(format!(
                    "topic {topic} has {} partitions, not {}",
                    t.partitions,
                    p + 1
                )));
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, t.partitions),
            (None, None) => self.round_robin.fetch_add(1, Ordering::Relaxed) % t.partitions,
        };
        let size = record_size(&record);
        if size > self.config.buffer_bytes_max || size > u32::MAX as usize {
            return Err(ClientError::Invalid(format!(
                "record of {size} bytes exceeds buffer_bytes_max"
            )));
        }
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (done, rx) = oneshot::channel();
        t.workers[p as usize]
            .send(Msg::Record(
                Pending {
                    record,
                    done,
                    _permit: permit,
                },
                size,
            ))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Delivery(rx))
    }

    /// Sends and waits for the acknowledgement.
    pub async fn send_and_wait(
        &self,
        topic: &str,
        record: Record,
        partition: Option<u32>,
    ) -> Result<RecordMetadata> {
        self.send(topic, record, partition).await?.await
    }

    /// Sends every buffered record now and waits until all are acknowledged
    /// or failed.
    pub async fn flush(&self) -> Result<()> {
        let topics: Vec<TopicHandle> = self.topics.lock().await.values().cloned().collect();
        let mut waits = Vec::new();
        for t in topics {
            for w in t.workers {
                let (tx, rx) = oneshot::channel();
                if w.send(Msg::Flush(tx)).await.is_ok() {
                    waits.push(rx);
                }
            }
        }
        for w in waits {
            let _ = w.await;
        }
        Ok(())
    }

    /// Flushes, then stops the partition workers.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        self.topics.lock().await.clear();
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

struct Worker {
    /// The broker this partition's batches go to (its leader, as far as
    /// the worker knows).
    client: StrataClient<Channel>,
    addr: String,
    router: Router,
    config: Arc<ProducerConfig>,
    topic: String,
    partition: u32,
    producer: Option<(u64, u16)>,
    /// The producer's shared id, until this partition needs its own.
    shared_id: Option<Arc<tokio::sync::OnceCell<(u64, u16)>>>,
    next_sequence: u32,
}

/// An open `ProduceStream`: requests go in order, responses come back in order.
struct Session {
    tx: mpsc::Sender<pb::ProduceRequest>,
    rx: tonic::Streaming<pb::ProduceResponse>,
}

impl Worker {
    /// After a failure, moves to the partition's leader (hinted) or to the
    /// next known broker.
    fn reroute(&mut self, err: &ClientError) {
        if let Some(next) = self.router.next(&self.addr, err)
            && next != self.addr
            && let Ok(c) = self.router.client(&next)
        {
            tracing::debug!(topic = %self.topic, partition = self.partition, from = %self.addr, to = %next, "moving to another broker");
            self.client = c;
            self.addr = next;
        }
    }

    async fn open_session(&mut self) -> Result<Session> {
        tracing::trace!(broker = %self.addr, "opening a produce stream");
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT_PER_PARTITION * 2);
        let responses = self
            .client
            .clone()
            .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Session { tx, rx: responses })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut open: Option<Batch> = None;
        let mut linger_deadline = Instant::now();
        let mut queued: VecDeque<Batch> = VecDeque::new();
        let mut in_flight: VecDeque<Batch> = VecDeque::new();
        let mut session: Option<Session> = None;
        let mut retry: VecDeque<Batch> = VecDeque::new();
        let mut retry_at: Option<Instant> = None;
        let mut reset_producer = false;
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut inbox_open = true;
        loop {
            let idle =
                open.is_none() && queued.is_empty() && retry.is_empty() && in_flight.is_empty();
            if idle {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if !inbox_open {
                    return;
                }
            }
            if reset_producer && in_flight.is_empty() {
                // Every result of the round is in: renumber what is left
                // under a new producer id, retries first, in order.
                reset_producer = false;
                self.producer = None;
                self.shared_id = None;
                self.next_sequence = 0;
                for b in retry.iter_mut().chain(queued.iter_mut()) {
                    b.sequence = None;
                }
            }
            // Launch what the window allows, in order: retries first, and
            // retries only once nothing else is in flight.
            let can_launch = retry_at.is_none_or(|t| Instant::now() >= t)
                && (retry.is_empty() || in_flight.is_empty());
            while can_launch && in_flight.len() < MAX_IN_FLIGHT_PER_PARTITION {
                let Some(mut batch) = retry.pop_front().or_else(|| queued.pop_front()) else {
                    break;
                };
                retry_at = None;
                // Batches that closed (by size or linger) while the window
                // was full, and were never sent, travel together.
                if batch.sequence.is_none() {
                    while let Some(next) = queued.front() {
                        if next.sequence.is_some()
                            || batch.bytes + next.bytes > self.config.batch_bytes_max
                        {
                            break;
                        }
                        let Some(next) = queued.pop_front() else {
                            break;
                        };
                        batch.bytes += next.bytes;
                        batch.records.extend(next.records);
                    }
                }
                let sent = async {
                    let bytes = self.prepare(&mut batch).await?;
                    if session.is_none() {
                        session = Some(self.open_session().await?);
                    }
                    let req = pb::ProduceRequest {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        batch: bytes,
                        acks: convert::acks_to_pb(self.config.acks) as i32,
                    };
                    let Some(s) = session.as_ref() else {
                        unreachable!("opened above")
                    };
                    s.tx.send(req)
                        .await
                        .map_err(|_| ClientError::Unavailable("produce stream closed".into()))
                }
                .await;
                tracing::trace!(broker = %self.addr, sequence = ?batch.sequence, ok = sent.is_ok(), "batch sent");
                match sent {
                    Ok(()) => in_flight.push_back(batch),
                    Err(_) if !in_flight.is_empty() => {
                        // The stream broke with batches ahead of this one in
                        // flight: queue it behind them; the stream's error
                        // moves them all, in order, to the retries.
                        in_flight.push_back(batch);
                        break;
                    }
                    Err(e) if e.is_retriable() && batch.attempts < self.config.attempts_max => {
                        batch.attempts += 1;
                        session = None;
                        self.reroute(&e);
                        retry.push_front(batch);
                        retry_at = Some(Instant::now() + self.backoff(batch_attempts(&retry)));
                        break;
                    }
                    Err(e) => {
                        fail(batch, &e);
                        reset_producer = true;
                    }
                }
            }
            let linger = open.is_some();
            let waiting = !in_flight.is_empty() && session.is_some();
            tokio::select! {
                msg = rx.recv(), if inbox_open => match msg {
                    Some(Msg::Record(p, size)) => {
                        let b = open.get_or_insert_with(|| {
                            linger_deadline = Instant::now() + self.config.linger;
                            Batch { records: Vec::new(), bytes: 0, sequence: None, attempts: 0 }
                        });
                        b.records.push(p);
                        b.bytes += size;
                        if b.bytes >= self.config.batch_bytes_max || b.records.len() >= 1 << 20 {
                            queued.extend(open.take());
                        }
                    }
                    Some(Msg::Flush(f)) => {
                        queued.extend(open.take());
                        flushes.push(f);
                    }
                    None => {
                        inbox_open = false;
                        queued.extend(open.take());
                    }
                },
                _ = tokio::time::sleep_until(linger_deadline), if linger => {
                    queued.extend(open.take());
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() && in_flight.is_empty() => {}
                resp = async { session.as_mut().map(|s| s.rx.message()) .unwrap_or_else(|| unreachable!()).await }, if waiting => {
                    let r = match resp {
                        Ok(Some(r)) => Ok(r),
                        Ok(None) => Err(ClientError::Unavailable("produce stream ended".into())),
                        Err(status) => Err(ClientError::from(status)),
                    };
                    let failed = r.is_err();
                    if let Err(e) = &r {
                        self.reroute(e);
                    }
                    let again = in_flight
                        .pop_front()
                        .and_then(|b| self.complete(b, r, &mut retry_at, &mut reset_producer));
                    if failed {
                        // The stream is gone: what was in flight behind the
                        // failure was not appended. It was sent before
                        // anything still waiting in `retry` (retries launch
                        // from the front), so it goes first, in order: the
                        // broker must see sequences in order.
                        session = None;
                        let mut redo: VecDeque<Batch> =
                            again.into_iter().chain(in_flight.drain(..)).collect();
                        redo.extend(retry.drain(..));
                        retry = redo;
                    } else if let Some(b) = again {
                        retry.push_front(b);
                    }
                }
            }
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        Backoff::new(self.config.retry_backoff, self.config.retry_backoff_max).delay(attempts)
    }

    /// Encodes the batch with its producer id and sequence (assigned on the
    /// first attempt and kept for retries, so the broker can deduplicate).
    async fn prepare(&mut self, batch: &mut Batch) -> Result<Bytes> {
        let (pid, epoch) = match self.producer {
            Some(p) => p,
            None => {
                let client = self.client.clone();
                let init = || async move {
                    let r = client
                        .clone()
                        .init_producer(pb::InitProducerRequest {})
                        .await?
                        .into_inner();
                    Ok::<_, ClientError>((r.producer_id, r.producer_epoch as u16))
                };
                let p = match &self.shared_id {
                    Some(shared) => *shared.get_or_try_init(init).await?,
                    None => init().await?,
                };
                self.producer = Some(p);
                p
            }
        };
        let sequence = *batch.sequence.get_or_insert_with(|| {
            let s = self.next_sequence;
            self.next_sequence = self.next_sequence.wrapping_add(batch.records.len() as u32);
            s
        });
        let records: Vec<Record> = batch.records.iter().map(|p| p.record.clone()).collect();
        let mut out = Vec::with_capacity(batch.bytes + 64);
        encode_batch(
            &records,
            self.config.compression,
            Some(ProducerInfo {
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: sequence,
            }),
            &mut out,
        )
        .map_err(|e| ClientError::Batch(e.to_string()))?;
        Ok(Bytes::from(out))
    }

    /// Settles the oldest batch in flight with its response. Returns the
    /// batch if it is to be sent again (it goes before everything else).
    fn complete(
        &mut self,
        mut batch: Batch,
        r: Result<pb::ProduceResponse>,
        retry_at: &mut Option<Instant>,
        reset_producer: &mut bool,
    ) -> Option<Batch> {
        match r {
            Ok(resp) => {
                for (i, p) in batch.records.drain(..).enumerate() {
                    let offset =
                        (self.config.acks != Acks::None).then_some(resp.base_offset + i as u64);
                    let _ = p.done.send(Ok(RecordMetadata {
                        partition: self.partition,
                        offset,
                    }));
                }
                None
            }
            // Behind a batch that failed for good, a sequence gap is
            // expected: the batch is renumbered under a new producer id.
            Err(ClientError::Broker {
                code: ErrorCode::OutOfOrderSequence,
                ..
            }) if *reset_producer && batch.attempts < self.config.attempts_max => {
                batch.attempts += 1;
                Some(batch)
            }
            Err(e) if e.is_retriable() && batch.attempts < self.config.attempts_max => {
                batch.attempts += 1;
                // A hint to another broker is followed at once (the worker
                // moved there in `reroute`); other failures back off.
                let hinted =
                    matches!(&e, ClientError::NotLeader { leader: Some(l), .. } if *l == self.addr);
                if !(hinted && batch.attempts <= 2) {
                    *retry_at = Some(Instant::now() + self.backoff(batch.attempts));
                }
                tracing::debug!(topic = %self.topic, partition = self.partition, broker = %self.addr, sequence = ?batch.sequence, attempt = batch.attempts, error = %e, "retrying batch");
                Some(batch)
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, sequence = ?batch.sequence, error = %e, "batch failed");
                fail(batch, &e);
                // Later batches carry sequences after the failed one; a new
                // producer id lets them through.
                *reset_producer = true;
                None
            }
        }
    }
}

fn batch_attempts(retry: &VecDeque<Batch>) -> u32 {
    retry.front().map_or(1, |b| b.attempts)
}

fn fail(batch: Batch, e: &ClientError) {
    for p in batch.records {
        let err = match e {
            ClientError::Broker { code, message } => ClientError::Broker {
                code: *code,
                message: message.clone(),
            },
            ClientError::UnknownTopic(m) => ClientError::UnknownTopic(m.clone()),
            other => ClientError::Unavailable(other.to_string()),
        };
        let _ = p.done.send(Err(err));
    }
}
