//! Raft RPCs between brokers over tonic (`proto/raft.proto`).
//!
//! One tonic `Channel` per peer address ([`super::channels`]) carries every
//! group's traffic (HTTP/2 multiplexes them). Requests and responses are openraft's own types, postcard-encoded,
//! tagged with the group name. Pre-Vote is a real RPC: the receiver asks
//! its Raft whether it would vote, persisting nothing; an error or a timeout
//! is not a grant. Snapshots are streamed in 1 MiB chunks: the sender
//! slices its snapshot without copying it, the receiver stages each chunk
//! on disk as it arrives ([`super::snapshot`]) and reads the whole back only
//! to install it. On the wire the stream is unchanged: a head message
//! (group, postcard `(vote, meta)`) and data messages (empty group, up to
//! 1 MiB of snapshot each).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use strata_proto::raft_pb::RaftMessage;
use strata_proto::raft_pb::raft_peer_client::RaftPeerClient;
use strata_proto::raft_pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::channels::Channels;
use super::hibernate::{HibernateRequest, Hibernation};
use super::snapshot::{SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES, SnapshotReceiver};
use super::{NodeInfo, Raft, RaftVote, Snapshot, SnapshotMeta, Tc, decode, encode};
use crate::log::Storage;

/// Largest Raft message accepted (a replication request is capped at 4 MiB
/// of payload by the log store, plus one batch).
const MESSAGE_BYTES_MAX: usize = 96 << 20;
const _: () = assert!(SNAPSHOT_CHUNK_BYTES < MESSAGE_BYTES_MAX);

/// A Raft group hosted here, as the peer service sees it.
#[derive(Clone, Debug)]
pub struct Group {
    /// Its Raft.
    pub raft: Raft,
    /// The storage of its replica's directory.
    pub storage: Arc<dyn Storage>,
    /// Its replica's directory (received snapshots are staged there).
    pub dir: PathBuf,
    /// Set once this replica has taken an append (or heartbeat) from a
    /// current leader since the process started. A restarted node's
    /// persisted vote makes openraft name a leader at once, so that alone
    /// does not show the replica has heard the cluster's latest commits.
    pub leader_contact: Arc<std::sync::atomic::AtomicBool>,
}

/// The Raft groups this node hosts, by name.
pub type Groups = Arc<RwLock<HashMap<String, Group>>>;

/// Creates the connections of one group.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    channels: Channels,
    group: String,
}

impl NetworkFactory {
    /// The factory for `group`.
    pub fn new(channels: Channels, group: String) -> Self {
        NetworkFactory { channels, group }
    }
}

/// A group's connection to one peer.
#[derive(Debug)]
pub struct Connection {
    client: Result<RaftPeerClient<Channel>, String>,
    group: String,
    addr: String,
    channels: Channels,
}

impl RaftNetworkFactory<Tc> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, _target: u64, node: &NodeInfo) -> Connection {
        let client = self
            .channels
            .get(&node.raft_addr)
            .map(|c| {
                RaftPeerClient::new(c)
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX)
            })
            .map_err(|e| format!("bad Raft address {:?}: {e}", node.raft_addr));
        Connection {
            client,
            group: self.group.clone(),
            addr: node.raft_addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

fn rpc_error(s: Status) -> RPCError<Tc> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::DeadlineExceeded => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

fn io_rpc_error(e: std::io::Error) -> RPCError<Tc> {
    RPCError::Network(NetworkError::new(&e))
}

impl Connection {
    /// Notes a call's outcome for the peer's reachability, and maps errors.
    fn seen<T>(&self, r: Result<T, Status>) -> Result<T, RPCError<Tc>> {
        self.channels.observe(&self.addr, r.as_ref().err());
        r.map_err(rpc_error)
    }

    fn client(&self) -> Result<RaftPeerClient<Channel>, RPCError<Tc>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))
    }

    fn message<T: serde::Serialize>(
        &self,
        body: &T,
        option: &RPCOption,
    ) -> Result<Request<RaftMessage>, RPCError<Tc>> {
        let mut r = Request::new(RaftMessage {
            group: self.group.clone(),
            body: encode(body).map_err(io_rpc_error)?.into(),
        });
        r.set_timeout(option.hard_ttl());
        Ok(r)
    }
}

