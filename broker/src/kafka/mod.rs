//! The Kafka front-end: a listener that speaks the Kafka wire protocol and
//! translates each request to the broker core and the service layer, so
//! kcat, librdkafka, the Java client and kafka-python work unchanged.
//!
//! Layering: this module sits beside the gRPC and HTTP services and calls
//! the same core ([`Broker`]) and, for consumer groups, the same service
//! methods the gRPC API serves (so group requests reach the coordinator
//! wherever it runs). No Kafka type crosses into the core.
//!
//! A connection reads requests in order and answers them in order (as
//! Kafka does). The part of a request that must keep its order — a
//! produce's enqueue at the partition — runs before the next request is
//! read; the waiting (acks, fetch long-polls) runs concurrently, up to
//! [`PIPELINE_DEPTH`] requests per connection, and answers are written in
//! request order. What is served, at which versions, and how Strata's
//! model maps onto Kafka's is in `docs/kafka.md`.

mod api;
mod errors;
mod fetch;
mod groups;
mod membership;
mod produce;
pub mod records;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::service::grpc::GrpcService;
use wire::{Reader, WireError, Writer};

/// Requests one connection may have in flight (read, not yet answered).
pub const PIPELINE_DEPTH: usize = 32;

/// A framed response, nothing (a produce with `acks=0`), or why the
/// connection is closed (a request that does not parse: Kafka's answer too).
type Answer = Result<Option<BytesMut>, String>;
/// The rest of a request's work, run concurrently with later requests.
type Pending = Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

/// A request's header fields the handlers need.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    /// API key.
    pub api_key: i16,
    /// API version.
    pub api_version: i16,
    /// Correlation id, echoed in the response.
    pub correlation_id: i32,
    /// The client's id, if it sent one.
    pub client_id: Option<String>,
    /// The client's IP address, as group descriptions show it.
    pub client_host: String,
}

/// The front-end's shared state.
pub struct Kafka {
    broker: Arc<Broker>,
    service: GrpcService,
    /// Where clients reach this node (host, port).
    advertised: (String, i32),
    /// Other nodes' Kafka addresses, learnt from their NodeStatus.
    peer_addrs: Mutex<HashMap<u64, (String, i32)>>,
    /// Classic-protocol group members whose client talks to this node.
    classic: Mutex<membership::ClassicMembers>,
    /// Fetch sessions (KIP-227) by id.
    fetch_sessions: Mutex<fetch::Sessions>,
    connections: Arc<Semaphore>,
}

impl Kafka {
    /// A front-end for `broker`, advertising `advertised` to clients.
    pub fn new(broker: Arc<Broker>, service: GrpcService, advertised: SocketAddr) -> Arc<Self> {
        let connections = Arc::new(Semaphore::new(broker.config().kafka_connections_max));
        Arc::new(Kafka {
            broker,
            service,
            advertised: (advertised.ip().to_string(), i32::from(advertised.port())),
            peer_addrs: Mutex::new(HashMap::new()),
            classic: Mutex::new(HashMap::new()),
            fetch_sessions: Mutex::new(HashMap::new()),
            connections,
        })
    }

