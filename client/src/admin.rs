//! `Admin`: topics, offsets, groups and metadata, over one gRPC connection,
//! and the domain types it answers with ([`TopicDescription`],
//! [`Metadata`], [`GroupOffsets`], …). Also the connection helper and the
//! `Router` every client type uses (crate-private: callers see no gRPC
//! client). The translation from and to the wire's messages is in
//! `convert.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use strata_proto::pb::{self, strata_client::StrataClient};
use tonic::transport::{Channel, Endpoint};

use crate::convert;
use crate::error::{ClientError, Result};
pub use crate::types::{
    BrokerInfo, GroupCoordinator, GroupDescription, GroupListing, GroupMemberInfo, GroupOffsets,
    GroupPartitionLag, GroupSummary, Metadata, OffsetSpec, PartitionInfo, PartitionOffsets,
    TopicConfig, TopicDescription, TopicPartition,
};

/// Largest gRPC message the client sends or accepts.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// How long [`Router::refresh`] waits for one broker's metadata.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Clients to every broker of a cluster, by address, so a producer or
/// consumer can follow a partition's leader: on `NOT_LEADER` with a hint it
/// moves there; on a hint-less failure (the node is down, or no leader is
/// elected yet) it tries the next known broker, which answers with a hint
/// or serves itself.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    bootstrap: String,
    clients: Arc<Mutex<BTreeMap<String, StrataClient<Channel>>>>,
}

impl Router {
    /// A router seeded with the broker at `addr` (already connected).
    pub(crate) fn new(addr: &str, client: StrataClient<Channel>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(addr.to_owned(), client);
        Router {
            bootstrap: addr.to_owned(),
            clients: Arc::new(Mutex::new(m)),
        }
    }

