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

use super::groups::{self as wire, Peers, Watermarks};
use crate::broker::{Broker, PartitionView, TopicView};
use crate::coordinator::GroupCoordinators;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::settings::TopicSettings;
use crate::topic::{Acks, ProduceOutcome};

/// Request metadata marking a call one node makes to another on a client's
/// behalf (it is not forwarded again).
pub(crate) const FORWARDED: &str = "x-strata-forwarded";

/// How often an open fetch of a group member re-checks, at the
/// coordinator, that the member still owns the partition.
const MEMBER_RECHECK: Duration = Duration::from_secs(2);

/// How long the node a client asked keeps relaying a group request while
/// the coordinator moves (just created, electing, loading).
const RELAY_WAIT: Duration = Duration::from_secs(10);

/// Whether a relayed group request missed its coordinator (it moved, or is
/// loading): worth resolving again and retrying.
fn coordinator_missed(s: &Status) -> bool {
    strata_proto::status::decode_details(s.details()).is_some_and(|d| {
        d.code == pb::ErrorCode::NotCoordinator as i32
            || d.code == pb::ErrorCode::CoordinatorLoading as i32
            || d.code == pb::ErrorCode::NotLeader as i32
    }) || s.code() == tonic::Code::Unavailable
}

/// A group RPC: served here if this node coordinates the group, else
/// relayed to the coordinator (unless it was relayed here already), and
/// retried while the coordinator moves, up to [`RELAY_WAIT`].
/// `$local` is re-evaluated on each try.
macro_rules! group_rpc {
    ($self:ident, $api:literal, $started:ident, $forwarded:ident, $req:ident, $local:expr, $method:ident, $prep:expr) => {{
        let deadline = tokio::time::Instant::now() + RELAY_WAIT;
        loop {
            let result = $local;
            match &result {
                Err(BrokerError::NotCoordinator {
                    leader: Some(addr), ..
                }) if !$forwarded => {
                    let prep = $prep;
                    let relayed = $self
                        .peers
                        .relay(addr, $req.clone(), |mut c, mut q| async move {
                            prep(&mut q);
                            c.$method(q).await
                        })
                        .await;
                    if matches!(&relayed, Err(s) if coordinator_missed(s))
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    break $self.relayed($api, $started, relayed);
                }
                _ => break $self.observe($api, $started, result),
            }
        }
    }};
}

/// The gRPC service over a broker.
#[derive(Debug, Clone)]
pub struct GrpcService {
    broker: Arc<Broker>,
    groups: Arc<GroupCoordinators>,
    peers: Arc<Peers>,
    watermarks: Arc<Watermarks>,
}

impl GrpcService {
    /// A service over `broker`, with the group coordinators it hosts.
    pub fn new(broker: Arc<Broker>, groups: Arc<GroupCoordinators>) -> Self {
        GrpcService {
            broker,
            groups,
            peers: Arc::new(Peers::default()),
            watermarks: Arc::new(Watermarks::default()),
        }
    }

    /// Answers a request relayed to another node, counted under `api`.
    fn relayed<T>(
        &self,
        api: &str,
        started: Instant,
        r: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let outcome = match &r {
            Ok(_) => "ok".to_owned(),
            Err(s) => BrokerError::code_of(s)
                .map_or_else(|| "unknown".to_owned(), |(c, _)| c.to_ascii_lowercase()),
        };
        self.broker
            .metrics()
            .request(api, &format!("relayed_{outcome}"), started.elapsed());
        r.map(Response::new)
    }

    /// The member-ownership check of a fetch, at the group's coordinator
    /// (here or relayed).
    async fn check_fetch_member(
        &self,
        m: &pb::FetchMember,
        topic: &str,
        partition: u32,
    ) -> Result<(), Status> {
        match self
            .groups
            .check_member(&m.group, &m.member_id, m.member_epoch, topic, partition)
            .await
        {
            Ok(()) => Ok(()),
            Err(BrokerError::NotCoordinator {
                leader: Some(addr), ..
            }) => {
                let req = pb::CheckMemberRequest {
                    group: m.group.clone(),
                    member_id: m.member_id.clone(),
                    member_epoch: m.member_epoch,
                    topic: topic.to_owned(),
                    partition,
                };
                self.peers
                    .relay(
                        &addr,
                        req,
                        |mut c, r| async move { c.check_member(r).await },
                    )
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e.to_status()),
        }
    }

