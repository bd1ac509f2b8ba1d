//! Replication: openraft groups over the partition log.
//!
//! Every partition is one Raft group over the nodes that host it, and the
//! cluster's metadata (nodes, topics, placement, committed group offsets)
//! is one more group over every node. All groups share one type
//! configuration ([`Tc`]) and one state machine type ([`GroupSm`]), so one
//! network layer and one registry serve them all.
//!
//! - [`store`]: `RaftLogStorage` *on* the partition log — the Raft log is
//!   the segment log, so a produced byte is written once per replica.
//! - [`sm`]: the state machine: high watermark, producer dedup state and
//!   log start offset for a partition; the metadata image for the
//!   metadata group. Snapshots are small checkpoints at trim points.
//! - [`network`]: Raft RPCs between brokers over tonic, with Pre-Vote, and
//!   the forwarding of metadata writes to the metadata leader.
//! - [`snapshot`]: a snapshot being received, staged on disk chunk by chunk.
//! - [`meta`]: the metadata image and its commands.
//! - [`channels`]: the tonic channel per peer that every group shares.
//! - [`hibernate`]: idle partition groups stop ticking; a node-level probe
//!   detects dead peers and wakes the groups they led.
//!
//! **Invariant:** this layer knows nothing of topics as the services see
//! them, of the broker core or of the services: it replicates commands and
//! applies them to partition and metadata state. A node's groups and the
//! cluster operations over them live one layer up, in `crate::cluster`.

pub mod channels;
pub mod hibernate;
pub mod meta;
pub mod network;
pub mod sm;
pub mod snapshot;
pub mod store;

use std::fmt;
use std::io;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_proto::batch::{BatchLimits, VerifiedBatch, verify_batch};

use crate::dedup::Expiry;
use crate::log;

pub use meta::{MetaCmd, MetaState};

/// Name of the metadata group.
pub const META_GROUP: &str = "meta";

/// A node's addresses, as stored in Raft memberships.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Raft peer traffic (`host:port`).
    pub raft_addr: String,
    /// The client gRPC API.
    pub grpc_addr: String,
    /// The HTTP API.
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} grpc={}", self.raft_addr, self.grpc_addr)
    }
}

/// A command in a Raft log.
#[derive(Clone, Debug)]
pub enum Cmd {
    /// A verified record batch (partition groups), stored verbatim.
    Batch(VerifiedBatch),
    /// Replicated retention (partition groups): records before
    /// `log_start_offset` (entries up to `upto`) are no longer readable and
    /// every replica may delete them.
    Trim {
        /// Last Raft log id trimmed.
        upto: RaftLogId,
        /// The new log start offset: the offset after `upto`.
        log_start_offset: u64,
    },
    /// A metadata-group command.
    Meta(MetaCmd),
    /// Ages idempotent-producer state (partition groups): advances the
    /// group's clock to `now_ms` (the leader's wall time) and forgets the
    /// producers `expiry` says are gone, the same ones on every replica.
    ExpireProducers {
        /// The leader's clock when it proposed this.
        now_ms: u64,
        /// How long and how many producers are kept.
        expiry: Expiry,
    },
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmd::Batch(b) => write!(f, "batch({} records)", b.record_count()),
            Cmd::Trim {
                upto,
                log_start_offset,
            } => write!(f, "trim(upto={upto}, start={log_start_offset})"),
            Cmd::Meta(m) => write!(f, "meta({m:?})"),
            Cmd::ExpireProducers { now_ms, expiry } => {
                write!(f, "expire-producers(now={now_ms}, {expiry:?})")
            }
        }
    }
}

/// The serialized form of a command: batches as raw bytes.
#[derive(Serialize, Deserialize)]
enum CmdWire {
    Batch(Bytes),
    Trim {
        upto: RaftLogId,
        log_start_offset: u64,
    },
    Meta(MetaCmd),
    // Appended: older commands keep their encoding.
    ExpireProducers {
        now_ms: u64,
        expiry: Expiry,
    },
}

impl Serialize for Cmd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cmd::Batch(b) => CmdWire::Batch(b.bytes().clone()),
            Cmd::Trim {
                upto,
                log_start_offset,
            } => CmdWire::Trim {
                upto: *upto,
                log_start_offset: *log_start_offset,
            },
            Cmd::Meta(m) => CmdWire::Meta(m.clone()),
            Cmd::ExpireProducers { now_ms, expiry } => CmdWire::ExpireProducers {
                now_ms: *now_ms,
                expiry: *expiry,
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Cmd {
    /// A batch is verified (CRC and structure) as it is decoded, so a batch
    /// damaged in transit never reaches a log.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match CmdWire::deserialize(d)? {
            CmdWire::Batch(b) => Cmd::Batch(
                verify_batch(b, &BatchLimits::UNLIMITED).map_err(serde::de::Error::custom)?,
            ),
            CmdWire::Trim {
                upto,
                log_start_offset,
            } => Cmd::Trim {
                upto,
                log_start_offset,
            },
            CmdWire::Meta(m) => Cmd::Meta(m),
            CmdWire::ExpireProducers { now_ms, expiry } => Cmd::ExpireProducers { now_ms, expiry },
        })
    }
}

