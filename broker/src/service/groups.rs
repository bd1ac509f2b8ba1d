//! The consumer-group side of the gRPC service: translation between the
//! wire's group messages and the coordinator's domain types, the high
//! watermark checks behind commits, and the relaying of a request that
//! reached a node other than its group's coordinator.
//!
//! Any node accepts a group request: if it does not coordinate the group it
//! relays the request once (marked with the forwarding header, so it is not
//! relayed again) to the coordinator it knows of, and answers with the
//! coordinator's answer. A relayed request that still misses answers
//! NOT_COORDINATOR with the hint it has.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strata_group::{GroupDescription, HeartbeatRequest, Subscription, TopicPartition};
use strata_proto::pb::{self, strata_client::StrataClient};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::broker::Broker;
use crate::coordinator::OFFSETS_TOPIC;
use crate::error::BrokerError;

/// Metadata header naming the client's host on a relayed heartbeat (the
/// coordinator would otherwise see the relaying node).
pub(crate) const CLIENT_HOST: &str = "x-strata-client-host";

/// How long a relayed request may take.
const RELAY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a high-watermark question to another node may take.
const HW_TIMEOUT: Duration = Duration::from_secs(3);

/// gRPC clients of the other nodes, connected lazily and kept.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    clients: parking_lot::Mutex<HashMap<String, StrataClient<Channel>>>,
}

