//! Cluster administration: node status joined into a cluster-wide view
//! (every partition's leader, replicas and their lag), forming a cluster,
//! adding and removing nodes, moving leadership and replicas; and the
//! domain types of that view ([`ClusterStatus`], [`NodeStatus`],
//! [`ReplicaStatus`], …), built from the wire's messages in `convert.rs`.
//!
//! Operations that only a group's leader can perform follow `NOT_LEADER`
//! hints (and wait out an election) for up to [`LEADER_WAIT`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use strata_proto::pb::{self, strata_client::StrataClient};
use tonic::transport::Channel;

use crate::admin::{Admin, connect};
use crate::convert;
use crate::error::{ClientError, Result};
use crate::retry::Backoff;
pub use crate::types::{NodeStatus, ReplicaRole, ReplicaStatus};

/// How long a leader-only operation follows hints and waits for a leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Between asks while a group has no leader: below 200 ms, then below
/// 400 ms (200 ms on average from the second wait on, the fixed poll it
/// replaces; an election takes 300-600 ms).
const ELECTION_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_millis(400));
/// How long `status` waits for each node.
pub const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a node gave no status.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeUnreachable {
    /// No connection within [`NODE_STATUS_TIMEOUT`].
    #[error("connect timed out")]
    ConnectTimedOut,
    /// No answer within [`NODE_STATUS_TIMEOUT`].
    #[error("status timed out")]
    StatusTimedOut,
    /// Connecting or asking failed.
    #[error(transparent)]
    Failed(#[from] ClientError),
}

/// One node, as the metadata lists it, with its own report (or why there
/// is none: it is down or unreachable).
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Node id.
    pub node_id: u64,
    /// Client (gRPC) address.
    pub grpc_addr: String,
    /// The node's report, or why it has none.
    pub status: std::result::Result<NodeStatus, NodeUnreachable>,
}

/// A replica's position relative to its partition's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaLag {
    /// Records behind the leader's high watermark (0: caught up).
    Records(u64),
    /// The replica's node did not answer.
    Down,
    /// The node answered but does not host the replica (yet).
    Missing,
}

/// A partition across the cluster.
#[derive(Clone, Debug)]
pub struct PartitionView {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Leader as its replicas report it (`None`: no leader known).
    pub leader: Option<u64>,
    /// Placement from the metadata.
    pub replicas: Vec<u64>,
    /// The leader's high watermark (`None` without a reachable leader).
    pub high_watermark: Option<u64>,
    /// Per replica.
    pub lag: BTreeMap<u64, ReplicaLag>,
}

/// The cluster as its nodes report it.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    /// Every registered node.
    pub nodes: Vec<NodeView>,
    /// The metadata group's leader, as the reachable nodes report it.
    pub metadata_leader: Option<u64>,
    /// The metadata group's voters.
    pub metadata_voters: Vec<u64>,
    /// Every partition of every topic.
    pub partitions: Vec<PartitionView>,
}

impl Admin {
    /// This broker's view of the groups it hosts.
    pub async fn node_status(&self) -> Result<NodeStatus> {
        let r = self
            .grpc()
            .node_status(pb::NodeStatusRequest {})
            .await?
            .into_inner();
        Ok(convert::node_status(r))
    }