    /// Serves `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = self.broker.config().kafka_connections_max,
                    "kafka connection refused: kafka_connections_max reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream, peer.ip().to_string()).await {
                    tracing::debug!(%peer, error = %e, "kafka connection closed");
                }
                drop(permit);
            });
        }
    }

    /// One client connection: frames in, answers out, in order. Frames are
    /// read by a task of their own (a read cut off mid-frame by the select
    /// below would lose bytes), at most [`PIPELINE_DEPTH`] ahead.
    async fn connection(self: Arc<Self>, stream: TcpStream, host: String) -> std::io::Result<()> {
        let (mut rd, mut wr) = stream.into_split();
        let max = self.broker.config().kafka_frame_bytes_max;
        let (tx, mut frames) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let reader = tokio::spawn(async move {
            loop {
                match read_frame(&mut rd, max).await {
                    Ok(Some(f)) => {
                        if tx.send(Ok(f)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        let _stop_reader = AbortOnDrop(reader);
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut reading = true;
        loop {
            tokio::select! {
                frame = frames.recv(), if reading && pending.len() < PIPELINE_DEPTH => {
                    match frame {
                        None => reading = false,
                        Some(frame) => {
                            pending.push_back(self.clone().request(frame?, &host).await);
                        }
                    }
                }
                Some(answer) = pending.next(), if !pending.is_empty() => {
                    let answer = answer.map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
                    })?;
                    if let Some(body) = answer {
                        let mut out = BytesMut::with_capacity(body.len() + 4);
                        out.put_u32(body.len() as u32);
                        out.extend_from_slice(&body);
                        wr.write_all(&out).await?;
                    }
                }
                else => return Ok(()),
            }
            if !reading && pending.is_empty() {
                return Ok(());
            }
        }
    }

    /// Parses one request and does its ordered part; the rest is returned.
    async fn request(self: Arc<Self>, frame: Bytes, host: &str) -> Pending {
        let started = Instant::now();
        let mut r = Reader::new(frame, false);
        let header = match parse_header(&mut r, host) {
            Ok(h) => h,
            Err(e) => {
                // Without a header there is no correlation id to answer.
                return Box::pin(std::future::ready(Err(format!(
                    "request header unreadable: {e}"
                ))));
            }
        };
        let api = api::name(header.api_key);
        let Some(spec) = api::supported(header.api_key, header.api_version) else {
            self.broker
                .metrics()
                .request(api, "unsupported_version", started.elapsed());
            return Box::pin(std::future::ready(Ok(Some(api::unsupported(&header)))));
        };
        r.flexible = spec.flexible_request;
        if spec.flexible_request
            && let Err(e) = r.tags()
        {
            return Box::pin(std::future::ready(Err(malformed(&header, &e))));
        }
        let metrics = self.broker.metrics().clone();
        let work = api::dispatch(self.clone(), header.clone(), r).await;
        Box::pin(async move {
            let body = work.await;
            let outcome = match &body {
                Ok(_) => "ok",
                Err(_) => "malformed",
            };
            metrics.request(api, outcome, started.elapsed());
            match body {
                Ok(None) => Ok(None),
                Ok(Some(w)) => Ok(Some(frame_response(
                    &header,
                    spec.flexible_response_header,
                    w,
                ))),
                Err(e) => Err(malformed(&header, &e)),
            }
        })
    }

    /// This node's Kafka broker id.
    fn node_id(&self) -> i32 {
        self.broker.config().node_id as i32
    }

    /// The Kafka address of node `id` (this node's own, or a peer's as its
    /// NodeStatus reports it; asked at most once per second per peer).
    async fn addr_of(&self, id: u64) -> Option<(String, i32)> {
        if id == self.broker.config().node_id {
            return Some(self.advertised.clone());
        }
        if let Some(a) = self.peer_addrs.lock().get(&id) {
            return Some(a.clone());
        }
        let grpc = self.broker.cluster()?.grpc_addr_of(id)?;
        let asked = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let mut c =
                strata_proto::pb::strata_client::StrataClient::connect(format!("http://{grpc}"))
                    .await
                    .ok()?;
            c.node_status(strata_proto::pb::NodeStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner().kafka_addr)
        })
        .await
        .ok()
        .flatten()?;
        let addr: SocketAddr = asked.parse().ok()?;
        let a = (addr.ip().to_string(), i32::from(addr.port()));
        self.peer_addrs.lock().insert(id, a.clone());
        Some(a)
    }
}

/// Why a connection is closed after a request that does not parse (logged
/// by the connection's owner).
fn malformed(h: &RequestHeader, e: &WireError) -> String {
    let msg = format!(
        "{} v{} (correlation id {}) from client {:?}: {e}",
        api::name(h.api_key),
        h.api_version,
        h.correlation_id,
        h.client_id.as_deref().unwrap_or("")
    );
    tracing::warn!("kafka request refused, connection closed: {msg}");
    msg
}

/// Aborts a task when dropped (a connection's reader ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one size-prefixed frame (`None` at a clean end of stream).
async fn read_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    max: usize,
) -> std::io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes(len);
    if len < 8 || len as usize > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("kafka frame of {len} bytes (limit kafka_frame_bytes_max = {max})"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    rd.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

/// The request header: v1 (client id), then v2's tagged fields when the
/// body is flexible (read by the caller once the version is known).
fn parse_header(r: &mut Reader, host: &str) -> Result<RequestHeader, WireError> {
    let api_key = r.i16()?;
    let api_version = r.i16()?;
    let correlation_id = r.i32()?;
    let client_id = r.header_string()?;
    Ok(RequestHeader {
        api_key,
        api_version,
        correlation_id,
        client_id,
        client_host: host.to_owned(),
    })
}

/// Prefixes a response body with its header (v0, or v1 with an empty
/// tagged-field section).
fn frame_response(h: &RequestHeader, flexible_header: bool, body: Writer) -> BytesMut {
    let body = body.finish();
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_i32(h.correlation_id);
    if flexible_header {
        out.put_u8(0);
    }
    out.extend_from_slice(&body);
    out
}

/// Starts the Kafka listener on `addr`; returns the bound address.
pub async fn start(
    broker: Arc<Broker>,
    service: GrpcService,
    addr: SocketAddr,
    advertised: Option<SocketAddr>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let k = Kafka::new(broker, service, advertised.unwrap_or(local));
    Ok((local, tokio::spawn(k.serve(listener))))
}
