//! The gRPC service: translates between prost messages and the broker
//! core. Errors become statuses only through [`BrokerError::to_status`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::pb::{self, strata_server::Strata};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::broker::{Broker, PartitionView, TopicView};
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::settings::TopicSettings;
use crate::topic::{Acks, ProduceOutcome};

/// Request metadata marking a call one node makes to another on a client's
/// behalf (it is not forwarded again).
const FORWARDED: &str = "x-strata-forwarded";

/// The gRPC service over a broker.
#[derive(Debug, Clone)]
pub struct GrpcService {
    broker: Arc<Broker>,
}

impl GrpcService {
    /// A service over `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        GrpcService { broker }
    }

    fn observe<T>(
        &self,
        api: &str,
        started: Instant,
        r: Result<T, BrokerError>,
    ) -> Result<Response<T>, Status> {
        self.broker
            .metrics()
            .request(api, &outcome_of(&r), started.elapsed());
        r.map(Response::new).map_err(|e| e.to_status())
    }

    /// A cluster node knows offsets only of the partitions it hosts: for
    /// the others, asks each one's leader (best effort, 2 s), so `describe`
    /// answers the same on every node.
    async fn fill_remote_offsets(&self, t: &TopicView, d: &mut pb::TopicDescription) {
        let Some(c) = self.broker.cluster() else {
            return;
        };
        let mut by_leader: std::collections::HashMap<u64, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, p) in t.partitions.iter().enumerate() {
            if !p.local && p.leader != 0 && p.leader != c.node_id() {
                by_leader.entry(p.leader).or_default().push(i);
            }
        }
        for (leader, parts) in by_leader {
            let Some(addr) = c.grpc_addr_of(leader) else {
                continue;
            };
            let remote = async {
                let mut client = super::peer_client(&addr).await.ok()?;
                let mut req = Request::new(pb::DescribeTopicRequest {
                    name: t.name.clone(),
                });
                req.metadata_mut()
                    .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
                client
                    .describe_topic(req)
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            let Ok(Some(remote)) = tokio::time::timeout(Duration::from_secs(2), remote).await
            else {
                continue;
            };
            for i in parts {
                let (Some(mine), Some(theirs)) =
                    (d.partition_info.get_mut(i), remote.partition_info.get(i))
                else {
                    continue;
                };
                mine.log_start_offset = theirs.log_start_offset;
                mine.high_watermark = theirs.high_watermark;
                mine.size_bytes = theirs.size_bytes;
                mine.segments = theirs.segments;
            }
        }
    }

    fn cluster(&self) -> Result<&Arc<crate::cluster::Cluster>, BrokerError> {
        self.broker.cluster().ok_or_else(|| {
            BrokerError::InvalidRequest(
                "this broker runs single-node; cluster operations need cluster mode (--node-id, --raft-addr)".into(),
            )
        })
    }
}

/// Domain settings from the wire.
pub fn settings_from_pb(c: Option<pb::TopicConfig>) -> TopicSettings {
    let c = c.unwrap_or_default();
    TopicSettings {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        segment_ms: c.segment_ms,
        max_batch_bytes: c.max_batch_bytes,
    }
}

fn settings_to_pb(s: &TopicSettings) -> pb::TopicConfig {
    pb::TopicConfig {
        retention_ms: s.retention_ms,
        retention_bytes: s.retention_bytes,
        segment_bytes: s.segment_bytes,
        segment_ms: s.segment_ms,
        max_batch_bytes: s.max_batch_bytes,
    }
}

fn partition_to_pb(v: &PartitionView) -> pb::PartitionInfo {
    let s = &v.status;
    pb::PartitionInfo {
        partition: s.partition,
        leader: v.leader,
        replicas: v.replicas.clone(),
        log_start_offset: s.log_start_offset,
        high_watermark: s.high_watermark,
        size_bytes: s.size_bytes,
        segments: s.segments as u32,
    }
}