    /// Asks every node of the cluster for its status and joins the
    /// answers: leaders, replicas and their lag in records.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let meta = self.metadata(&[]).await?;
        let mut nodes = Vec::new();
        for b in &meta.brokers {
            let status = async {
                let a = tokio::time::timeout(NODE_STATUS_TIMEOUT, Admin::connect(&b.grpc_addr))
                    .await
                    .map_err(|_| NodeUnreachable::ConnectTimedOut)??;
                let status = tokio::time::timeout(NODE_STATUS_TIMEOUT, a.node_status())
                    .await
                    .map_err(|_| NodeUnreachable::StatusTimedOut)??;
                Ok::<_, NodeUnreachable>(status)
            }
            .await;
            nodes.push(NodeView {
                node_id: b.node_id,
                grpc_addr: b.grpc_addr.clone(),
                status,
            });
        }
        // Each reachable node's replica of (topic, partition).
        let mut replicas: BTreeMap<(String, u32), BTreeMap<u64, ReplicaStatus>> = BTreeMap::new();
        let (mut metadata_leader, mut metadata_voters, mut best_term) = (None, Vec::new(), 0);
        for n in &nodes {
            let Ok(s) = &n.status else { continue };
            for r in &s.replicas {
                if r.is_metadata() {
                    if r.term >= best_term {
                        best_term = r.term;
                        metadata_leader = r.leader;
                        metadata_voters = r.voters.clone();
                    }
                } else {
                    replicas
                        .entry((r.topic.clone(), r.partition))
                        .or_default()
                        .insert(n.node_id, r.clone());
                }
            }
        }
        let mut partitions = Vec::new();
        for t in &meta.topics {
            for p in &t.partition_info {
                let here = replicas.remove(&(t.name.clone(), p.partition));
                let here = here.unwrap_or_default();
                // The leader is the replica that says it leads in the
                // highest term.
                let leader = here
                    .iter()
                    .filter(|(_, r)| r.role == ReplicaRole::Leader)
                    .max_by_key(|(_, r)| r.term)
                    .map(|(id, _)| *id);
                let hw = leader.and_then(|l| here.get(&l)).map(|r| r.high_watermark);
                let lag = p
                    .replicas
                    .iter()
                    .map(|id| {
                        let up = nodes.iter().any(|n| n.node_id == *id && n.status.is_ok());
                        let lag = match (here.get(id), up) {
                            (_, false) => ReplicaLag::Down,
                            (None, true) => ReplicaLag::Missing,
                            (Some(r), true) => ReplicaLag::Records(
                                hw.unwrap_or(r.high_watermark)
                                    .saturating_sub(r.high_watermark),
                            ),
                        };
                        (*id, lag)
                    })
                    .collect();
                partitions.push(PartitionView {
                    topic: t.name.clone(),
                    partition: p.partition,
                    leader,
                    replicas: p.replicas.clone(),
                    high_watermark: hw,
                    lag,
                });
            }
        }
        Ok(ClusterStatus {
            nodes,
            metadata_leader,
            metadata_voters,
            partitions,
        })
    }

    /// Forms a cluster from nodes started without `--peers` (send to one of
    /// them): `peers` maps every initial voter's id to its Raft address.
    /// Returns false if the node already belonged to a cluster.
    pub async fn init_cluster(&self, peers: BTreeMap<u64, String>) -> Result<bool> {
        Ok(self
            .grpc()
            .init_cluster(pb::InitClusterRequest {
                peers: peers.into_iter().collect(),
            })
            .await?
            .into_inner()
            .initialized)
    }

    /// Adds a started node (run with `--node-id` and `--raft-addr`, no
    /// `--peers`) to the cluster; returns once it has joined.
    pub async fn add_node(&self, node_id: u64, raft_addr: &str) -> Result<()> {
        let req = pb::AddNodeRequest {
            node_id,
            raft_addr: raft_addr.to_owned(),
        };
        self.on_leader(|mut c| {
            let req = req.clone();
            async move { c.add_node(req).await }
        })
        .await?;
        Ok(())
    }

    /// Removes a node that hosts no partition replicas.
    pub async fn remove_node(&self, node_id: u64) -> Result<()> {
        self.on_leader(
            |mut c| async move { c.remove_node(pb::RemoveNodeRequest { node_id }).await },
        )
        .await?;
        Ok(())
    }

    /// Moves leadership of a partition (or, with `None`, of the metadata
    /// group) to node `to`. Answers whether `to` already led it (then
    /// nothing moved).
    pub async fn transfer_leader(&self, group: Option<(&str, u32)>, to: u64) -> Result<bool> {
        let req = pb::TransferLeaderRequest {
            topic: group.map(|g| g.0.to_owned()).unwrap_or_default(),
            partition: group.map_or(0, |g| g.1),
            to,
        };
        let r = self
            .on_leader(|mut c| {
                let req = req.clone();
                async move { c.transfer_leader(req).await }
            })
            .await?;
        Ok(r.already_leader)
    }

    /// Moves a partition to `replicas`; new replicas catch up (from a
    /// snapshot if retention already trimmed the log) first.
    pub async fn reassign(&self, topic: &str, partition: u32, replicas: &[u64]) -> Result<()> {
        let req = pb::ReassignPartitionRequest {
            topic: topic.to_owned(),
            partition,
            replicas: replicas.to_vec(),
        };
        self.on_leader(|mut c| {
            let req = req.clone();
            async move { c.reassign_partition(req).await }
        })
        .await?;
        Ok(())
    }

    /// Runs `call` where it can be served: on `NOT_LEADER` moves to the
    /// hinted leader, or waits for one to be elected, up to `LEADER_WAIT`.
    async fn on_leader<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(StrataClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut client = self.grpc();
        let mut waits = 0;
        loop {
            let e = match call(client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => ClientError::from(status),
            };
            let ClientError::NotLeader { leader, .. } = &e else {
                return Err(e);
            };
            if Instant::now() > deadline {
                return Err(e);
            }
            match leader {
                Some(l) => client = connect(l).await?,
                None => {
                    tokio::time::sleep(ELECTION_BACKOFF.delay(waits)).await;
                    waits += 1;
                }
            }
        }
    }
}
