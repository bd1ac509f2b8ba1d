//! `Producer`: batches records per partition by size and linger time,
//! compresses (LZ4) and checksums each batch, keeps a bounded number of
//! bytes in flight (sending waits when the budget is used up), and retries
//! with jittered exponential backoff without ever duplicating: every batch carries
//! an idempotent-producer id, epoch and sequence, and the broker answers a
//! retried batch with the original offsets.
//!
//! Each partition has one worker task that owns its batches: it sends them
//! in sequence order, several in flight (see `MAX_IN_FLIGHT_PER_PARTITION`),
//! and on a failure resends the failed batch and every later one, in order,
//! after a backoff. Workers hand their batches to one multiplexer per
//! broker, which sends whatever batches of any partitions are waiting in
//! one message of that broker's ordered `ProduceBatches` stream, so
//! spreading records over many partitions does not multiply messages and
//! round trips. A batch the broker rejects for good (too large, unknown
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
/// `ProduceBatches` stream, which the broker appends in order (separate
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
    /// How long a record may take from `send` to its acknowledgement,
    /// retries included; past it the record fails with
    /// [`ClientError::DeliveryTimedOut`]. Retries are bounded by this, not
    /// by a count, so a partition that regains its quorum or its leader
    /// within it loses and duplicates nothing. Default 120 s (Kafka's
    /// `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long a request to a broker may go unanswered before the
    /// producer gives up on that broker (its batches are retried, at the
    /// partition's leader as then known). Default 10 s.
    pub request_timeout: Duration,
    /// Base of the retry backoff: the delay before a batch's n-th retry is
    /// drawn uniformly from `[0, retry_backoff · 2^n]`, the bound capped at
    /// `retry_backoff_max`. Default 50 ms.
    pub retry_backoff: Duration,
    /// Largest bound of a retry delay. Default 1 s (Kafka's
    /// `retry.backoff.max.ms`).
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
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
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
    /// When its first record was sent: the delivery timeout runs from here.
    created: Instant,
    /// It reached a broker at least once, so it may have been written even
    /// if no answer said so.
    sent: bool,
}