impl Peers {
    /// The client of the node at `addr` (host:port).
    pub(crate) fn client(&self, addr: &str) -> Result<StrataClient<Channel>, BrokerError> {
        let mut m = self.clients.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| BrokerError::InvalidRequest(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let c = StrataClient::new(endpoint.connect_lazy());
        m.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Sends `req` to the node at `addr`, marked as relayed.
    pub(crate) async fn relay<Req, Resp, F, Fut>(
        &self,
        addr: &str,
        req: Req,
        call: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(StrataClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let client = self.client(addr).map_err(|e| e.to_status())?;
        let mut r = Request::new(req);
        r.metadata_mut().insert(
            super::grpc::FORWARDED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        r.set_timeout(RELAY_TIMEOUT);
        match tokio::time::timeout(RELAY_TIMEOUT, call(client, r)).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(BrokerError::CoordinatorLoading(format!(
                "the coordinator at {addr} did not answer within {RELAY_TIMEOUT:?}"
            ))
            .to_status()),
        }
    }
}

/// Highest high watermark seen per partition: a commit at or below it
/// needs no question to the partition's leader (high watermarks only grow).
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    seen: parking_lot::Mutex<HashMap<TopicPartition, u64>>,
}

impl Watermarks {
    /// The partition's high watermark, from this node if it leads it, else
    /// from its leader; `Ok(None)` when neither can answer, an error for
    /// a topic or partition that does not exist.
    pub(crate) async fn current(
        &self,
        broker: &Broker,
        peers: &Peers,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, BrokerError> {
        let hw = match broker.partition(topic, partition) {
            Ok(p) => match p.check_leader() {
                Ok(()) => Some(p.high_watermark()),
                Err(BrokerError::NotLeader { leader: Some(a) }) => {
                    remote_hw(peers, &a, topic, partition).await
                }
                Err(_) => None,
            },
            Err(BrokerError::NotLeader { leader: Some(a) }) => {
                remote_hw(peers, &a, topic, partition).await
            }
            Err(e @ (BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. })) => {
                return Err(e);
            }
            Err(_) => None,
        };
        let Some(hw) = hw else { return Ok(None) };
        let mut seen = self.seen.lock();
        let e = seen.entry((topic.to_owned(), partition)).or_insert(0);
        *e = (*e).max(hw);
        Ok(Some(*e))
    }

    /// Refuses any offset beyond its partition's high watermark
    /// (OFFSET_OUT_OF_RANGE), asking leaders only when the cache is too low.
    pub(crate) async fn check(
        &self,
        broker: &Broker,
        peers: &Peers,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        for (t, p, o) in offsets {
            let cached = self.seen.lock().get(&(t.clone(), *p)).copied();
            if cached.is_some_and(|hw| *o <= hw) {
                continue;
            }
            let Some(hw) = self.current(broker, peers, t, *p).await? else {
                return Err(BrokerError::NotLeader { leader: None });
            };
            if *o > hw {
                return Err(BrokerError::OffsetOutOfRange {
                    offset: *o,
                    log_start_offset: 0,
                    high_watermark: hw,
                });
            }
        }
        Ok(())
    }
}

async fn remote_hw(peers: &Peers, addr: &str, topic: &str, partition: u32) -> Option<u64> {
    let mut c = peers.client(addr).ok()?;
    let ask = c.list_offsets(pb::ListOffsetsRequest {
        topic: topic.to_owned(),
        partition,
        spec: Some(pb::list_offsets_request::Spec::Position(
            pb::Position::Latest as i32,
        )),
    });
    match tokio::time::timeout(HW_TIMEOUT, ask).await {
        Ok(Ok(r)) => Some(r.into_inner().high_watermark),
        _ => None,
    }
}

/// A fresh member id: 128 random bits, hex.
pub(crate) fn new_member_id() -> Result<String, BrokerError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        BrokerError::Storage(crate::log::LogError::Invalid(format!(
            "no randomness for a member id: {e}"
        )))
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The domain heartbeat of a wire one (`member_id` already filled in).
pub(crate) fn heartbeat_from_pb(
    r: pb::GroupHeartbeatRequest,
    client_host: String,
) -> HeartbeatRequest {
    let subscription =
        (!r.subscribed_topics.is_empty() || !r.subscribed_pattern.is_empty()).then(|| {
            Subscription {
                topics: r.subscribed_topics,
                pattern: (!r.subscribed_pattern.is_empty()).then_some(r.subscribed_pattern),
            }
        });
    HeartbeatRequest {
        member_id: r.member_id,
        member_epoch: r.member_epoch,
        instance_id: (!r.instance_id.is_empty()).then_some(r.instance_id),
        subscription,
        owned: r.owned_set.then(|| partitions_from_pb(r.owned)),
        session_timeout_ms: r.session_timeout_ms,
        rebalance_timeout_ms: r.rebalance_timeout_ms,
        client_id: r.client_id,
        client_host,
    }
}

/// Flattens per-topic partition lists.
pub(crate) fn partitions_from_pb(v: Vec<pb::TopicPartitions>) -> Vec<TopicPartition> {
    v.into_iter()
        .flat_map(|t| {
            let topic = t.topic;
            t.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect()
}

/// Groups partitions by topic (in order).
pub(crate) fn partitions_to_pb<'a>(
    v: impl IntoIterator<Item = &'a TopicPartition>,
) -> Vec<pb::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in v {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            pb::TopicPartitions {
                topic: t.to_owned(),
                partitions: ps,
            }
        })
        .collect()
}

/// `(topic, partition, offset)` triples of a wire commit or reset,
/// refusing internal topics and an empty topic name.
pub(crate) fn offsets_from_pb(
    topic: &str,
    offsets: &[pb::PartitionOffset],
) -> Result<Vec<(String, u32, u64)>, BrokerError> {
    if topic.is_empty() {
        return Err(BrokerError::InvalidRequest(
            "a commit or reset needs a topic".into(),
        ));
    }
    if crate::broker::is_internal(topic) {
        return Err(BrokerError::InvalidTopicName(format!(
            "{topic:?}: offsets of internal topics cannot be committed"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(offsets.len());
    for o in offsets {
        if !seen.insert(o.partition) {
            return Err(BrokerError::InvalidRequest(format!(
                "partition {} of {topic} appears twice in one request",
                o.partition
            )));
        }
        out.push((topic.to_owned(), o.partition, o.offset));
    }
    Ok(out)
}

/// Committed offsets as the wire's per-topic lists.
pub(crate) fn group_topics(
    group: &str,
    offsets: &BTreeMap<TopicPartition, u64>,
) -> Vec<pb::GroupTopic> {
    let mut out: Vec<pb::GroupTopic> = Vec::new();
    for ((topic, partition), offset) in offsets {
        let po = pb::PartitionOffset {
            partition: *partition,
            offset: *offset,
        };
        match out.last_mut() {
            Some(g) if g.topic == *topic => g.offsets.push(po),
            _ => out.push(pb::GroupTopic {
                group: group.to_owned(),
                topic: topic.clone(),
                offsets: vec![po],
            }),
        }
    }
    out
}

/// A group's description on the wire, with lag where the high watermark
/// is known (`hws`).
pub(crate) fn describe_to_pb(
    d: &GroupDescription,
    hws: &HashMap<TopicPartition, u64>,
    coordinator: u64,
) -> pb::DescribeGroupResponse {
    let mut owners: HashMap<&TopicPartition, &str> = HashMap::new();
    for m in &d.members {
        for tp in m.assigned.iter().chain(&m.revoking) {
            owners.insert(tp, &m.member_id);
        }
    }
    let mut tps: std::collections::BTreeSet<&TopicPartition> = d.offsets.keys().collect();
    tps.extend(owners.keys().copied());
    let partitions = tps
        .into_iter()
        .map(|tp| {
            let committed = d.offsets.get(tp).copied();
            let hw = hws.get(tp).copied();
            pb::GroupPartitionLag {
                topic: tp.0.clone(),
                partition: tp.1,
                committed,
                high_watermark: hw,
                lag: hw.map(|h| h.saturating_sub(committed.unwrap_or(0))),
                owner: owners.get(tp).map(|s| (*s).to_owned()).unwrap_or_default(),
            }
        })
        .collect();
    pb::DescribeGroupResponse {
        group: d.group.clone(),
        state: d.state.to_string(),
        group_epoch: d.group_epoch,
        assignment_epoch: d.assignment_epoch,
        members: d
            .members
            .iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone().unwrap_or_default(),
                member_epoch: m.member_epoch,
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                subscribed_topics: m.subscription.topics.clone(),
                subscribed_pattern: m.subscription.pattern.clone().unwrap_or_default(),
                assigned: partitions_to_pb(&m.assigned),
                revoking: partitions_to_pb(&m.revoking),
                target: partitions_to_pb(&m.target),
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect(),
        partitions,
        coordinator,
        hold: d.hold,
    }
}

/// The node leading partition `p` of the offsets topic and its gRPC
/// address, as this node's metadata knows it.
pub(crate) fn coordinator_node(broker: &Arc<Broker>, p: u32) -> Result<(u64, String), BrokerError> {
    let views = broker.topic_views(&[OFFSETS_TOPIC.to_owned()])?;
    let leader = views
        .first()
        .and_then(|t| t.partitions.get(p as usize))
        .map(|v| v.leader)
        .unwrap_or(0);
    match broker.cluster() {
        Some(c) => {
            let addr = c.grpc_addr_of(leader).ok_or(BrokerError::NotCoordinator {
                group: String::new(),
                leader: None,
            })?;
            Ok((leader, addr))
        }
        None => Ok((broker.config().node_id, broker.advertised().0)),
    }
}