    /// Every group of the cluster: this node's coordinators' groups, and
    /// (unless `local_only`, as when another node asks) every other
    /// coordinator's, asked of the node leading its partition.
    async fn all_groups(&self, local_only: bool) -> Result<pb::ListGroupsResponse, BrokerError> {
        let local = self.groups.local_groups().await?;
        let me = self
            .broker
            .cluster()
            .map_or(self.broker.config().node_id, |c| c.node_id());
        let mut out = pb::ListGroupsResponse::default();
        for (s, offsets) in &local.groups {
            out.summaries.push(pb::GroupSummary {
                group: s.group.clone(),
                state: s.state.to_string(),
                members: s.members as u32,
                group_epoch: s.group_epoch,
                coordinator: me,
                hold: s.hold,
            });
            out.groups.extend(wire::group_topics(&s.group, offsets));
        }
        if local_only {
            return Ok(out);
        }
        let mut by_leader: std::collections::BTreeMap<String, Vec<u32>> =
            std::collections::BTreeMap::new();
        for (p, leader) in local.elsewhere {
            match leader {
                Some(a) => by_leader.entry(a).or_default().push(p),
                None => out.unavailable_partitions.push(p),
            }
        }
        for (addr, parts) in by_leader {
            let asked = self
                .peers
                .relay(&addr, pb::ListGroupsRequest {}, |mut c, q| async move {
                    c.list_groups(q).await
                })
                .await;
            match asked {
                Ok(remote) => {
                    out.summaries.extend(remote.summaries);
                    out.groups.extend(remote.groups);
                }
                Err(_) => out.unavailable_partitions.extend(parts),
            }
        }
        out.summaries.sort_by(|a, b| a.group.cmp(&b.group));
        out.summaries.dedup_by(|a, b| a.group == b.group);
        out.groups
            .sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        out.groups
            .dedup_by(|a, b| a.group == b.group && a.topic == b.topic);
        out.unavailable_partitions.sort_unstable();
        Ok(out)
    }

    /// The retention holds of every holding group of the cluster: per
    /// partition, the lowest offset a holding group committed. `None` when
    /// some coordinator could not be asked (its groups' holds are unknown).
    pub async fn collect_holds(&self) -> Option<std::collections::HashMap<(String, u32), u64>> {
        let all = self.all_groups(false).await.ok()?;
        if !all.unavailable_partitions.is_empty() {
            return None;
        }
        let holding: std::collections::HashSet<&str> = all
            .summaries
            .iter()
            .filter(|s| s.hold)
            .map(|s| s.group.as_str())
            .collect();
        let mut out: std::collections::HashMap<(String, u32), u64> =
            std::collections::HashMap::new();
        for g in all
            .groups
            .iter()
            .filter(|g| holding.contains(g.group.as_str()))
        {
            for o in &g.offsets {
                out.entry((g.topic.clone(), o.partition))
                    .and_modify(|h| *h = (*h).min(o.offset))
                    .or_insert(o.offset);
            }
        }
        Some(out)
    }

    async fn heartbeat_here(
        &self,
        r: &pb::GroupHeartbeatRequest,
        host: &str,
    ) -> Result<pb::GroupHeartbeatResponse, BrokerError> {
        let hb = wire::heartbeat_from_pb(r.clone(), host.to_owned());
        let resp = self.groups.heartbeat(&r.group, hb).await?;
        Ok(pb::GroupHeartbeatResponse {
            member_id: resp.member_id,
            member_epoch: resp.member_epoch,
            heartbeat_interval_ms: resp.heartbeat_interval_ms,
            assignment: wire::partitions_to_pb(&resp.assignment),
        })
    }

    async fn commit_here(
        &self,
        r: &pb::CommitOffsetsRequest,
    ) -> Result<pb::CommitOffsetsResponse, BrokerError> {
        let offsets = wire::offsets_from_pb(&r.topic, &r.offsets)?;
        let p = self.groups.partition_of(&r.group).await?;
        self.groups.check_coordinator(&r.group, p).await?;
        self.watermarks
            .check(&self.broker, &self.peers, &offsets)
            .await?;
        let member = (!r.member_id.is_empty()).then(|| (r.member_id.clone(), r.member_epoch));
        self.groups.commit(&r.group, member, offsets).await?;
        Ok(pb::CommitOffsetsResponse {})
    }