#[derive(Clone)]
struct TopicHandle {
    partitions: u32,
    /// Shared: a handle is cloned for every record sent, so cloning must
    /// not cost one sender per partition.
    workers: Arc<[mpsc::Sender<Msg>]>,
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
    /// One `ProduceBatches` stream per broker, shared by the partitions.
    muxes: Muxes,
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
        if config.batch_bytes_max == 0
            || config.delivery_timeout.is_zero()
            || config.request_timeout.is_zero()
        {
            return Err(ClientError::Invalid(
                "batch_bytes_max, delivery_timeout and request_timeout must be positive".into(),
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
            muxes: Muxes::default(),
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
                    muxes: self.muxes.clone(),
                    next_sequence: 0,
                    no_quorum: None,
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
            for w in t.workers.iter() {
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
    /// The producer's per-broker multiplexers.
    muxes: Muxes,
    next_sequence: u32,
    /// The broker that last answered NOT_ENOUGH_REPLICAS, and when.
    no_quorum: Option<(String, Instant)>,
}

/// How long a broker that answered NOT_ENOUGH_REPLICAS is not returned to
/// on another broker's hint (about the time the other side of a cut takes
/// to elect a leader).
const NO_QUORUM_SHUN: Duration = Duration::from_secs(2);

/// One batch for a broker's multiplexer, with where its answer goes.
type MuxItem = (
    pb::ProduceRequest,
    oneshot::Sender<std::result::Result<pb::ProduceResponse, tonic::Status>>,
);

/// A partition's view of its broker's produce multiplexer: batches go out
/// in the order sent, and this partition's answers come back in that order.
struct Session {
    tx: mpsc::Sender<MuxItem>,
    pending: VecDeque<oneshot::Receiver<std::result::Result<pb::ProduceResponse, tonic::Status>>>,
}

impl Session {
    async fn send(&mut self, req: pb::ProduceRequest) -> Result<()> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send((req, done))
            .await
            .map_err(|_| ClientError::Unavailable("produce stream closed".into()))?;
        self.pending.push_back(answer);
        Ok(())
    }

    /// The answer to the oldest batch sent (cancel-safe: it stays the
    /// oldest until its answer is taken).
    async fn message(&mut self) -> std::result::Result<Option<pb::ProduceResponse>, tonic::Status> {
        let Some(front) = self.pending.front_mut() else {
            return Ok(None);
        };
        let r = front.await;
        self.pending.pop_front();
        match r {
            Ok(Ok(resp)) => Ok(Some(resp)),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::unavailable("produce stream closed")),
        }
    }
}

/// Batches of one request to a broker, at most.
const MUX_BATCHES_MAX: usize = 1024;
/// Bytes of one request to a broker, at most (a single larger batch goes
/// alone).
const MUX_BYTES_MAX: usize = 4 << 20;
/// Requests in flight on a broker's stream: while they are, batches of
/// every partition gather into the next one.
const MUX_REQUESTS_IN_FLIGHT: usize = 4;

/// The producer's multiplexers, one per broker address: every partition
/// worker sending to a broker hands its batches to that broker's one
/// `ProduceBatches` stream, so batches of many partitions share a message
/// and a round trip.
#[derive(Clone, Default)]
struct Muxes(Arc<parking_lot::Mutex<HashMap<String, mpsc::Sender<MuxItem>>>>);

impl Muxes {
    /// The multiplexer for `addr`, started if there is none (or it ended).
    fn get(
        &self,
        addr: &str,
        client: &StrataClient<Channel>,
        request_timeout: Duration,
    ) -> mpsc::Sender<MuxItem> {
        let mut m = self.0.lock();
        if let Some(tx) = m.get(addr)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        tracing::trace!(broker = %addr, "opening a produce stream");
        let (tx, rx) = mpsc::channel(MUX_BATCHES_MAX);
        tokio::spawn(run_mux(client.clone(), rx, request_timeout));
        m.insert(addr.to_owned(), tx.clone());
        tx
    }
}

/// Answers a batch from its result in a `ProduceBatches` response.
fn answer(r: pb::ProduceResult) -> std::result::Result<pb::ProduceResponse, tonic::Status> {
    match r.outcome {
        Some(pb::produce_result::Outcome::Ok(ok)) => Ok(ok),
        Some(pb::produce_result::Outcome::Error(d)) => {
            let details =
                strata_proto::status::encode_details(tonic::Code::Aborted as i32, &d.message, &d);
            Err(tonic::Status::with_details(
                tonic::Code::Aborted,
                d.message.clone(),
                details.into(),
            ))
        }
        None => Err(tonic::Status::internal(
            "a produce result without an outcome",
        )),
    }
}

/// Runs one broker's `ProduceBatches` stream: takes whatever batches are
/// waiting (up to a request's limits) whenever fewer than
/// `MUX_REQUESTS_IN_FLIGHT` requests are out, and hands each batch its
/// result. Ends when every sender is gone and nothing is out, or when the
/// stream breaks (every batch out or waiting then gets the error, and the
/// next `Muxes::get` starts a new stream). A request unanswered for
/// `request_timeout` breaks the stream the same way (a broker that is
/// stopped, overloaded or cut off from its peers without noticing).
async fn run_mux(
    mut client: StrataClient<Channel>,
    mut rx: mpsc::Receiver<MuxItem>,
    request_timeout: Duration,
) {
    let (req_tx, req_rx) = mpsc::channel::<pb::ProduceBatchesRequest>(MUX_REQUESTS_IN_FLIGHT);
    let broken = |rx: &mut mpsc::Receiver<MuxItem>, status: &tonic::Status| {
        rx.close();
        while let Ok((_, done)) = rx.try_recv() {
            let _ = done.send(Err(status.clone()));
        }
    };
    let opened = tokio::time::timeout(
        request_timeout,
        client.produce_batches(tokio_stream::wrappers::ReceiverStream::new(req_rx)),
    )
    .await
    .unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!(
            "the broker did not open a produce stream within {request_timeout:?}"
        )))
    });
    let mut responses = match opened {
        Ok(r) => r.into_inner(),
        Err(status) => {
            broken(&mut rx, &status);
            return;
        }
    };
    type Done = oneshot::Sender<std::result::Result<pb::ProduceResponse, tonic::Status>>;
    // Requests out, oldest first: when each was sent, and its batches.
    let mut out: VecDeque<(Instant, Vec<Done>)> = VecDeque::new();
    let mut open = true;
    loop {
        if !open && out.is_empty() {
            return;
        }
        tokio::select! {
            first = rx.recv(), if open && out.len() < MUX_REQUESTS_IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut bytes = first.0.batch.len();
                let mut items = vec![first];
                while items.len() < MUX_BATCHES_MAX && bytes < MUX_BYTES_MAX {
                    match rx.try_recv() {
                        Ok(item) => {
                            bytes += item.0.batch.len();
                            items.push(item);
                        }
                        Err(_) => break,
                    }
                }
                let (batches, dones): (Vec<_>, Vec<_>) = items.into_iter().unzip();
                if req_tx.send(pb::ProduceBatchesRequest { batches }).await.is_err() {
                    let status = tonic::Status::unavailable("produce stream closed");
                    for d in dones.into_iter().chain(out.drain(..).flat_map(|(_, d)| d)) {
                        let _ = d.send(Err(status.clone()));
                    }
                    broken(&mut rx, &status);
                    return;
                }
                out.push_back((Instant::now(), dones));
            }
            _ = tokio::time::sleep_until(out.front().map_or_else(Instant::now, |(at, _)| *at + request_timeout)), if !out.is_empty() => {
                let status = tonic::Status::deadline_exceeded(format!(
                    "no answer from the broker within {request_timeout:?}"
                ));
                for d in out.drain(..).flat_map(|(_, d)| d) {
                    let _ = d.send(Err(status.clone()));
                }
                broken(&mut rx, &status);
                return;
            }
            resp = responses.message(), if !out.is_empty() => {
                let status = match resp {
                    Ok(Some(r)) => {
                        let dones = out.pop_front().map(|(_, d)| d).unwrap_or_default();
                        if r.results.len() == dones.len() {
                            for (d, result) in dones.into_iter().zip(r.results) {
                                let _ = d.send(answer(result));
                            }
                            continue;
                        }
                        tonic::Status::internal(format!(
                            "the broker answered {} results for {} batches",
                            r.results.len(),
                            dones.len()
                        ))
                    }
                    Ok(None) => tonic::Status::unavailable("produce stream ended"),
                    Err(status) => status,
                };
                for d in out.drain(..).flat_map(|(_, d)| d) {
                    let _ = d.send(Err(status.clone()));
                }
                broken(&mut rx, &status);
                return;
            }
        }
    }
}

