//! A node of a Strata cluster: its metadata group, the partition groups
//! placed on it, and the cluster operations the services call.
//!
//! The metadata group spans the cluster's voters. Every node watches the
//! applied metadata and *reconciles*: it opens a Raft group for every
//! partition placed on it (initializing it if the node is in the partition's
//! initial placement and the log is empty — every initial replica
//! initializes with the same membership, which openraft allows) and closes
//! (and deletes) the groups no longer placed on it. Metadata writes from any
//! node are forwarded to the metadata leader over the Raft peer service.
//!
//! Because reconciling closes and deletes, the placement is changed only
//! where that is safe: a reassignment (see [`Cluster::reassign`]) places
//! the union of old and new replicas while the group's membership changes,
//! and the new set only once the dropped replicas are out of the committed
//! voters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::log::{
    LogConfig, PartitionLog, PartitionWriter, SyncObserver, WriterConfig, WriterPool,
};
use crate::metrics::Metrics;
use crate::producer_id::ProducerIdKey;
use crate::raft::channels::Channels;
use crate::raft::hibernate::Hibernation;
use crate::raft::meta::{LeaderRecord, TopicMeta, place};
use crate::raft::network::{Group, Groups, NetworkFactory, forward_meta_write};
use crate::raft::sm::{GroupSm, Machine, PartitionState, SmShared};
use crate::raft::store::{InstallHint, LogStore};
use crate::raft::{META_GROUP, MetaCmd, MetaState, NodeInfo, Raft, Reply, raft_config};
use crate::settings::{TopicSettings, validate_topic_name};
use crate::topic::{LeaderHints, Partition};

/// How long a metadata write keeps retrying to find a leader.
const META_WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long adding a node waits for it to catch up and register.
const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reassignment waits for its new replicas to catch up.
const REASSIGN_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reassignment that removes the leader waits for a successor.
const REASSIGN_HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The group name of a partition.
pub fn group_name(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

/// What a node needs to join a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: u64,
    /// This node's addresses, as others reach them.
    pub node: NodeInfo,
    /// Initial voters of the metadata group (id → Raft address), this node
    /// included. Empty: wait to be added to a cluster (or `cluster init`).
    pub peers: BTreeMap<u64, String>,
}

/// One Raft group as this node sees it (`strata cluster status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// `None` for the metadata group.
    pub partition: Option<(String, u32)>,
    /// leader, follower, candidate or learner.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Voters of the effective membership.
    pub voters: Vec<u64>,
    /// Learners of the effective membership.
    pub learners: Vec<u64>,
    /// End of the local Raft log (last index + 1; 0 when empty).
    pub log_end: u64,
    /// End of what the state machine applied.
    pub applied_end: u64,
    /// Partitions: the applied next offset (high watermark).
    pub high_watermark: u64,
    /// Partitions: the log start offset.
    pub log_start_offset: u64,
    /// On the leader: each replica's matched log end.
    pub matched_end: BTreeMap<u64, u64>,
    /// End of the last snapshot.
    pub snapshot_end: u64,
    /// End of the deleted prefix of the Raft log.
    pub purged_end: u64,
}

fn group_status(raft: &Raft, partition: Option<(String, u32)>) -> GroupStatus {
    let m = raft.metrics().borrow_watched().clone();
    let end = |l: Option<u64>| l.map_or(0, |i| i + 1);
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Follower => "follower",
        // The group stopped (a storage error; see the node's log).
        ServerState::Shutdown => "stopped",
    };
    let membership = m.membership_config.membership();
    GroupStatus {
        partition,
        role,
        term: m.current_term,
        leader: m.current_leader,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        log_end: end(m.last_log_index),
        applied_end: end(m.last_applied.as_ref().map(|l| l.index)),
        high_watermark: 0,
        log_start_offset: 0,
        snapshot_end: end(m.snapshot.as_ref().map(|l| l.index)),
        purged_end: end(m.purged.as_ref().map(|l| l.index)),
        matched_end: m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, end(l.as_ref().map(|l| l.index))))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A partition group hosted here.
struct Hosted {
    partition: Arc<Partition>,
    raft: Raft,
    dir: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// This node's view of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    broker: BrokerConfig,
    metrics: Metrics,
    groups: Groups,
    channels: Channels,
    /// The writer threads of every partition here.
    pool: WriterPool,
    /// Puts idle partition groups to sleep; tracks which peers are alive.
    hibernation: Arc<Hibernation>,
    /// Leaderships won here and not yet recorded in the metadata.
    leaderships: Mutex<BTreeMap<(String, u32), LeaderRecord>>,
    leaderships_changed: Arc<tokio::sync::Notify>,
    meta: Raft,
    /// The metadata replica has heard from a leader since start.
    meta_contact: Arc<std::sync::atomic::AtomicBool>,
    meta_sm: Arc<SmShared>,
    hosted: RwLock<HashMap<(String, u32), Hosted>>,
    reconcile_lock: tokio::sync::Mutex<()>,
    started: Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

/// How long a new group's other replicas wait for its first replica to
/// initialize it before they do.
const INIT_FALLBACK: Duration = Duration::from_secs(5);

/// Partition replicas opened concurrently by one reconciliation.
const OPEN_CONCURRENCY: usize = 32;

fn storage_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(crate::log::LogError::Invalid(e.to_string()))
}