impl RaftNetworkV2<Tc> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Tc>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Tc>, RPCError<Tc>> {
        let req = self.message(&rpc, &option)?;
        let resp = self.seen(self.client()?.append_entries(req).await)?;
        decode(&resp.into_inner().body).map_err(io_rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Tc>,
        option: RPCOption,
    ) -> Result<VoteResponse<Tc>, RPCError<Tc>> {
        let req = self.message(&rpc, &option)?;
        let resp = self.seen(self.client()?.vote(req).await)?;
        decode(&resp.into_inner().body).map_err(io_rpc_error)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<Tc>,
        option: RPCOption,
    ) -> Result<VoteResponse<Tc>, RPCError<Tc>> {
        let req = self.message(&rpc, &option)?;
        let resp = self.seen(self.client()?.pre_vote(req).await)?;
        decode(&resp.into_inner().body).map_err(io_rpc_error)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<Tc>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<Tc>, RPCError<Tc>> {
        let req = self.message(&req, &option)?;
        let resp = self.seen(self.client()?.transfer_leader(req).await)?;
        decode(&resp.into_inner().body).map_err(io_rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: RaftVote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<Tc>, StreamingError<Tc>> {
        let head = encode(&(vote, &snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let head = RaftMessage {
            group: self.group.clone(),
            body: head.into(),
        };
        // Chunks are slices of the snapshot, made as the stream is sent.
        let data = bytes::Bytes::from(snapshot.snapshot);
        let chunks = (0..data.len())
            .step_by(SNAPSHOT_CHUNK_BYTES)
            .map(move |at| RaftMessage {
                group: String::new(),
                body: data.slice(at..(at + SNAPSHOT_CHUNK_BYTES).min(data.len())),
            });
        let messages = std::iter::once(head).chain(chunks);
        let mut req = Request::new(tokio_stream::iter(messages));
        req.set_timeout(option.hard_ttl());
        let mut client = self
            .client()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let send = client.install_snapshot(req);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => {
                let resp = r.map_err(|s| match s.code() {
                    tonic::Code::DeadlineExceeded | tonic::Code::Unavailable | tonic::Code::NotFound => {
                        StreamingError::Unreachable(Unreachable::new(&s))
                    }
                    _ => StreamingError::Network(NetworkError::new(&s)),
                })?;
                decode(&resp.into_inner().body)
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
            }
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(100))))
    }
}

/// The server side: routes each message to the group it names.
#[derive(Clone, Debug)]
pub struct PeerService {
    groups: Groups,
    hibernation: Arc<Hibernation>,
}

impl PeerService {
    /// A service over `groups`; a leadership transfer to a sleeping group
    /// wakes it through `hibernation`, which also answers the node probes.
    pub fn new(groups: Groups, hibernation: Arc<Hibernation>) -> RaftPeerServer<Self> {
        RaftPeerServer::new(PeerService {
            groups,
            hibernation,
        })
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn group(&self, name: &str) -> Result<Raft, Status> {
        self.hosted(name).map(|g| g.raft)
    }

    fn hosted(&self, name: &str) -> Result<Group, Status> {
        self.groups
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("this node hosts no Raft group {name:?}")))
    }
}

/// Why a metadata write could not be forwarded to the metadata leader.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection to the leader's Raft address.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The leader's Raft address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The command or its answer did not (de)serialize.
    #[error("encoding: {0}")]
    Codec(#[from] std::io::Error),
    /// The leader answered with an error, or the call timed out.
    #[error("{addr} answered: {status}")]
    Rpc {
        /// The leader's Raft address.
        addr: String,
        /// Its answer.
        status: Box<Status>,
    },
}

/// Sends a metadata command to the metadata leader at `raft_addr`, which
/// writes it through its Raft ([`super::meta::write_here`]); answers the
/// reply and the entry's index.
pub async fn forward_meta_write(
    channels: &Channels,
    raft_addr: &str,
    cmd: &super::MetaCmd,
) -> Result<(super::Reply, u64), ForwardError> {
    let channel = channels
        .get(raft_addr)
        .map_err(|source| ForwardError::Connect {
            addr: raft_addr.to_owned(),
            source,
        })?;
    let mut client = RaftPeerClient::new(channel);
    let mut req = Request::new(RaftMessage {
        group: super::META_GROUP.to_owned(),
        body: encode(cmd)?.into(),
    });
    req.set_timeout(Duration::from_secs(5));
    let resp = client
        .meta_write(req)
        .await
        .map_err(|status| ForwardError::Rpc {
            addr: raft_addr.to_owned(),
            status: Box::new(status),
        })?;
    Ok(decode(&resp.into_inner().body)?)
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable Raft message: {e}"))
}

fn reply<T: serde::Serialize>(group: &str, v: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        group: group.to_owned(),
        body: encode(v)
            .map_err(|e| Status::internal(e.to_string()))?
            .into(),
    }))
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let group = self.hosted(&m.group)?;
        let rpc: AppendEntriesRequest<Tc> = decode(&m.body).map_err(bad)?;
        let r = group.raft.append_entries(rpc).await.map_err(unavailable)?;
        if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
            group
                .leader_contact
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        reply(&m.group, &r)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let raft = self.group(&m.group)?;
        let rpc: VoteRequest<Tc> = decode(&m.body).map_err(bad)?;
        let r = raft.vote(rpc).await.map_err(unavailable)?;
        reply(&m.group, &r)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let raft = self.group(&m.group)?;
        let rpc: VoteRequest<Tc> = decode(&m.body).map_err(bad)?;
        let r = raft.pre_vote(rpc).await.map_err(unavailable)?;
        reply(&m.group, &r)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let raft = self.group(&m.group)?;
        let rpc: TransferLeaderRequest<Tc> = decode(&m.body).map_err(bad)?;
        self.hibernation.wake(&m.group);
        let r = raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(unavailable)?;
        reply(&m.group, &r)
    }

    async fn meta_write(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let raft = self.group(super::META_GROUP)?;
        let cmd: super::MetaCmd = decode(&m.body).map_err(bad)?;
        // The index lets the forwarding node wait until it has applied the
        // write itself (read-your-writes on every node).
        let r = super::meta::write_here(&raft, cmd)
            .await
            .map_err(unavailable)?;
        reply(&m.group, &r)
    }

    async fn hibernate(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let rpc: HibernateRequest = decode(&m.body).map_err(bad)?;
        reply("", &self.hibernation.handle(rpc))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = req.into_inner();
        let head = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let group = self.hosted(&head.group)?;
        let raft = group.raft.clone();
        let (vote, meta): (RaftVote, SnapshotMeta) = decode(&head.body).map_err(bad)?;
        let refused = |e: super::snapshot::SnapshotError| {
            let status = match &e {
                super::snapshot::SnapshotError::Io { .. } => Status::internal(e.to_string()),
                _ => Status::resource_exhausted(e.to_string()),
            };
            tracing::warn!(group = %head.group, error = %e, "snapshot refused");
            status
        };
        // Staging I/O runs off the async workers; the receiver moves into
        // each blocking call and back.
        let (storage, dir) = (group.storage.clone(), group.dir.clone());
        let mut rx = tokio::task::spawn_blocking(move || {
            SnapshotReceiver::create(storage, &dir, SNAPSHOT_BYTES_MAX)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(refused)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?.body;
            rx = tokio::task::spawn_blocking(move || rx.push(&chunk).map(|()| rx))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(refused)?;
        }
        let data = tokio::task::spawn_blocking(move || {
            let received = rx.finish()?;
            // The staging file goes when `received` drops, after the read.
            received.read()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(refused)?;
        tracing::info!(group = %head.group, bytes = data.len(), "snapshot received");
        let fut: BoxFut<_> = Box::pin(async move {
            raft.install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
        });
        let r = fut.await.map_err(unavailable)?;
        reply(&head.group, &r)
    }
}