/// What applying a command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to report (blank, membership, trim).
    None,
    /// A batch was appended at this base offset.
    Appended {
        /// Offset of its first record.
        base_offset: u64,
    },
    /// A metadata command succeeded; some return a number (a producer id).
    Done(u64),
    /// A metadata command was refused; the state is unchanged.
    Refused(meta::Refusal),
    /// `ExpireProducers` forgot these producers. Appended: older replies
    /// keep their encoding.
    Expired(Vec<u64>),
}

openraft::declare_raft_types!(
    /// The type configuration shared by every Strata Raft group.
    pub Tc:
        D = Cmd,
        R = Reply,
        Node = NodeInfo,
);

/// A Raft log id.
pub type RaftLogId = openraft::LogId<openraft::vote::leader_id_adv::LeaderId<u64, u64>>;
/// A Raft log entry.
pub type RaftEntry = openraft::type_config::alias::EntryOf<Tc>;
/// A vote.
pub type RaftVote = openraft::type_config::alias::VoteOf<Tc>;
/// The Raft handle of a group.
pub type Raft = openraft::Raft<Tc, sm::GroupSm>;
/// A membership as stored.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<Tc>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<Tc>;
/// A snapshot.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<Tc, Vec<u8>>;

/// The log's id for an openraft log id.
pub fn to_log_id(id: &RaftLogId) -> log::LogId {
    log::LogId::new(id.leader_id.term, id.leader_id.node_id, id.index)
}

/// The openraft log id for a log's id.
pub fn from_log_id(id: log::LogId) -> RaftLogId {
    openraft::LogId::new(
        openraft::vote::leader_id_adv::LeaderId {
            term: id.term,
            node_id: id.node,
        },
        id.index,
    )
}

/// Runs blocking file I/O (an fsync, a rename) from async code without
/// stalling the other tasks of the runtime worker it runs on: on the
/// multi-threaded runtime the worker hands its other tasks to the rest
/// first (`block_in_place`); elsewhere (a current-thread test runtime) it
/// just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Encodes a value for the log or the wire.
pub fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(io::Error::other)
}

/// Decodes a value from the log or the wire.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The Raft settings every group uses. Snapshots are built only at trim
/// points and logs purged only on request (see [`sm`]).
pub fn raft_config(
    cluster_name: &str,
    snapshot_every: Option<u64>,
    tick: bool,
) -> io::Result<openraft::Config> {
    let (snapshot_policy, keep) = match snapshot_every {
        // The metadata group: its state machine is its whole state, so a
        // snapshot at the applied point is complete; keep some log behind
        // it (up to 1,000 entries) for peers that lag a little.
        Some(n) => (
            openraft::SnapshotPolicy::LogsSinceLast(n),
            (n / 2).min(1_000),
        ),
        // Partitions: snapshots are pinned at retention's trim points only
        // (see `sm.rs`); nothing else purges the log.
        None => (openraft::SnapshotPolicy::Never, u64::MAX),
    };
    // Timers. openraft also uses the heartbeat interval as the deadline of
    // every AppendEntries and the minimum election timeout as that of a
    // vote, so they must leave room for a loaded node to answer.
    // - Awake groups (the metadata group; partitions when hibernation is
    //   off): followers time out on missing heartbeats, so failover takes
    //   about one to two maximum election timeouts (the leader's lease,
    //   during which followers refuse votes, then an election).
    // - Sleeping partition groups run no timers unless electing: the
    //   node-level probe detects a dead leader (see `hibernate`), so the
    //   interval only bounds RPCs. Their lease (the maximum election
    //   timeout) is what a follower that heard from its leader just before
    //   it died waits before voting for another: 1.25 s, so that with the
    //   probe's 1-1.25 s to find the leader's node down a cut-off leader's
    //   partitions have a new one about 1.5 s after the cut (clients are
    //   through within 3 s; `tests/partition.rs`).
    let (heartbeat, election_min, election_max) = if tick {
        (100, 500, 1_000)
    } else {
        (250, 750, 1_250)
    };
    let c = openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: heartbeat,
        // Under writes, replication acknowledgements renew the lease: no
        // heartbeat to a follower that answered within the last interval
        // (interval + interval + one tick stays below the minimum election
        // timeout, as openraft requires).
        heartbeat_min_interval: Some(heartbeat),
        election_timeout_min: election_min,
        election_timeout_max: election_max,
        install_snapshot_timeout: 2000,
        max_payload_entries: 512,
        snapshot_policy,
        max_in_snapshot_log_to_keep: keep,
        enable_pre_vote: Some(true),
        // Off for groups that start asleep (see `hibernate`).
        enable_tick: tick,
        ..Default::default()
    };
    c.validate().map_err(io::Error::other)
}