/// Opens a group's log, store and state machine and starts its Raft.
#[allow(clippy::too_many_arguments)]
async fn open_group(
    name: &str,
    node_id: u64,
    dir: PathBuf,
    log_config: LogConfig,
    machine: Machine,
    channels: &Channels,
    pool: &WriterPool,
    writer_config: WriterConfig,
    observer: Option<SyncObserver>,
    snapshot_every: Option<u64>,
    tick: bool,
) -> Result<
    (
        Group,
        Arc<PartitionWriter>,
        GroupSm,
        mpsc::UnboundedReceiver<u64>,
    ),
    BrokerError,
> {
    // Recovery reads and fsyncs: off the async workers, so that many
    // groups open at once (see `reconcile`).
    let pool = pool.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let log = PartitionLog::open_dir(&dir, log_config)?;
        // A snapshot transfer cut by a crash is sent again from the start.
        crate::raft::snapshot::remove_staged(log.storage().as_ref(), &dir).map_err(storage_err)?;
        let writer = Arc::new(PartitionWriter::spawn_in(
            &pool,
            log,
            writer_config,
            observer,
        ));
        let hint = Arc::new(Mutex::new(InstallHint::default()));
        let store = LogStore::open(writer.clone(), hint.clone()).map_err(storage_err)?;
        let (trim_tx, trim_rx) = mpsc::unbounded_channel();
        let in_log = |id: &crate::raft::RaftLogId| writer.read().holds(crate::raft::to_log_id(id));
        let storage = writer.read().storage().clone();
        let sm = GroupSm::open(storage.clone(), dir.clone(), machine, hint, trim_tx, in_log)
            .map_err(storage_err)?;
        Ok::<_, BrokerError>((writer, store, sm, trim_rx, storage, dir))
    })
    .await
    .map_err(storage_err)?;
    let (writer, store, sm, trim_rx, storage, dir) = opened?;
    let config = Arc::new(raft_config(name, snapshot_every, tick).map_err(storage_err)?);
    let raft = Raft::new(
        node_id,
        config,
        NetworkFactory::new(channels.clone(), name.to_owned()),
        store,
        sm.clone(),
    )
    .await
    .map_err(storage_err)?;
    let group = Group {
        raft,
        storage,
        dir,
        leader_contact: Arc::default(),
    };
    Ok((group, writer, sm, trim_rx))
}