impl Worker {
    /// After a failure, moves to the partition's leader (hinted) or to the
    /// next known broker. A hint back to a broker that just answered
    /// NOT_ENOUGH_REPLICAS is not followed for [`NO_QUORUM_SHUN`]: the
    /// hinting broker has not noticed the cut yet, and the other side is
    /// electing; the next other broker is tried instead.
    fn reroute(&mut self, err: &ClientError) {
        if err.code() == Some(ErrorCode::NotEnoughReplicas) {
            self.no_quorum = Some((self.addr.clone(), Instant::now()));
        }
        let mut next = self.router.next(&self.addr, err);
        if let (Some(n), Some((cut_off, at))) = (&next, &self.no_quorum)
            && n == cut_off
            && at.elapsed() < NO_QUORUM_SHUN
        {
            next = self.router.next_avoiding(&self.addr, cut_off);
        }
        if let Some(next) = next
            && next != self.addr
            && let Ok(c) = self.router.client(&next)
        {
            tracing::debug!(topic = %self.topic, partition = self.partition, from = %self.addr, to = %next, "moving to another broker");
            self.client = c;
            self.addr = next;
        }
    }

    async fn open_session(&mut self) -> Result<Session> {
        Ok(Session {
            tx: self
                .muxes
                .get(&self.addr, &self.client, self.config.request_timeout),
            pending: VecDeque::new(),
        })
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
        // Set when a batch gave up with an unknown outcome: the batches
        // sent after it may be written too.
        let mut unknown: Option<ClientError> = None;
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
                if let Some(e) = unknown.take() {
                    // A batch sent after one whose outcome is unknown may
                    // have been written as well: it fails the same way and
                    // is never sent again under a new id (that would
                    // duplicate it). Batches never sent are renumbered.
                    let (sent, unsent): (VecDeque<Batch>, VecDeque<Batch>) = retry
                        .drain(..)
                        .chain(queued.drain(..))
                        .partition(|b| b.sent);
                    for b in sent {
                        fail(b, &e);
                    }
                    queued = unsent;
                }
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
                // While a batch is in flight, less than a full batch waits:
                // the batches closing meanwhile travel together once the
                // answer is in, so a partition's batches grow with its rate
                // (many partitions sharing one producer each get a trickle)
                // instead of leaving at every linger.
                let small =
                    queued.iter().map(|b| b.bytes).sum::<usize>() < self.config.batch_bytes_max;
                if retry.is_empty() && !in_flight.is_empty() && small && inbox_open {
                    break;
                }
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
                    let Some(s) = session.as_mut() else {
                        unreachable!("opened above")
                    };
                    s.send(req).await
                }
                .await;
                tracing::trace!(broker = %self.addr, sequence = ?batch.sequence, ok = sent.is_ok(), "batch sent");
                match sent {
                    Ok(()) => {
                        batch.sent = true;
                        in_flight.push_back(batch);
                    }
                    Err(_) if !in_flight.is_empty() => {
                        // The stream broke with batches ahead of this one in
                        // flight: queue it behind them; the stream's error
                        // moves them all, in order, to the retries.
                        in_flight.push_back(batch);
                        break;
                    }
                    Err(e) if e.is_retriable() && !self.expired(&batch) => {
                        batch.attempts += 1;
                        session = None;
                        self.reroute(&e);
                        retry.push_front(batch);
                        retry_at = Some(Instant::now() + self.backoff(batch_attempts(&retry)));
                        break;
                    }
                    Err(e) => {
                        self.give_up(batch, e, &mut unknown);
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
                            Batch {
                                records: Vec::new(),
                                bytes: 0,
                                sequence: None,
                                attempts: 0,
                                created: Instant::now(),
                                sent: false,
                            }
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
                resp = async { session.as_mut().map(|s| s.message()) .unwrap_or_else(|| unreachable!()).await }, if waiting => {
                    let r = match resp {
                        Ok(Some(r)) => Ok(r),
                        Ok(None) => Err(ClientError::Unavailable("produce stream ended".into())),
                        Err(status) => Err(ClientError::from(status)),
                    };
                    let failed = r.is_err();
                    if let Err(e) = &r {
                        self.reroute(e);
                    }
                    let again = in_flight.pop_front().and_then(|b| {
                        self.complete(b, r, &mut retry_at, &mut reset_producer, &mut unknown)
                    });
                    if failed {
                        // The stream is gone: what was in flight behind the
                        // failure was not appended; it all goes again.
                        session = None;
                        for b in again.into_iter().chain(in_flight.drain(..)) {
                            requeue(&mut retry, b);
                        }
                    } else if let Some(b) = again {
                        requeue(&mut retry, b);
                    }
                }
            }
        }
    }

    /// Whether the batch is past its delivery timeout.
    fn expired(&self, batch: &Batch) -> bool {
        batch.created.elapsed() >= self.config.delivery_timeout
    }

    /// Fails a batch for good after `e`. A retriable error means it ran out
    /// of time: if it ever reached a broker its outcome is unknown, and so
    /// is that of every batch sent after it (`unknown`).
    fn give_up(&self, batch: Batch, e: ClientError, unknown: &mut Option<ClientError>) {
        if !e.is_retriable() {
            tracing::warn!(topic = %self.topic, partition = self.partition, sequence = ?batch.sequence, error = %e, "batch failed");
            fail(batch, &e);
            return;
        }
        let e = ClientError::DeliveryTimedOut {
            after: self.config.delivery_timeout,
            attempts: batch.attempts,
            outcome_unknown: batch.sent,
            last_error: e.to_string(),
        };
        tracing::warn!(topic = %self.topic, partition = self.partition, sequence = ?batch.sequence, error = %e, "batch timed out");
        if batch.sent && unknown.is_none() {
            *unknown = Some(e.clone());
        }
        fail(batch, &e);
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
                let timeout = self.config.request_timeout;
                let init = || async move {
                    let r = tokio::time::timeout(
                        timeout,
                        client.clone().init_producer(pb::InitProducerRequest {}),
                    )
                    .await
                    .map_err(|_| {
                        ClientError::Unavailable(format!(
                            "no producer id from the broker within {timeout:?}"
                        ))
                    })??
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
        unknown: &mut Option<ClientError>,
    ) -> Option<Batch> {
        match r {
            Ok(resp) => {
                for (i, p) in batch.records.drain(..).enumerate() {
                    let offset = resp.base_offset.map(|b| b + i as u64);
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
            }) if *reset_producer && !self.expired(&batch) => {
                batch.attempts += 1;
                Some(batch)
            }
            // The broker did not issue our producer id (it lost or never
            // had the key, e.g. a data directory wiped): nothing was
            // written, so the batch goes again under a new id.
            Err(ClientError::Broker {
                code: ErrorCode::UnknownProducer,
                ..
            }) if !self.expired(&batch) => {
                *reset_producer = true;
                batch.attempts += 1;
                if batch.attempts > 1 {
                    *retry_at = Some(Instant::now() + self.backoff(batch.attempts));
                }
                Some(batch)
            }
            Err(e) if e.is_retriable() && !self.expired(&batch) => {
                batch.attempts += 1;
                // A hint to another broker is followed at once (the worker
                // moved there in `reroute`), and so is a leader that lost its
                // quorum (the worker moved to the next broker, which waits
                // for the election on the other side to end and points to
                // its winner); other failures back off.
                let hinted = matches!(&e, ClientError::NotLeader { leader: Some(l), .. } if *l == self.addr)
                    || e.code() == Some(ErrorCode::NotEnoughReplicas);
                if !(hinted && batch.attempts <= 2) {
                    *retry_at = Some(Instant::now() + self.backoff(batch.attempts));
                }
                tracing::debug!(topic = %self.topic, partition = self.partition, broker = %self.addr, sequence = ?batch.sequence, attempt = batch.attempts, error = %e, "retrying batch");
                Some(batch)
            }
            Err(e) => {
                self.give_up(batch, e, unknown);
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
            e @ ClientError::DeliveryTimedOut { .. } => e.clone(),
            other => ClientError::Unavailable(other.to_string()),
        };
        let _ = p.done.send(Err(err));
    }
}

/// Puts a batch to be sent again into `retry`, which stays in sequence
/// order: the broker must see a producer's sequences in order. A retry
/// that failed again goes before the retries still waiting; batches that
/// were in flight behind one that failed go after it (several failing in
/// one window — a new leader not ready yet answering each — used to be
/// pushed to the front one by one, reversing them, and the first resent was
/// refused as out of order).
fn requeue(retry: &mut VecDeque<Batch>, b: Batch) {
    let Some(seq) = b.sequence else {
        retry.push_front(b);
        return;
    };
    // Batches without a sequence yet (renumbered after a producer reset)
    // get theirs when launched, after every numbered one.
    let after = |x: &Batch| x.sequence.is_none_or(|s| (seq.wrapping_sub(s) as i32) < 0);
    match retry.iter().position(after) {
        Some(i) => retry.insert(i, b),
        None => retry.push_back(b),
    }
}

#[cfg(test)]
mod requeue_tests {
    use super::*;

    fn batch(sequence: Option<u32>) -> Batch {
        Batch {
            records: Vec::new(),
            bytes: 0,
            sequence,
            attempts: 1,
            created: Instant::now(),
            sent: true,
        }
    }

    fn order(retry: &VecDeque<Batch>) -> Vec<Option<u32>> {
        retry.iter().map(|b| b.sequence).collect()
    }

    #[test]
    fn batches_failing_in_one_window_are_resent_in_sequence_order() {
        // Eight in flight, each answered with a retriable error in turn.
        let mut retry = VecDeque::new();
        for s in [100, 105, 110, 115] {
            requeue(&mut retry, batch(Some(s)));
        }
        assert_eq!(order(&retry), [Some(100), Some(105), Some(110), Some(115)]);
        // The front one is resent alone and fails again: still first.
        let front = retry.pop_front().unwrap();
        requeue(&mut retry, front);
        assert_eq!(order(&retry), [Some(100), Some(105), Some(110), Some(115)]);
        // Unnumbered batches stay behind numbered ones.
        let mut retry: VecDeque<Batch> = [batch(None), batch(None)].into();
        requeue(&mut retry, batch(Some(7)));
        assert_eq!(order(&retry), [Some(7), None, None]);
        // Across the sequence wrap.
        let mut retry = VecDeque::new();
        requeue(&mut retry, batch(Some(3)));
        requeue(&mut retry, batch(Some(u32::MAX - 2)));
        assert_eq!(order(&retry), [Some(u32::MAX - 2), Some(3)]);
    }
}