fn describe(t: &TopicView) -> pb::TopicDescription {
    pb::TopicDescription {
        name: t.name.clone(),
        partitions: t.partitions.len() as u32,
        config: Some(settings_to_pb(&t.settings)),
        partition_info: t.partitions.iter().map(partition_to_pb).collect(),
    }
}

fn acks_from_pb(a: i32) -> Result<Acks, BrokerError> {
    match pb::Acks::try_from(a) {
        Ok(pb::Acks::All) => Ok(Acks::All),
        Ok(pb::Acks::Leader) => Ok(Acks::Leader),
        Ok(pb::Acks::None) => Ok(Acks::None),
        Err(_) => Err(BrokerError::InvalidRequest(format!(
            "unknown acks value {a}"
        ))),
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;
type ProduceStream = Pin<Box<dyn Stream<Item = Result<pb::ProduceResponse, Status>> + Send>>;
type ProduceBatchesStream =
    Pin<Box<dyn Stream<Item = Result<pb::ProduceBatchesResponse, Status>> + Send>>;

/// A batch of a produce stream, submitted (or refused) in arrival order:
/// its acknowledgement to await, with what metrics need (topic, bytes).
type SubmittedItem = Result<(crate::topic::Submitted, Acks, String, u64), BrokerError>;

/// A request's outcome as the metrics label it.
fn outcome_of<T>(r: &Result<T, BrokerError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code().as_str_name().to_ascii_lowercase(),
    }
}

/// Counts an appended batch in the produce metrics (not a duplicate) and
/// answers it.
fn produced(metrics: &Metrics, topic: &str, bytes: u64, o: &ProduceOutcome) -> pb::ProduceResponse {
    if !o.duplicate {
        metrics
            .produced_records
            .with_label_values(&[topic])
            .inc_by(u64::from(o.record_count));
        metrics
            .produced_bytes
            .with_label_values(&[topic])
            .inc_by(bytes);
    }
    pb::ProduceResponse {
        base_offset: o.base_offset,
        record_count: o.record_count,
        duplicate: o.duplicate,
    }
}

/// Submits one batch of a produce stream (called in arrival order).
async fn submit_batch(broker: &Broker, req: pb::ProduceRequest) -> SubmittedItem {
    let acks = acks_from_pb(req.acks)?;
    let bytes = req.batch.len() as u64;
    broker
        .submit(&req.topic, req.partition, req.batch)
        .await
        .map(|s| (s, acks, req.topic, bytes))
}

/// Awaits a submitted batch's acknowledgement, recording it under `api`.
async fn acknowledge(
    metrics: &Metrics,
    api: &str,
    item: SubmittedItem,
) -> Result<pb::ProduceResponse, BrokerError> {
    let started = Instant::now();
    let r = match item {
        Ok((s, acks, topic, bytes)) => s
            .wait(acks)
            .await
            .map(|o| produced(metrics, &topic, bytes, &o)),
        Err(e) => Err(e),
    };
    metrics.request(api, &outcome_of(&r), started.elapsed());
    r
}

#[tonic::async_trait]
impl Strata for GrpcService {
    async fn produce(
        &self,
        req: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let bytes = r.batch.len() as u64;
        let topic = r.topic.clone();
        let result = async {
            let acks = acks_from_pb(r.acks)?;
            self.broker
                .produce(&r.topic, r.partition, r.batch, acks)
                .await
        }
        .await
        .map(|o| produced(self.broker.metrics(), &topic, bytes, &o));
        self.observe("produce", started, result)
    }

    type ProduceStreamStream = ProduceStream;

    async fn produce_stream(
        &self,
        req: Request<tonic::Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = req.into_inner();
        let broker = self.broker.clone();
        // Requests are submitted strictly in arrival order (one task); their
        // acknowledgements are awaited in that order by another, so batches
        // pipeline without overtaking each other.
        let (queued_tx, mut queued_rx) = mpsc::channel::<SubmittedItem>(64);
        tokio::spawn(async move {
            loop {
                let req = match inbound.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return,
                };
                let submitted = submit_batch(&broker, req).await;
                let failed = submitted.is_err();
                if queued_tx.send(submitted).await.is_err() || failed {
                    return;
                }
            }
        });
        let (tx, rx) = mpsc::channel(64);
        let metrics = self.broker.metrics().clone();
        tokio::spawn(async move {
            while let Some(item) = queued_rx.recv().await {
                let msg = acknowledge(&metrics, "produce_stream", item)
                    .await
                    .map_err(|e| e.to_status());
                let stop = msg.is_err();
                if tx.send(msg).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as ProduceStream
        ))
    }

    type ProduceBatchesStream = ProduceBatchesStream;

    async fn produce_batches(
        &self,
        req: Request<tonic::Streaming<pb::ProduceBatchesRequest>>,
    ) -> Result<Response<Self::ProduceBatchesStream>, Status> {
        let mut inbound = req.into_inner();
        let broker = self.broker.clone();
        // As in `produce_stream`: one task submits every batch strictly in
        // arrival order, another awaits each request's acknowledgements (the
        // batches of one request concurrently) and answers the requests in
        // order. A failed batch is answered in its result; the stream goes on.
        let (queued_tx, mut queued_rx) = mpsc::channel::<Vec<SubmittedItem>>(64);
        tokio::spawn(async move {
            loop {
                let req = match inbound.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return,
                };
                let mut items = Vec::with_capacity(req.batches.len());
                for b in req.batches {
                    items.push(submit_batch(&broker, b).await);
                }
                if queued_tx.send(items).await.is_err() {
                    return;
                }
            }
        });
        let (tx, rx) = mpsc::channel(64);
        let metrics = self.broker.metrics().clone();
        tokio::spawn(async move {
            while let Some(items) = queued_rx.recv().await {
                let waits = items.into_iter().map(|item| {
                    let metrics = &metrics;
                    async move {
                        let outcome = match acknowledge(metrics, "produce_batches", item).await {
                            Ok(r) => pb::produce_result::Outcome::Ok(r),
                            Err(e) => pb::produce_result::Outcome::Error(e.detail()),
                        };
                        pb::ProduceResult {
                            outcome: Some(outcome),
                        }
                    }
                });
                let results = futures::future::join_all(waits).await;
                if tx
                    .send(Ok(pb::ProduceBatchesResponse { results }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as ProduceBatchesStream
        ))
    }

    async fn init_producer(
        &self,
        _: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let started = Instant::now();
        let r = self
            .broker
            .init_producer()
            .await
            .map(|(id, epoch)| pb::InitProducerResponse {
                producer_id: id,
                producer_epoch: u32::from(epoch),
            });
        self.observe("init_producer", started, r)
    }

    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let setup = (|| {
            let p = self.broker.partition(&r.topic, r.partition)?;
            let offset = match r.start {
                Some(pb::fetch_request::Start::Offset(o)) => o,
                Some(pb::fetch_request::Start::TimestampMs(t)) => p.offset_for_timestamp(t)?,
                Some(pb::fetch_request::Start::Position(x))
                    if x == pb::Position::Earliest as i32 =>
                {
                    p.log_start_offset()
                }
                Some(pb::fetch_request::Start::Position(x)) if x == pb::Position::Latest as i32 => {
                    p.high_watermark()
                }
                _ => {
                    return Err(BrokerError::InvalidRequest(
                        "fetch needs an offset, a timestamp, or EARLIEST/LATEST".into(),
                    ));
                }
            };
            // Fail fast, before the stream starts, on an out-of-range start.
            let lso = p.log_start_offset();
            let hw = p.high_watermark();
            if offset < lso || offset > hw {
                return Err(BrokerError::OffsetOutOfRange {
                    offset,
                    log_start_offset: lso,
                    high_watermark: hw,
                });
            }
            Ok((p, offset))
        })();
        let (partition, mut offset) = match setup {
            Ok(x) => x,
            Err(e) => return self.observe("fetch", started, Err(e)),
        };
        let max_bytes = match r.max_bytes {
            0 => self.broker.config().fetch_bytes_default,
            n => n.min(self.broker.config().grpc_message_bytes_max as u32 / 2),
        } as usize;
        let follow = r.follow;
        // A client's wait is bounded (max_wait_ms = 2^32-1 is 49 days).
        let max_wait = Duration::from_millis(
            u64::from(r.max_wait_ms).min(self.broker.config().fetch_wait_ms_max),
        );
        let metrics = self.broker.metrics().clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut hw_rx = partition.watch_high_watermark();
            let deadline = tokio::time::Instant::now() + max_wait;
            loop {
                let hw = *hw_rx.borrow_and_update();
                if offset < hw {
                    let p = partition.clone();
                    let read = tokio::task::spawn_blocking(move || p.read(offset, max_bytes)).await;
                    let batches = match read {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(e.to_status())).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!("read task failed: {e}"))))
                                .await;
                            return;
                        }
                    };
                    let Some(last) = batches.last() else { continue };
                    offset = last.last_offset() + 1;
                    let records: u64 = batches.iter().map(|b| u64::from(b.record_count)).sum();
                    let bytes: u64 = batches.iter().map(|b| b.bytes.len() as u64).sum();
                    metrics
                        .fetched_records
                        .with_label_values(&[partition.topic.as_str()])
                        .inc_by(records);
                    metrics
                        .fetched_bytes
                        .with_label_values(&[partition.topic.as_str()])
                        .inc_by(bytes);
                    let msg = pb::FetchResponse {
                        batches: batches
                            .into_iter()
                            .map(|b| pb::FetchedBatch {
                                base_offset: b.base_offset,
                                batch: b.bytes,
                            })
                            .collect(),
                        high_watermark: hw,
                        log_start_offset: partition.log_start_offset(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return; // the client went away
                    }
                    continue;
                }
                // At the tail. A replica whose group lost its quorum will see
                // nothing new (a leader cut off from its followers, while the
                // other side may elect one and go on): the wait ends with
                // NOT_ENOUGH_REPLICAS, so the consumer looks elsewhere.
                let cut_off = || {
                    BrokerError::NotEnoughReplicas(
                        "no new records can commit here; read from another broker".into(),
                    )
                    .to_status()
                };
                if follow {
                    tokio::select! {
                        changed = hw_rx.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        () = partition.quorum_lost() => {
                            let _ = tx.send(Err(cut_off())).await;
                            return;
                        }
                    }
                } else if tokio::time::Instant::now() < deadline {
                    tokio::select! {
                        changed = hw_rx.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep_until(deadline) => {}
                        () = partition.quorum_lost() => return,
                    }
                } else {
                    return;
                }
            }
        });
        self.observe(
            "fetch",
            started,
            Ok(Box::pin(ReceiverStream::new(rx)) as FetchStream),
        )
    }

    async fn list_offsets(
        &self,
        req: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = (|| {
            let p = self.broker.partition(&r.topic, r.partition)?;
            let offset = match r.spec {
                Some(pb::list_offsets_request::Spec::TimestampMs(t)) => {
                    p.offset_for_timestamp(t)?
                }
                Some(pb::list_offsets_request::Spec::Position(x))
                    if x == pb::Position::Earliest as i32 =>
                {
                    p.log_start_offset()
                }
                Some(pb::list_offsets_request::Spec::Position(x))
                    if x == pb::Position::Latest as i32 =>
                {
                    p.high_watermark()
                }
                _ => {
                    return Err(BrokerError::InvalidRequest(
                        "list offsets needs EARLIEST, LATEST or a timestamp".into(),
                    ));
                }
            };
            Ok(pb::ListOffsetsResponse {
                offset,
                log_start_offset: p.log_start_offset(),
                high_watermark: p.high_watermark(),
            })
        })();
        self.observe("list_offsets", started, result)
    }

    async fn metadata(
        &self,
        req: Request<pb::MetadataRequest>,
    ) -> Result<Response<pb::MetadataResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = (|| {
            let topics = self.broker.topic_views(&r.topics)?;
            let c = self.broker.config();
            let brokers = match self.broker.cluster() {
                Some(cl) => cl
                    .meta_state()
                    .nodes
                    .iter()
                    .map(|(id, n)| pb::BrokerInfo {
                        node_id: *id,
                        grpc_addr: n.grpc_addr.clone(),
                        http_addr: n.http_addr.clone(),
                    })
                    .collect(),
                None => {
                    let (grpc_addr, http_addr) = self.broker.advertised();
                    vec![pb::BrokerInfo {
                        node_id: c.node_id,
                        grpc_addr,
                        http_addr,
                    }]
                }
            };
            Ok(pb::MetadataResponse {
                brokers,
                topics: topics.iter().map(describe).collect(),
            })
        })();
        self.observe("metadata", started, result)
    }

    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = self
            .broker
            .create_topic(
                &r.name,
                r.partitions,
                r.replication_factor,
                settings_from_pb(r.config),
            )
            .await
            .map(|t| pb::CreateTopicResponse {
                topic: Some(describe(&t)),
            });
        self.observe("create_topic", started, result)
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let started = Instant::now();
        let r = self
            .broker
            .topic_views(&[])
            .map(|v| pb::ListTopicsResponse {
                topics: v.iter().map(describe).collect(),
            });
        self.observe("list_topics", started, r)
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let started = Instant::now();
        // A describe forwarded by another node is answered from here only.
        let forwarded = req.metadata().contains_key(FORWARDED);
        let name = req.into_inner().name;
        let r = self
            .broker
            .topic_views(std::slice::from_ref(&name))
            .and_then(|mut v| v.pop().ok_or(BrokerError::UnknownTopic(name)));
        let r = match r {
            Ok(t) => {
                let mut d = describe(&t);
                if !forwarded {
                    self.fill_remote_offsets(&t, &mut d).await;
                }
                Ok(d)
            }
            Err(e) => Err(e),
        };
        self.observe("describe_topic", started, r)
    }

    async fn alter_topic_config(
        &self,
        req: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let r = self
            .broker
            .alter_topic(&r.name, &settings_from_pb(r.config))
            .await
            .map(|t| describe(&t));
        self.observe("alter_topic_config", started, r)
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let name = req.into_inner().name;
        let r = self
            .broker
            .delete_topic(&name)
            .await
            .map(|()| pb::DeleteTopicResponse {});
        self.observe("delete_topic", started, r)
    }

    async fn commit_offsets(
        &self,
        req: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let offsets: Vec<(u32, u64)> = r.offsets.iter().map(|o| (o.partition, o.offset)).collect();
        let r = self
            .broker
            .commit(&r.group, &r.topic, &offsets)
            .await
            .map(|()| pb::CommitOffsetsResponse {});
        self.observe("commit_offsets", started, r)
    }

    async fn fetch_committed(
        &self,
        req: Request<pb::FetchCommittedRequest>,
    ) -> Result<Response<pb::FetchCommittedResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let r =
            self.broker
                .committed(&r.group, &r.topic)
                .await
                .map(|v| pb::FetchCommittedResponse {
                    offsets: v
                        .into_iter()
                        .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                        .collect(),
                });
        self.observe("fetch_committed", started, r)
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let started = Instant::now();
        let r = self.broker.all_committed().map(|all| {
            let mut groups: Vec<pb::GroupTopic> = Vec::new();
            for (group, topic, partition, offset) in all {
                match groups.last_mut() {
                    Some(g) if g.group == group && g.topic == topic => {
                        g.offsets.push(pb::PartitionOffset { partition, offset })
                    }
                    _ => groups.push(pb::GroupTopic {
                        group,
                        topic,
                        offsets: vec![pb::PartitionOffset { partition, offset }],
                    }),
                }
            }
            pb::ListGroupsResponse { groups }
        });
        self.observe("list_groups", started, r)
    }

    async fn node_status(
        &self,
        _: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let started = Instant::now();
        let r = match self.broker.cluster() {
            None => pb::NodeStatusResponse {
                node_id: self.broker.config().node_id,
                clustered: false,
                ..Default::default()
            },
            Some(c) => pb::NodeStatusResponse {
                node_id: c.node_id(),
                raft_addr: c.raft_addr().to_owned(),
                clustered: true,
                uptime_ms: c.uptime().as_millis() as u64,
                replicas: c
                    .status()
                    .into_iter()
                    .map(|g| {
                        let (topic, partition) = g.partition.unwrap_or_default();
                        pb::ReplicaStatus {
                            topic,
                            partition,
                            role: g.role.to_owned(),
                            term: g.term,
                            leader: g.leader.unwrap_or(0),
                            voters: g.voters,
                            learners: g.learners,
                            log_end: g.log_end,
                            applied_end: g.applied_end,
                            high_watermark: g.high_watermark,
                            log_start_offset: g.log_start_offset,
                            matched_end: g.matched_end.into_iter().collect(),
                            snapshot_end: g.snapshot_end,
                            purged_end: g.purged_end,
                        }
                    })
                    .collect(),
            },
        };
        self.observe("node_status", started, Ok(r))
    }

    async fn init_cluster(
        &self,
        req: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::InitClusterResponse>, Status> {
        let started = Instant::now();
        let peers = req.into_inner().peers;
        let r = async {
            let c = self.cluster()?;
            if peers.is_empty()
                || peers
                    .values()
                    .any(|a| a.parse::<std::net::SocketAddr>().is_err())
            {
                return Err(BrokerError::InvalidRequest(format!(
                    "peers must map node ids to Raft socket addresses (host:port), got {peers:?}"
                )));
            }
            let initialized = c.init(peers.into_iter().collect()).await?;
            Ok(pb::InitClusterResponse { initialized })
        }
        .await;
        self.observe("init_cluster", started, r)
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = async {
            let c = self.cluster()?;
            if r.node_id == 0 {
                return Err(BrokerError::InvalidRequest(
                    "node id must be positive".into(),
                ));
            }
            if r.raft_addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(BrokerError::InvalidRequest(format!(
                    "raft address must be host:port (an IP socket address), got {:?}",
                    r.raft_addr
                )));
            }
            c.add_node(
                r.node_id,
                crate::raft::NodeInfo {
                    raft_addr: r.raft_addr,
                    ..Default::default()
                },
            )
            .await?;
            Ok(pb::AddNodeResponse {})
        }
        .await;
        self.observe("add_node", started, result)
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let started = Instant::now();
        let id = req.into_inner().node_id;
        let r = async {
            self.cluster()?.remove_node(id).await?;
            Ok(pb::RemoveNodeResponse {})
        }
        .await;
        self.observe("remove_node", started, r)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = async {
            let c = self.cluster()?;
            let group = (!r.topic.is_empty()).then_some((r.topic.as_str(), r.partition));
            let already_leader = c.transfer_leader(group, r.to).await?;
            Ok(pb::TransferLeaderResponse { already_leader })
        }
        .await;
        self.observe("transfer_leader", started, result)
    }

    async fn reassign_partition(
        &self,
        req: Request<pb::ReassignPartitionRequest>,
    ) -> Result<Response<pb::ReassignPartitionResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = async {
            self.cluster()?
                .reassign(&r.topic, r.partition, r.replicas)
                .await?;
            Ok(pb::ReassignPartitionResponse {})
        }
        .await;
        self.observe("reassign_partition", started, result)
    }
}