impl Cluster {
    /// Opens the metadata group, starts reconciling, and (with peers)
    /// initializes the cluster if this node has never been part of one.
    pub async fn start(
        config: ClusterConfig,
        broker: BrokerConfig,
        metrics: Metrics,
        pool: WriterPool,
    ) -> Result<Arc<Cluster>, BrokerError> {
        let channels = Channels::default();
        let groups: Groups = Arc::default();
        let dir = broker.data_dir.join("raft-meta");
        let (meta_group, _writer, sm, _trims) = open_group(
            META_GROUP,
            config.node_id,
            dir,
            LogConfig {
                // Small segments, so purging behind a snapshot frees space.
                segment_bytes_max: 8 << 20,
                ..LogConfig::default()
            },
            Machine::Meta(MetaState::default()),
            &channels,
            &pool,
            WriterConfig::default(),
            None,
            Some(broker.meta_snapshot_entries),
            true,
        )
        .await?;
        let meta = meta_group.raft.clone();
        let meta_contact = meta_group.leader_contact.clone();
        groups.write().insert(META_GROUP.to_owned(), meta_group);
        let hibernation = Hibernation::new(config.node_id, channels.clone(), broker.raft_hibernate);
        let cluster = Arc::new(Cluster {
            hibernation,
            leaderships: Mutex::default(),
            leaderships_changed: Arc::default(),
            config,
            broker,
            metrics,
            groups,
            channels,
            pool,
            meta,
            meta_contact,
            meta_sm: sm.shared().clone(),
            hosted: RwLock::default(),
            reconcile_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
        });
        if !cluster.config.peers.is_empty() {
            cluster.init(cluster.config.peers.clone()).await?;
        }
        tokio::spawn(reconcile_loop(Arc::downgrade(&cluster)));
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(
            cluster
                .hibernation
                .clone()
                .run(move || weak.upgrade().map(|c| c.peer_addrs()).unwrap_or_default()),
        );
        tokio::spawn(register_loop(Arc::downgrade(&cluster)));
        tokio::spawn(report_leaders_loop(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    /// The Raft groups hosted here (for the peer service).
    pub fn groups(&self) -> Groups {
        self.groups.clone()
    }

    /// The hibernation service (for the peer service).
    pub fn hibernation(&self) -> Arc<Hibernation> {
        self.hibernation.clone()
    }

    /// Gauges of this node's partition groups.
    pub fn raft_figures(&self) -> crate::metrics::RaftFigures {
        let h = self.hibernation.stats();
        let leading = self
            .hosted
            .read()
            .values()
            .filter(|h| h.partition.check_leader().is_ok())
            .count();
        crate::metrics::RaftFigures {
            groups: h.groups as u64,
            leading: leading as u64,
            asleep: h.asleep as u64,
            peers_down: h.peers_down as u64,
        }
    }

    /// Gauges of every partition replica hosted here.
    pub fn partition_figures(&self) -> Vec<crate::metrics::PartitionFigures> {
        let hosted = self.hosted.read();
        let mut out: Vec<_> = hosted
            .iter()
            .map(|((topic, partition), h)| {
                let st = group_status(&h.raft, None);
                let (size_bytes, segments) = h.partition.size();
                let leading = st.role == "leader";
                let lag_entries = if leading {
                    st.voters
                        .iter()
                        .chain(&st.learners)
                        .map(|id| {
                            let matched = if *id == self.config.node_id {
                                st.log_end
                            } else {
                                st.matched_end.get(id).copied().unwrap_or(0)
                            };
                            (*id, st.log_end.saturating_sub(matched))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                crate::metrics::PartitionFigures {
                    topic: topic.clone(),
                    partition: *partition,
                    size_bytes,
                    segments: segments as u64,
                    high_watermark: h.partition.high_watermark(),
                    log_start_offset: h.partition.log_start_offset(),
                    producers: h.partition.producer_count() as u64,
                    held_bytes: h.partition.held_bytes(),
                    replica: Some(crate::metrics::ReplicaFigures {
                        leader: st.leader.unwrap_or(0),
                        leading,
                        quorum: h.partition.quorum_reachable(),
                        term: st.term,
                        lag_entries,
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// Every registered node's Raft address, without cloning the rest of
    /// the metadata.
    fn peer_addrs(&self) -> BTreeMap<u64, String> {
        self.with_meta(|m| {
            m.nodes
                .iter()
                .map(|(id, n)| (*id, n.raft_addr.clone()))
                .collect()
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Initializes the metadata group with `peers` as voters, unless this
    /// node already belongs to a cluster (then nothing changes).
    pub async fn init(&self, peers: BTreeMap<u64, String>) -> Result<bool, BrokerError> {
        if !peers.contains_key(&self.config.node_id) {
            return Err(BrokerError::InvalidRequest(format!(
                "the initial members {:?} do not include this node ({})",
                peers.keys().collect::<Vec<_>>(),
                self.config.node_id
            )));
        }
        if self.meta.is_initialized().await.map_err(storage_err)? {
            return Ok(false);
        }
        let members: BTreeMap<u64, NodeInfo> = peers
            .into_iter()
            .map(|(id, raft_addr)| {
                let info = if id == self.config.node_id {
                    self.config.node.clone()
                } else {
                    NodeInfo {
                        raft_addr,
                        ..Default::default()
                    }
                };
                (id, info)
            })
            .collect();
        match self.meta.initialize(members).await {
            Ok(()) => Ok(true),
            Err(e) if e.api_error().is_some() => Ok(false),
            Err(e) => Err(storage_err(e)),
        }
    }

    /// A copy of the applied metadata.
    pub fn meta_state(&self) -> MetaState {
        self.meta_sm.state().meta().cloned().unwrap_or_default()
    }

    /// Reads the applied metadata in place, without cloning it (the state
    /// machine is locked meanwhile: keep `f` short).
    pub fn with_meta<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        let st = self.meta_sm.state();
        match st.meta() {
            Some(m) => f(m),
            None => f(&MetaState::default()),
        }
    }

    /// The cluster's producer-id key as applied here, waiting up to
    /// `timeout` for it: a node whose metadata lags behind the key's
    /// creation (the first InitProducer, at another node) learns it within
    /// a replication round.
    pub async fn producer_id_key(&self, timeout: Duration) -> Option<ProducerIdKey> {
        let mut applied = self.meta_sm.applied_watch.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(k) = self.with_meta(|m| m.producer_id_key) {
                return Some(k);
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// The metadata group's Raft.
    pub fn meta_raft(&self) -> &Raft {
        &self.meta
    }

    fn hints(&self) -> LeaderHints {
        let sm = self.meta_sm.clone();
        Arc::new(move |node| {
            sm.state()
                .meta()
                .and_then(|m| m.nodes.get(&node))
                .map(|n| n.grpc_addr.clone())
                .filter(|a| !a.is_empty())
        })
    }

    /// Partition leader hints: as [`Self::hints`], but a leader whose node
    /// this node's probes find down is no hint (a client sent there would
    /// wait for nothing; the group is electing another).
    fn live_hints(&self) -> LeaderHints {
        let hints = self.hints();
        let hibernation = self.hibernation.clone();
        Arc::new(move |node| hibernation.is_up(node).then(|| hints(node)).flatten())
    }

    /// The client address of a node, if known.
    pub fn grpc_addr_of(&self, node: u64) -> Option<String> {
        (self.hints())(node)
    }

    /// Writes a metadata command through the metadata leader, wherever it
    /// is; retries while no leader is known, up to a deadline. Returns once
    /// this node has applied the write too, so what the caller does next
    /// here sees it.
    pub async fn meta_write(&self, cmd: MetaCmd) -> Result<Reply, BrokerError> {
        let deadline = Instant::now() + META_WRITE_DEADLINE;
        let (reply, index) = loop {
            let err = match crate::raft::meta::write_here(&self.meta, cmd.clone()).await {
                Ok(r) => break r,
                Err(e) => match e.forward_to_leader() {
                    Some(f) => match &f.leader_node {
                        Some(node) if f.leader_id != Some(self.config.node_id) => {
                            match forward_meta_write(&self.channels, &node.raft_addr, &cmd).await {
                                Ok(r) => break r,
                                Err(e) => e.to_string(),
                            }
                        }
                        _ => "no metadata leader yet".to_owned(),
                    },
                    None => e.to_string(),
                },
            };
            if Instant::now() > deadline {
                tracing::warn!(error = %err, "metadata write gave up");
                return Err(BrokerError::NotLeader { leader: None });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Only writes whose effect the caller reads here next need this
        // node to have applied them; the others answer at once (a follower
        // learns the commit with the next heartbeat, up to 100 ms later).
        let read_back = !matches!(
            cmd,
            MetaCmd::AllocProducerId | MetaCmd::SetLeader { .. } | MetaCmd::SetLeaders(_)
        );
        if !read_back {
            return Ok(reply);
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if let Err(e) = self
            .meta
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "metadata write applied here")
            .await
        {
            tracing::warn!(error = %e, index, "metadata write committed but not yet applied on this node");
        }
        Ok(reply)
    }

    /// The hosted partition, or why it cannot be served here.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        if let Some(h) = self.hosted.read().get(&(topic.to_owned(), partition)) {
            return Ok(h.partition.clone());
        }
        let leader = self.with_meta(|meta| {
            let t = meta.topics.get(topic).ok_or_else(|| {
                if self.meta_current() {
                    BrokerError::UnknownTopic(topic.to_owned())
                } else {
                    BrokerError::MetadataBehind(topic.to_owned())
                }
            })?;
            if partition as usize >= t.placement.len() {
                return Err(BrokerError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition,
                    partitions: t.placement.len() as u32,
                });
            }
            Ok(meta
                .leaders
                .get(&(topic.to_owned(), partition))
                .map(|l| l.node)
                .or_else(|| t.placement[partition as usize].first().copied()))
        })?;
        Err(BrokerError::NotLeader {
            leader: leader.and_then(|n| self.grpc_addr_of(n)),
        })
    }

    /// Whether this node's metadata is known to be current: it leads the
    /// metadata group with a quorum, or has heard from its leader since it
    /// started, and has applied everything it knows to be committed. A node killed
    /// and restarted, or cut off, is not, and does not call a topic it has
    /// not heard of unknown.
    pub fn meta_current(&self) -> bool {
        let m = self.meta.metrics().borrow_watched().clone();
        let applied = m.last_applied.map(|l| l.index);
        let Some(committed) = m.cluster_committed.or(m.local_committed) else {
            return false;
        };
        // A leader (won in this process's life) knows the commit point once
        // it has committed an entry of its own term, its blank entry; a
        // follower knows it from that leader's appends, and only once one
        // has reached it since it started (its persisted vote and hint
        // would otherwise pass for the current term's).
        let heard = m.state == ServerState::Leader
            || self.meta_contact.load(std::sync::atomic::Ordering::Relaxed);
        heard
            && m.current_leader.is_some()
            && committed.leader_id.term == m.current_term
            && applied >= Some(committed.index)
    }

    /// Hosted partitions.
    pub fn hosted(&self) -> Vec<Arc<Partition>> {
        self.hosted
            .read()
            .values()
            .map(|h| h.partition.clone())
            .collect()
    }

    /// Every group hosted here: the metadata group first, then partitions
    /// by topic and number.
    pub fn status(&self) -> Vec<GroupStatus> {
        let mut out = vec![group_status(&self.meta, None)];
        let hosted = self.hosted.read();
        let mut keys: Vec<_> = hosted.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let h = &hosted[&k];
            let mut st = group_status(&h.raft, Some(k));
            st.high_watermark = h.partition.high_watermark();
            st.log_start_offset = h.partition.log_start_offset();
            out.push(st);
        }
        out
    }

    /// This node's Raft address.
    pub fn raft_addr(&self) -> &str {
        &self.config.node.raft_addr
    }

    /// Creates a topic, placing replicas on distinct nodes.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication: u32,
        settings: TopicSettings,
    ) -> Result<TopicMeta, BrokerError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > self.broker.partitions_max {
            return Err(BrokerError::InvalidConfig(format!(
                "partitions must be between 1 and {}, got {partitions}",
                self.broker.partitions_max
            )));
        }
        settings.validate(&self.broker.log)?;
        let meta = self.meta_state();
        let nodes: Vec<u64> = meta.nodes.keys().copied().collect();
        let replication = if replication == 0 { 1 } else { replication };
        if !(1..=5).contains(&replication) || replication as usize > nodes.len() {
            return Err(BrokerError::InvalidConfig(format!(
                "replication factor must be between 1 and min(5, nodes = {}), got {replication}",
                nodes.len()
            )));
        }
        // Where a topic's placement starts: spread over the nodes by name,
        // the same on every node (the hash is stable across versions).
        let start =
            (twox_hash::XxHash64::oneshot(0, name.as_bytes()) % nodes.len() as u64) as usize;
        let t = TopicMeta {
            name: name.to_owned(),
            settings,
            replication,
            placement: place(&nodes, partitions, replication, start),
            initial: place(&nodes, partitions, replication, start),
        };
        match self.meta_write(MetaCmd::CreateTopic(t.clone())).await? {
            Reply::Refused(r) => Err(r.into()),
            _ => Ok(t),
        }
    }

    /// Applies a metadata command that must succeed.
    pub async fn meta_command(&self, cmd: MetaCmd) -> Result<u64, BrokerError> {
        match self.meta_write(cmd).await? {
            Reply::Refused(r) => Err(r.into()),
            Reply::Done(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// Waits until this node's metadata has applied everything committed
    /// when the call started (read-your-writes for the CLI after a create).
    pub async fn wait_meta_applied(&self, timeout: Duration) {
        let target = self
            .meta
            .metrics()
            .borrow_watched()
            .local_committed
            .map(|c| c.index);
        if let Some(t) = target {
            let _ = self
                .meta
                .wait(Some(timeout))
                .applied_index_at_least(Some(t), "metadata caught up")
                .await;
        }
    }

    /// Adds a started node to the metadata group as a voter (call on the
    /// metadata leader). Returns once the node has caught up, joined and
    /// registered its client addresses, so partitions can be assigned to it.
    pub async fn add_node(&self, id: u64, info: NodeInfo) -> Result<(), BrokerError> {
        let leader = self.meta_leader()?;
        if leader != self.config.node_id {
            return Err(BrokerError::NotLeader {
                leader: self.grpc_addr_of(leader),
            });
        }
        let unreachable = || {
            BrokerError::InvalidRequest(format!(
                "node {id} did not catch up within {ADD_NODE_TIMEOUT:?}: is it running with --node-id {id} --raft-addr {} (and no --peers)?",
                info.raft_addr
            ))
        };
        tokio::time::timeout(
            ADD_NODE_TIMEOUT,
            self.meta.add_learner(id, info.clone(), true),
        )
        .await
        .map_err(|_| unreachable())?
        .map_err(|e| BrokerError::InvalidRequest(format!("adding node {id}: {e}")))?;
        let mut voters: BTreeSet<u64> = self.meta.voter_ids().collect();
        voters.insert(id);
        self.meta
            .change_membership(voters, false)
            .await
            .map_err(|e| BrokerError::InvalidRequest(format!("adding node {id}: {e}")))?;
        // The node registers its own client addresses once it is a member.
        let deadline = Instant::now() + ADD_NODE_TIMEOUT;
        let mut applied = self.meta_sm.applied_watch.subscribe();
        while !self.meta_state().nodes.contains_key(&id) {
            if Instant::now() > deadline {
                return Err(unreachable());
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
        }
        Ok(())
    }

    /// Removes a node that hosts no replicas from the metadata group.
    pub async fn remove_node(&self, id: u64) -> Result<(), BrokerError> {
        let leader = self.meta_leader()?;
        if leader != self.config.node_id {
            return Err(BrokerError::NotLeader {
                leader: self.grpc_addr_of(leader),
            });
        }
        let meta = self.meta_state();
        meta.check_removable(id)?;
        if !self.meta.voter_ids().any(|v| v == id) && !meta.nodes.contains_key(&id) {
            return Err(BrokerError::InvalidRequest(format!(
                "node {id} is not in the cluster"
            )));
        }
        // Membership first: from then on the node cannot register again.
        let voters: BTreeSet<u64> = self.meta.voter_ids().filter(|v| *v != id).collect();
        self.meta
            .change_membership(voters, false)
            .await
            .map_err(|e| BrokerError::InvalidRequest(format!("removing node {id}: {e}")))?;
        self.meta_command(MetaCmd::RemoveNode { id }).await?;
        Ok(())
    }

    fn meta_leader(&self) -> Result<u64, BrokerError> {
        self.meta
            .metrics()
            .borrow_watched()
            .current_leader
            .ok_or(BrokerError::NotLeader { leader: None })
    }

    /// Moves a partition to `replicas` (call on the partition's leader),
    /// in an order that keeps every acknowledged record on a quorum and
    /// every replica's data until it has left the group:
    ///
    /// 1. the placement becomes the old replicas *and* the new ones (as
    ///    Kafka's reassignment does), so the new nodes open their replica
    ///    and nobody closes one;
    /// 2. the new replicas join as learners and catch up to the leader's
    ///    log end as it was when they joined (from a snapshot if the log
    ///    was trimmed), within [`REASSIGN_CATCH_UP_TIMEOUT`]; past it the
    ///    learners are removed, the placement restored, and the call fails;
    /// 3. the voter set becomes `replicas` (joint consensus; the call
    ///    returns once the final configuration is committed);
    /// 4. if this node is no longer a voter, openraft's removed-leader step
    ///    down hands leadership to the most up-to-date new voter; the call
    ///    waits until the successor is recorded in the metadata (this
    ///    replica must not close before: the others would keep following
    ///    a leader whose node is up and never elect);
    /// 5. only then the placement becomes `replicas`: the dropped nodes
    ///    close their replica and delete its data, no longer voters of
    ///    the committed configuration.
    ///
    /// Running it again after a failure resumes from where it stopped.
    pub async fn reassign(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u64>,
    ) -> Result<(), BrokerError> {
        let p = self.partition(topic, partition)?;
        p.check_leader()?;
        p.renew_lease().await?;
        let Some(raft) = p.raft().cloned() else {
            unreachable!("cluster partitions are replicated")
        };
        let meta = self.meta_state();
        let mut distinct = replicas.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if replicas.is_empty() || distinct.len() != replicas.len() || replicas.len() > 5 {
            return Err(BrokerError::InvalidRequest(
                "replicas must be 1 to 5 distinct node ids".into(),
            ));
        }
        let mut infos = BTreeMap::new();
        for id in &replicas {
            let info = meta.nodes.get(id).cloned().ok_or_else(|| {
                BrokerError::InvalidRequest(format!("node {id} is not in the cluster"))
            })?;
            infos.insert(*id, info);
        }
        let current = meta
            .replicas(topic, partition)
            .map(<[u64]>::to_vec)
            .unwrap_or_default();
        let mut staged = current.clone();
        staged.extend(replicas.iter().filter(|id| !current.contains(id)));
        if staged != current {
            self.assign_replicas(topic, partition, staged).await?;
        }

        let membership = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let joining: Vec<u64> = replicas
            .iter()
            .copied()
            .filter(|id| !voters.contains(id))
            .collect();
        let added = async {
            for id in &joining {
                if membership.get_node(id).is_none() {
                    raft.add_learner(*id, infos[id].clone(), false)
                        .await
                        .map_err(|e| {
                            BrokerError::InvalidRequest(format!("adding replica {id}: {e}"))
                        })?;
                }
            }
            wait_replicated(&raft, &joining, REASSIGN_CATCH_UP_TIMEOUT).await
        };
        if let Err(e) = added.await {
            tracing::warn!(topic, partition, error = %e, "reassignment abandoned; undoing its first steps");
            let _ = raft
                .change_membership(
                    openraft::ChangeMembers::RemoveNodes(joining.iter().copied().collect()),
                    false,
                )
                .await;
            if let Err(e) = self.assign_replicas(topic, partition, current).await {
                tracing::warn!(topic, partition, error = %e, "could not restore the placement");
            }
            return Err(e);
        }
        // Learners left over from an abandoned attempt go first: the final
        // change is made while this node surely still leads.
        let stale: BTreeSet<u64> = membership
            .learner_ids()
            .filter(|id| !replicas.contains(id))
            .collect();
        if !stale.is_empty() {
            raft.change_membership(openraft::ChangeMembers::RemoveNodes(stale), false)
                .await
                .map_err(|e| BrokerError::InvalidRequest(format!("removing learners: {e}")))?;
        }
        let term = raft.metrics().borrow_watched().current_term;
        raft.change_membership(replicas.iter().copied().collect::<BTreeSet<_>>(), false)
            .await
            .map_err(|e| BrokerError::InvalidRequest(format!("changing replicas: {e}")))?;
        let handover = if replicas.contains(&self.config.node_id) {
            Ok(())
        } else {
            self.wait_successor(&raft, topic, partition, term, &replicas)
                .await
        };
        // The committed membership is the new set whatever the handover
        // did: the placement follows it.
        self.assign_replicas(topic, partition, replicas).await?;
        handover
    }

    async fn assign_replicas(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u64>,
    ) -> Result<u64, BrokerError> {
        self.meta_command(MetaCmd::AssignReplicas {
            topic: topic.to_owned(),
            partition,
            replicas,
        })
        .await
    }

    /// Waits, on a leader removed from its group, until it stepped down and
    /// a member of `replicas` leads in a term after `term` (as the metadata
    /// records it), up to [`REASSIGN_HANDOVER_TIMEOUT`].
    async fn wait_successor(
        &self,
        raft: &Raft,
        topic: &str,
        partition: u32,
        term: u64,
        replicas: &[u64],
    ) -> Result<(), BrokerError> {
        let deadline = Instant::now() + REASSIGN_HANDOVER_TIMEOUT;
        let mut applied = self.meta_sm.applied_watch.subscribe();
        let key = (topic.to_owned(), partition);
        loop {
            let leading = raft.metrics().borrow_watched().state == ServerState::Leader;
            let successor = self.with_meta(|m| {
                m.leaders
                    .get(&key)
                    .is_some_and(|l| l.term > term && replicas.contains(&l.node))
            });
            if !leading && successor {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrokerError::InvalidRequest(format!(
                    "{topic}/{partition} now has replicas {replicas:?}, but no new leader was \
                     recorded within {REASSIGN_HANDOVER_TIMEOUT:?} (this node still leads: {leading})"
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), applied.changed()).await;
        }
    }

    /// Asks the leader of a group (hosted and led here) to hand over.
    ///
    /// Answers `true` (and moves nothing) if `to` already leads: openraft
    /// would start a transfer to itself that ends with another leader.
    pub async fn transfer_leader(
        &self,
        topic: Option<(&str, u32)>,
        to: u64,
    ) -> Result<bool, BrokerError> {
        let raft = match topic {
            None => {
                let leader = self.meta_leader()?;
                if leader != self.config.node_id {
                    return Err(BrokerError::NotLeader {
                        leader: self.grpc_addr_of(leader),
                    });
                }
                self.meta.clone()
            }
            Some((t, p)) => {
                let part = self.partition(t, p)?;
                part.check_leader()?;
                part.renew_lease().await?;
                part.raft()
                    .cloned()
                    .ok_or(BrokerError::NotLeader { leader: None })?
            }
        };
        if !raft.voter_ids().any(|v| v == to) {
            return Err(BrokerError::InvalidRequest(format!(
                "node {to} is not a voter of that group"
            )));
        }
        if to == self.config.node_id {
            return Ok(true);
        }
        raft.trigger()
            .transfer_leader(to)
            .await
            .map_err(storage_err)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut m = raft.metrics();
        while m.borrow_watched().current_leader != Some(to) {
            if Instant::now() > deadline {
                return Err(BrokerError::InvalidRequest(format!(
                    "leadership did not move to node {to} within 5 s"
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), m.changed()).await;
        }
        Ok(false)
    }

    /// Opens or closes partition groups to match the applied metadata.
    async fn reconcile(self: &Arc<Self>) {
        let _guard = self.reconcile_lock.lock().await;
        let meta = self.meta_state();
        let me = self.config.node_id;
        let mut wanted = Vec::new();
        for t in meta.topics.values() {
            for (p, replicas) in t.placement.iter().enumerate() {
                if replicas.contains(&me) {
                    wanted.push((t.clone(), p as u32));
                }
            }
        }
        let open: std::collections::HashSet<(String, u32)> =
            self.hosted.read().keys().cloned().collect();
        let mut to_open = Vec::new();
        for (t, p) in wanted {
            let key = (t.name.clone(), p);
            if open.contains(&key) {
                let log_config = t.settings.to_log_config(&self.broker.log);
                if let Some(h) = self.hosted.read().get(&key)
                    && *h.partition.writer().read().config() != log_config
                    && let Err(e) = h.partition.set_config(log_config)
                {
                    tracing::error!(topic = %t.name, partition = p, error = %e, "cannot apply new settings");
                }
                continue;
            }
            to_open.push((t, p));
        }
        // Opening a replica is mostly waiting for fsyncs: open several at
        // once, so a topic of hundreds of partitions is ready in seconds.
        let meta_ref = &meta;
        futures::stream::iter(to_open)
            .for_each_concurrent(OPEN_CONCURRENCY, |(t, p)| async move {
                if let Err(e) = self.open_partition(meta_ref, &t, p).await {
                    tracing::error!(topic = %t.name, partition = p, error = %e, "cannot open partition");
                }
            })
            .await;
        for key in open {
            let placed = meta
                .replicas(&key.0, key.1)
                .is_some_and(|r| r.contains(&me));
            if !placed {
                self.close_partition(&key).await;
            }
        }
    }

    async fn open_partition(
        self: &Arc<Self>,
        meta: &MetaState,
        t: &TopicMeta,
        p: u32,
    ) -> Result<(), BrokerError> {
        let name = group_name(&t.name, p);
        let dir = self
            .broker
            .data_dir
            .join("topics")
            .join(&t.name)
            .join(p.to_string());
        let fsync = self.metrics.fsync.with_label_values(&[t.name.as_str()]);
        let observer: SyncObserver = Arc::new(move |d| fsync.observe(d.as_secs_f64()));
        let (group, writer, sm, mut trims) = open_group(
            &name,
            self.config.node_id,
            dir.clone(),
            t.settings.to_log_config(&self.broker.log),
            Machine::Partition(PartitionState::default()),
            &self.channels,
            &self.pool,
            WriterConfig {
                queue_depth: self.broker.writer_queue_depth,
                ..WriterConfig::default()
            },
            Some(observer),
            None,
            !self.broker.raft_hibernate,
        )
        .await?;
        let raft = group.raft.clone();
        self.groups.write().insert(name.clone(), group);
        let initial = t.initial.get(p as usize).cloned().unwrap_or_default();
        // openraft's `initialize` starts an election at once on the node
        // that calls it: only the first replica placed does, so a new
        // group has one candidate, not three splitting the vote. The others
        // learn the membership from its first AppendEntries; if it never
        // comes (the first replica is down), they initialize too after
        // INIT_FALLBACK.
        let mut init_task = None;
        if initial.contains(&self.config.node_id)
            && !raft.is_initialized().await.map_err(storage_err)?
        {
            let members: BTreeMap<u64, NodeInfo> = initial
                .iter()
                .map(|id| (*id, meta.nodes.get(id).cloned().unwrap_or_default()))
                .collect();
            if initial.first() == Some(&self.config.node_id) {
                if let Err(e) = raft.initialize(members).await
                    && e.api_error().is_none()
                {
                    return Err(storage_err(e));
                }
            } else {
                let r = raft.clone();
                init_task = Some(tokio::spawn(async move {
                    tokio::time::sleep(INIT_FALLBACK).await;
                    if r.is_initialized().await.is_ok_and(|done| !done) {
                        tracing::info!(
                            "the first replica did not initialize the group; initializing here"
                        );
                        let _ = r.initialize(members).await;
                    }
                }));
            }
        }
        let partition = Arc::new(Partition::replicated(
            &t.name,
            p,
            self.config.node_id,
            writer,
            raft.clone(),
            sm.shared().clone(),
            self.live_hints(),
            self.hibernation
                .register(&name, raft.clone(), initial.first().copied()),
        ));
        let mut tasks: Vec<_> = init_task.into_iter().collect();
        // Trim points: build the pinned snapshot, then purge up to it.
        let r = raft.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(upto) = trims.recv().await {
                if r.trigger().snapshot().await.is_err() {
                    return;
                }
                let _ = r
                    .wait(Some(Duration::from_secs(10)))
                    .metrics(
                        |m| m.snapshot.is_some_and(|s| s.index >= upto),
                        "trim snapshot built",
                    )
                    .await;
                if r.trigger().purge_log(upto).await.is_err() {
                    return;
                }
            }
        }));
        // Report leadership to the metadata group.
        let weak = Arc::downgrade(self);
        let (topic, r) = (t.name.clone(), raft.clone());
        let term_changes = self.metrics.raft_term_changes.clone();
        tasks.push(tokio::spawn(async move {
            // Server metrics change only with state, term or leader (the
            // full metrics change on every tick).
            let mut m = r.server_metrics();
            let mut reported = 0u64;
            let mut seen_term = None;
            loop {
                let (leading, term) = {
                    let m = m.borrow_watched();
                    (m.state == ServerState::Leader, m.vote.leader_id().term)
                };
                if seen_term.is_some_and(|t| t != term) {
                    term_changes.inc();
                }
                seen_term = Some(term);
                if leading && term > reported {
                    let Some(c) = weak.upgrade() else { return };
                    // The node's reporter writes it, with the others won
                    // meanwhile, and retries until it is written.
                    c.leaderships.lock().insert(
                        (topic.clone(), p),
                        LeaderRecord {
                            node: c.config.node_id,
                            term,
                        },
                    );
                    c.leaderships_changed.notify_one();
                    reported = term;
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        }));
        self.hosted.write().insert(
            (t.name.clone(), p),
            Hosted {
                partition,
                raft,
                dir,
                tasks,
            },
        );
        tracing::info!(topic = %t.name, partition = p, "partition replica opened");
        Ok(())
    }

    async fn close_partition(&self, key: &(String, u32)) {
        let Some(h) = self.hosted.write().remove(key) else {
            return;
        };
        self.groups.write().remove(&group_name(&key.0, key.1));
        self.hibernation.unregister(&group_name(&key.0, key.1));
        for t in &h.tasks {
            t.abort();
        }
        let _ = h.raft.shutdown().await;
        let _ = h.partition.close();
        drop(h.partition);
        if let Err(e) = std::fs::remove_dir_all(&h.dir) {
            tracing::warn!(dir = %h.dir.display(), error = %e, "could not remove a moved or deleted partition's data");
        }
        tracing::info!(topic = %key.0, partition = key.1, "partition replica closed");
    }

    /// Stops every group (flushes nothing more: every ack was fsynced).
    pub async fn shutdown(&self) {
        let hosted: Vec<_> = self.hosted.write().drain().collect();
        for (_, h) in hosted {
            for t in &h.tasks {
                t.abort();
            }
            let _ = h.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }

    /// Seconds since this node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Waits until each of `learners` has replicated the leader's log up to
/// its end as it is now; fails if `timeout` passes first or this node
/// stops leading.
async fn wait_replicated(
    raft: &Raft,
    learners: &[u64],
    timeout: Duration,
) -> Result<(), BrokerError> {
    let deadline = Instant::now() + timeout;
    let mut m = raft.metrics();
    let target = m.borrow_watched().last_log_index;
    loop {
        let behind: Vec<u64> = {
            let m = m.borrow_watched();
            let Some(matched) = &m.replication else {
                return Err(BrokerError::NotLeader { leader: None });
            };
            learners
                .iter()
                .copied()
                .filter(|id| matched.get(id).and_then(|l| l.as_ref().map(|l| l.index)) < target)
                .collect()
        };
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BrokerError::InvalidRequest(format!(
                "new replicas {behind:?} did not catch up within {timeout:?} (are those nodes \
                 running and reachable?); the reassignment was undone"
            )));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), m.changed()).await;
    }
}

async fn reconcile_loop(weak: std::sync::Weak<Cluster>) {
    let mut changes = match weak.upgrade() {
        Some(c) => c.meta_sm.applied_watch.subscribe(),
        None => return,
    };
    loop {
        {
            let Some(c) = weak.upgrade() else { return };
            c.reconcile().await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Records the leaderships this node won in the metadata, many per write
/// (a node that wins hundreds of elections at once, at creation or after a
/// peer died, writes a few metadata entries, not hundreds).
async fn report_leaders_loop(weak: std::sync::Weak<Cluster>) {
    loop {
        let batch = {
            let Some(c) = weak.upgrade() else { return };
            let batch = std::mem::take(&mut *c.leaderships.lock());
            if batch.is_empty() {
                // A notification sent meanwhile is kept as a permit.
                let changed = c.leaderships_changed.clone();
                drop(c);
                changed.notified().await;
                continue;
            }
            batch
        };
        let Some(c) = weak.upgrade() else { return };
        let n = batch.len();
        let cmd = MetaCmd::SetLeaders(
            batch
                .iter()
                .map(|((t, p), l)| (t.clone(), *p, *l))
                .collect(),
        );
        if let Err(e) = c.meta_write(cmd).await {
            tracing::debug!(error = %e, leaderships = n, "recording leaderships failed; retrying");
            {
                let mut pending = c.leaderships.lock();
                for (k, l) in batch {
                    let newer = pending.get(&k).is_some_and(|p| p.term >= l.term);
                    if !newer {
                        pending.insert(k, l);
                    }
                }
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Keeps this node's addresses registered in the metadata.
async fn register_loop(weak: std::sync::Weak<Cluster>) {
    let mut changes = match weak.upgrade() {
        Some(c) => c.meta_sm.applied_watch.subscribe(),
        None => return,
    };
    loop {
        {
            let Some(c) = weak.upgrade() else { return };
            let id = c.config.node_id;
            let m = c.meta.metrics().borrow_watched().clone();
            let member = m.membership_config.membership().get_node(&id).is_some();
            let registered = c.with_meta(|m| m.nodes.get(&id) == Some(&c.config.node));
            if member && m.current_leader.is_some() && !registered {
                let cmd = MetaCmd::RegisterNode {
                    id,
                    info: c.config.node.clone(),
                };
                match c.meta_write(cmd).await {
                    Ok(Reply::Refused(r)) => {
                        tracing::warn!(reason = ?r, "this node's registration was refused")
                    }
                    Ok(_) => continue,
                    Err(e) => tracing::warn!(error = %e, "cannot register this node yet"),
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    }
}