    /// The client of `addr` (connecting lazily).
    pub(crate) fn client(&self, addr: &str) -> Result<StrataClient<Channel>> {
        let mut m = self.clients.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = StrataClient::new(endpoint(addr)?.connect_lazy())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        m.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Learns the cluster's brokers from the metadata (best effort): asks
    /// the bootstrap broker, and if it does not answer within
    /// [`REFRESH_TIMEOUT`], the other brokers known so far.
    pub(crate) async fn refresh(&self) {
        let mut addrs: Vec<String> = self.clients.lock().keys().cloned().collect();
        addrs.retain(|a| *a != self.bootstrap);
        addrs.insert(0, self.bootstrap.clone());
        for addr in addrs {
            let Ok(c) = self.client(&addr) else {
                continue;
            };
            let asked = tokio::time::timeout(
                REFRESH_TIMEOUT,
                c.clone().metadata(pb::MetadataRequest::default()),
            )
            .await;
            if let Ok(Ok(r)) = asked {
                for b in r.into_inner().brokers {
                    if !b.grpc_addr.is_empty() {
                        let _ = self.client(&b.grpc_addr);
                    }
                }
                return;
            }
        }
    }

    /// Where to go after `err` from the broker at `current`: the hinted
    /// leader, else the next known broker.
    pub(crate) fn next(&self, current: &str, err: &ClientError) -> Option<String> {
        if let ClientError::NotLeader {
            leader: Some(l), ..
        } = err
        {
            return Some(l.clone());
        }
        if !err.is_retriable() {
            return None;
        }
        let m = self.clients.lock();
        let addrs: Vec<&String> = m.keys().collect();
        let i = addrs
            .iter()
            .position(|a| *a == current)
            .map_or(0, |i| i + 1);
        addrs.get(i % addrs.len().max(1)).map(|a| (*a).clone())
    }

    /// The next known broker after `current` that is not `avoid` (`None`
    /// if there is no other).
    pub(crate) fn next_avoiding(&self, current: &str, avoid: &str) -> Option<String> {
        let m = self.clients.lock();
        let addrs: Vec<&String> = m.keys().collect();
        let at = addrs.iter().position(|a| *a == current).unwrap_or(0);
        (1..=addrs.len())
            .map(|k| addrs[(at + k) % addrs.len()])
            .find(|a| *a != current && *a != avoid)
            .cloned()
    }

    /// The address the router was seeded with.
    pub(crate) fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

/// Between HTTP/2 pings on every connection, idle or not.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection whose ping is unanswered this long is closed, and what was
/// in flight on it is retried elsewhere: a stopped (SIGSTOP) or unreachable
/// broker is left within about 3 s instead of when TCP gives up (a busy
/// broker answers pings from its connection task, well within this).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

fn endpoint(addr: &str) -> Result<Endpoint> {
    let url = if addr.starts_with("http://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(url)
        .map_err(|e| ClientError::Invalid(format!("address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20)))
}

/// Connects to a broker's gRPC address (`host:port`), with HTTP/2
/// keep-alive so a dead connection is noticed.
pub(crate) async fn connect(addr: &str) -> Result<StrataClient<Channel>> {
    let channel = endpoint(addr)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            addr: addr.to_owned(),
            reason: format!("{e}: {}", source_chain(&e)),
        })?;
    Ok(StrataClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Administrative operations.
#[derive(Debug, Clone)]
pub struct Admin {
    client: StrataClient<Channel>,
}

impl Admin {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Self> {
        Ok(Admin {
            client: connect(addr).await?,
        })
    }

    /// An admin over an existing connection.
    pub(crate) fn from_client(client: StrataClient<Channel>) -> Self {
        Admin { client }
    }

    /// The underlying gRPC client.
    pub(crate) fn grpc(&self) -> StrataClient<Channel> {
        self.client.clone()
    }

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription> {
        let r = self
            .client
            .clone()
            .create_topic(pb::CreateTopicRequest {
                name: name.to_owned(),
                partitions,
                replication_factor,
                config: Some(convert::topic_config_to_pb(config)),
            })
            .await?;
        r.into_inner()
            .topic
            .map(convert::topic_description)
            .ok_or_else(|| ClientError::Invalid("broker returned no topic".into()))
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>> {
        let r = self
            .client
            .clone()
            .list_topics(pb::ListTopicsRequest {})
            .await?
            .into_inner();
        Ok(r.topics
            .into_iter()
            .map(convert::topic_description)
            .collect())
    }

    /// One topic, with partition figures.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let r = self
            .client
            .clone()
            .describe_topic(pb::DescribeTopicRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        Ok(convert::topic_description(r))
    }

    /// Changes the settings given in `config`.
    pub async fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<TopicDescription> {
        let r = self
            .client
            .clone()
            .alter_topic_config(pb::AlterTopicConfigRequest {
                name: name.to_owned(),
                config: Some(convert::topic_config_to_pb(config)),
            })
            .await?
            .into_inner();
        Ok(convert::topic_description(r))
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.client
            .clone()
            .delete_topic(pb::DeleteTopicRequest {
                name: name.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Resolves an offset spec on one partition.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<PartitionOffsets> {
        let r = self
            .client
            .clone()
            .list_offsets(pb::ListOffsetsRequest {
                topic: topic.to_owned(),
                partition,
                spec: Some(convert::offset_spec_to_pb(spec)),
            })
            .await?
            .into_inner();
        Ok(convert::partition_offsets(r))
    }

    /// Cluster metadata (brokers, topics, partitions).
    pub async fn metadata(&self, topics: &[String]) -> Result<Metadata> {
        let r = self
            .client
            .clone()
            .metadata(pb::MetadataRequest {
                topics: topics.to_vec(),
            })
            .await?
            .into_inner();
        Ok(convert::metadata(r))
    }

    /// Commits offsets (the next offset to consume) of a group.
    pub async fn commit(&self, group: &str, topic: &str, offsets: &[(u32, u64)]) -> Result<()> {
        self.client
            .clone()
            .commit_offsets(pb::CommitOffsetsRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
                offsets: convert::partition_offsets_to_pb(offsets),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// A group's committed offsets on a topic.
    pub async fn committed(&self, group: &str, topic: &str) -> Result<Vec<(u32, u64)>> {
        let r = self
            .client
            .clone()
            .fetch_committed(pb::FetchCommittedRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
            })
            .await?
            .into_inner();
        Ok(convert::partition_offsets_from_pb(r.offsets))
    }

    /// Commits offsets as a member of the group (`member_id`, under its
    /// `member_epoch`): refused with FENCED_MEMBER_EPOCH for a partition
    /// the member does not own or under a stale epoch.
    pub async fn commit_as_member(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        self.client
            .clone()
            .commit_offsets(pb::CommitOffsetsRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
                offsets: convert::partition_offsets_to_pb(offsets),
                member_id: member_id.to_owned(),
                member_epoch,
            })
            .await?;
        Ok(())
    }

    /// A group's committed offsets on every topic.
    pub async fn committed_all(&self, group: &str) -> Result<Vec<GroupOffsets>> {
        let r = self
            .client
            .clone()
            .fetch_committed(pb::FetchCommittedRequest {
                group: group.to_owned(),
                topic: String::new(),
            })
            .await?
            .into_inner();
        Ok(r.topics.into_iter().map(convert::group_offsets).collect())
    }

    /// Every group of the cluster, with their committed offsets.
    pub async fn list_groups(&self) -> Result<GroupListing> {
        let r = self
            .client
            .clone()
            .list_groups(pb::ListGroupsRequest {})
            .await?
            .into_inner();
        Ok(convert::group_listing(r))
    }

    /// Where a group is coordinated.
    pub async fn find_coordinator(&self, group: &str) -> Result<GroupCoordinator> {
        let r = self
            .client
            .clone()
            .find_coordinator(pb::FindCoordinatorRequest {
                group: group.to_owned(),
            })
            .await?
            .into_inner();
        Ok(GroupCoordinator {
            node_id: r.node_id,
            grpc_addr: r.grpc_addr,
            partition: r.partition,
        })
    }

    /// A group's members, assignments, offsets and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let r = self
            .client
            .clone()
            .describe_group(pb::DescribeGroupRequest {
                group: group.to_owned(),
            })
            .await?
            .into_inner();
        Ok(convert::group_description(r))
    }

    /// Turns a group's retention hold on or off: while on, retention keeps
    /// the records the group has not consumed (within the broker's hold
    /// limits).
    pub async fn set_group_hold(&self, group: &str, hold: bool) -> Result<()> {
        self.client
            .clone()
            .set_group_hold(pb::SetGroupHoldRequest {
                group: group.to_owned(),
                hold,
            })
            .await?;
        Ok(())
    }

    /// Deletes a group without members, and its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.client
            .clone()
            .delete_group(pb::DeleteGroupRequest {
                group: group.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Sets a group's offsets on a topic, backwards too; the group must
    /// have no members.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        self.client
            .clone()
            .reset_group_offsets(pb::ResetGroupOffsetsRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
                offsets: convert::partition_offsets_to_pb(offsets),
            })
            .await?;
        Ok(())
    }
}