    async fn committed_here(
        &self,
        r: &pb::FetchCommittedRequest,
    ) -> Result<pb::FetchCommittedResponse, BrokerError> {
        let all = self.groups.committed(&r.group).await?;
        if r.topic.is_empty() {
            return Ok(pb::FetchCommittedResponse {
                offsets: Vec::new(),
                topics: wire::group_topics(&r.group, &all),
            });
        }
        Ok(pb::FetchCommittedResponse {
            offsets: all
                .iter()
                .filter(|((t, _), _)| *t == r.topic)
                .map(|((_, partition), offset)| pb::PartitionOffset {
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
            topics: Vec::new(),
        })
    }

    async fn describe_here(
        &self,
        r: &pb::DescribeGroupRequest,
    ) -> Result<pb::DescribeGroupResponse, BrokerError> {
        let d = self.groups.describe(&r.group).await?;
        let hws = self.group_watermarks(&d).await;
        let me = self
            .broker
            .cluster()
            .map_or(self.broker.config().node_id, |c| c.node_id());
        Ok(wire::describe_to_pb(&d, &hws, me))
    }

    async fn reset_here(
        &self,
        r: &pb::ResetGroupOffsetsRequest,
    ) -> Result<pb::ResetGroupOffsetsResponse, BrokerError> {
        let offsets = wire::offsets_from_pb(&r.topic, &r.offsets)?;
        let p = self.groups.partition_of(&r.group).await?;
        self.groups.check_coordinator(&r.group, p).await?;
        self.watermarks
            .check(&self.broker, &self.peers, &offsets)
            .await?;
        self.groups.reset_offsets(&r.group, offsets).await?;
        Ok(pb::ResetGroupOffsetsResponse {})
    }

    /// High watermarks of a group's partitions, best effort.
    async fn group_watermarks(
        &self,
        d: &strata_group::GroupDescription,
    ) -> std::collections::HashMap<strata_group::TopicPartition, u64> {
        let mut tps: std::collections::BTreeSet<strata_group::TopicPartition> =
            d.offsets.keys().cloned().collect();
        for m in &d.members {
            tps.extend(m.assigned.iter().cloned());
            tps.extend(m.revoking.iter().cloned());
        }
        let mut out = std::collections::HashMap::new();
        for (t, p) in tps {
            if let Ok(Some(hw)) = self
                .watermarks
                .current(&self.broker, &self.peers, &t, p)
                .await
            {
                out.insert((t, p), hw);
            }
        }
        out
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
        let member = r.member.clone();
        if let Some(m) = &member
            && let Err(s) = self.check_fetch_member(m, &r.topic, r.partition).await
        {
            self.broker
                .metrics()
                .request("fetch", "fenced", started.elapsed());
            return Err(s);
        }
        let svc = self.clone();
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
            let mut recheck = tokio::time::Instant::now() + MEMBER_RECHECK;
            loop {
                // A member that lost the partition (or its membership) stops
                // reading it: the stream ends with the coordinator's error.
                if let Some(m) = &member
                    && tokio::time::Instant::now() >= recheck
                {
                    recheck = tokio::time::Instant::now() + MEMBER_RECHECK;
                    if let Err(s) = svc
                        .check_fetch_member(m, &partition.topic, partition.id)
                        .await
                    {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
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
                        () = tokio::time::sleep_until(recheck), if member.is_some() => {}
                        () = partition.quorum_lost() => {
                            let _ = tx.send(Err(cut_off())).await;
                            return;
                        }
                    }
                } else if tokio::time::Instant::now() < deadline {
                    tokio::select! {
                        changed = hw_rx.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep_until(deadline) => {}
                        () = tokio::time::sleep_until(recheck), if member.is_some() => {}
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

    async fn find_coordinator(
        &self,
        req: Request<pb::FindCoordinatorRequest>,
    ) -> Result<Response<pb::FindCoordinatorResponse>, Status> {
        let started = Instant::now();
        let group = req.into_inner().group;
        let r =
            async {
                let partition = self.groups.partition_of(&group).await?;
                // The same wait as any group request while no leader is known.
                let _ = self.groups.check_coordinator(&group, partition).await;
                let (node_id, grpc_addr) = wire::coordinator_node(&self.broker, partition)
                    .map_err(|_| BrokerError::NotCoordinator {
                        group: group.clone(),
                        leader: None,
                    })?;
                Ok(pb::FindCoordinatorResponse {
                    node_id,
                    grpc_addr,
                    partition,
                })
            }
            .await;
        self.observe("find_coordinator", started, r)
    }

    async fn group_heartbeat(
        &self,
        req: Request<pb::GroupHeartbeatRequest>,
    ) -> Result<Response<pb::GroupHeartbeatResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let host = req
            .metadata()
            .get(wire::CLIENT_HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.remote_addr().map(|a| a.ip().to_string()))
            .unwrap_or_default();
        let mut r = req.into_inner();
        if r.member_id.is_empty() {
            if r.member_epoch != 0 {
                return self.observe(
                    "group_heartbeat",
                    started,
                    Err(BrokerError::InvalidRequest(
                        "a heartbeat without a member id must be a join (member_epoch 0)".into(),
                    )),
                );
            }
            match wire::new_member_id() {
                Ok(id) => r.member_id = id,
                Err(e) => return self.observe("group_heartbeat", started, Err(e)),
            }
        }
        let host_value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
            host.parse().ok();
        group_rpc!(
            self,
            "group_heartbeat",
            started,
            forwarded,
            r,
            self.heartbeat_here(&r, &host).await,
            group_heartbeat,
            |q: &mut Request<pb::GroupHeartbeatRequest>| {
                if let Some(v) = host_value.clone() {
                    q.metadata_mut().insert(wire::CLIENT_HOST, v);
                }
            }
        )
    }

    async fn commit_offsets(
        &self,
        req: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        group_rpc!(
            self,
            "commit_offsets",
            started,
            forwarded,
            r,
            self.commit_here(&r).await,
            commit_offsets,
            |_: &mut Request<pb::CommitOffsetsRequest>| {}
        )
    }

    async fn fetch_committed(
        &self,
        req: Request<pb::FetchCommittedRequest>,
    ) -> Result<Response<pb::FetchCommittedResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        group_rpc!(
            self,
            "fetch_committed",
            started,
            forwarded,
            r,
            self.committed_here(&r).await,
            fetch_committed,
            |_: &mut Request<pb::FetchCommittedRequest>| {}
        )
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let result = self.all_groups(forwarded).await;
        self.observe("list_groups", started, result)
    }

    async fn set_group_hold(
        &self,
        req: Request<pb::SetGroupHoldRequest>,
    ) -> Result<Response<pb::SetGroupHoldResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        group_rpc!(
            self,
            "set_group_hold",
            started,
            forwarded,
            r,
            self.groups
                .set_hold(&r.group, r.hold)
                .await
                .map(|()| pb::SetGroupHoldResponse {}),
            set_group_hold,
            |_: &mut Request<pb::SetGroupHoldRequest>| {}
        )
    }

    async fn describe_group(
        &self,
        req: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        group_rpc!(
            self,
            "describe_group",
            started,
            forwarded,
            r,
            self.describe_here(&r).await,
            describe_group,
            |_: &mut Request<pb::DescribeGroupRequest>| {}
        )
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        group_rpc!(
            self,
            "delete_group",
            started,
            forwarded,
            r,
            self.groups
                .delete_group(&r.group)
                .await
                .map(|()| pb::DeleteGroupResponse {}),
            delete_group,
            |_: &mut Request<pb::DeleteGroupRequest>| {}
        )
    }

    async fn reset_group_offsets(
        &self,
        req: Request<pb::ResetGroupOffsetsRequest>,
    ) -> Result<Response<pb::ResetGroupOffsetsResponse>, Status> {
        let started = Instant::now();
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        group_rpc!(
            self,
            "reset_group_offsets",
            started,
            forwarded,
            r,
            self.reset_here(&r).await,
            reset_group_offsets,
            |_: &mut Request<pb::ResetGroupOffsetsRequest>| {}
        )
    }

    async fn check_member(
        &self,
        req: Request<pb::CheckMemberRequest>,
    ) -> Result<Response<pb::CheckMemberResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let result = self
            .groups
            .check_member(
                &r.group,
                &r.member_id,
                r.member_epoch,
                &r.topic,
                r.partition,
            )
            .await
            .map(|()| pb::CheckMemberResponse {});
        self.observe("check_member", started, result)
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
                kafka_addr: self.broker.kafka_advertised(),
                ..Default::default()
            },
            Some(c) => pb::NodeStatusResponse {
                node_id: c.node_id(),
                raft_addr: c.raft_addr().to_owned(),
                clustered: true,
                kafka_addr: self.broker.kafka_advertised(),
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
