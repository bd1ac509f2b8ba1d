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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// A single-node broker in `dir` with a topic `t` (2 partitions), and a
    /// Kafka front-end over it (no listener: requests are handed in).
    fn front_end(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Arc<Kafka> {
        rt.block_on(async {
            let config = crate::config::BrokerConfig {
                data_dir: dir.to_path_buf(),
                fetch_wait_ms_max: 5,
                ..Default::default()
            };
            let broker = tokio::task::spawn_blocking(move || {
                Broker::open(config, crate::metrics::Metrics::new())
            })
            .await
            .expect("open task")
            .expect("broker opens");
            let broker = Arc::new(broker);
            broker
                .create_topic("t", 2, 1, crate::settings::TopicSettings::default())
                .await
                .expect("topic");
            let service = GrpcService::new(
                broker.clone(),
                crate::coordinator::GroupCoordinators::start(broker.clone()),
            );
            Kafka::new(broker, service, SocketAddr::from(([127, 0, 0, 1], 9092)))
        })
    }

    /// Valid request bodies to mutate: Metadata v1 of `t`, Fetch v4,
    /// ListOffsets v1, OffsetCommit v2, JoinGroup v5, CreateTopics v2.
    fn seeds() -> Vec<(i16, i16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut w = Writer::new(false);
        w.array(&["t"], |w, t| w.string(t));
        out.push((3, 1, w.finish().to_vec()));
        let mut w = Writer::new(false);
        w.i32(-1);
        w.i32(5);
        w.i32(1);
        w.i32(1 << 20);
        w.i8(0);
        w.array(&["t"], |w, t| {
            w.string(t);
            w.array(&[0i32, 1], |w, p| {
                w.i32(*p);
                w.i64(0);
                w.i64(-1);
                w.i32(1 << 20);
            });
        });
        out.push((1, 4, w.finish().to_vec()));
        let mut w = Writer::new(false);
        w.i32(-1);
        w.array(&["t"], |w, t| {
            w.string(t);
            w.array(&[0i32], |w, p| {
                w.i32(*p);
                w.i64(-2);
            });
        });
        out.push((2, 1, w.finish().to_vec()));
        let mut w = Writer::new(false);
        w.string("g");
        w.i32(-1);
        w.string("");
        w.i64(-1);
        w.array(&["t"], |w, t| {
            w.string(t);
            w.array(&[0i32], |w, p| {
                w.i32(*p);
                w.i64(0);
                w.nullable_string(None);
            });
        });
        out.push((8, 2, w.finish().to_vec()));
        let mut w = Writer::new(false);
        w.string("g");
        w.i32(10_000);
        w.i32(10_000);
        w.string("");
        w.nullable_string(None);
        w.string("consumer");
        w.array(&["range"], |w, name| {
            w.string(name);
            let mut sub = Writer::new(false);
            sub.i16(0);
            sub.array(&["t"], |w, t| w.string(t));
            sub.nullable_bytes(None);
            w.nullable_bytes(Some(&sub.finish()));
        });
        out.push((11, 5, w.finish().to_vec()));
        let mut w = Writer::new(false);
        w.array(&["n"], |w, t| {
            w.string(t);
            w.i32(1);
            w.i16(1);
            w.array_len(0);
            w.array_len(0);
        });
        w.i32(1000);
        w.bool(false);
        out.push((19, 2, w.finish().to_vec()));
        out
    }

    const KEYS: [i16; 21] = [
        0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 32, 68, 999,
    ];

    /// Arbitrary and mutated requests through the whole request path (the
    /// header, every served API's decoder and handler, at versions in and
    /// out of range): each is answered or refused, within 10 s, and none
    /// panics. KAFKA_FUZZ_CASES widens the run (3,000 by default, a fixed
    /// seed).
    #[test]
    fn arbitrary_requests_are_answered_or_refused_and_never_panic() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let k = front_end(&rt, dir.path());
        let seeds = seeds();
        let cases = std::env::var("KAFKA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000);
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        let strategy = (
            0..KEYS.len(),
            -1i16..15,
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::option::of((
                0..seeds.len(),
                proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            )),
            any::<bool>(),
        );
        let answered_n = std::cell::Cell::new(0u32);
        let refused_n = std::cell::Cell::new(0u32);
        let result = runner.run(
            &strategy,
            |(key, version, noise, mutate, flexible_header)| {
                let (key, version, body) = match &mutate {
                    // A valid request with a few bytes changed (or cut short).
                    Some((s, flips)) => {
                        let (k, v, mut b) = seeds[*s].clone();
                        for (at, x) in flips {
                            if b.is_empty() {
                                break;
                            }
                            let at = at % b.len();
                            if *x == 0 {
                                b.truncate(at);
                            } else {
                                b[at] ^= x;
                            }
                        }
                        (k, v, b)
                    }
                    None => (KEYS[key], version, noise),
                };
                let mut frame = BytesMut::new();
                frame.put_i16(key);
                frame.put_i16(version);
                frame.put_i32(7);
                frame.put_i16(4);
                frame.put_slice(b"fuzz");
                if flexible_header {
                    frame.put_u8(0);
                }
                frame.put_slice(&body);
                let answered = rt.block_on(async {
                    let pending = k.clone().request(frame.freeze(), "127.0.0.1").await;
                    tokio::time::timeout(std::time::Duration::from_secs(10), pending).await
                });
                prop_assert!(
                    answered.is_ok(),
                    "api {key} v{version}: no answer within 10 s"
                );
                match answered {
                    Ok(Ok(Some(resp))) => {
                        answered_n.set(answered_n.get() + 1);
                        prop_assert!(resp.len() >= 4, "a response starts with the correlation id");
                        prop_assert_eq!(&resp[..4], &7i32.to_be_bytes()[..]);
                    }
                    Ok(Err(_)) => refused_n.set(refused_n.get() + 1),
                    _ => {}
                }
                Ok(())
            },
        );
        if let Err(e) = result {
            panic!("{e}");
        }
        let (a, r) = (answered_n.get(), refused_n.get());
        println!("{cases} requests: {a} answered, {r} refused (connection closed)");
        // Both paths were exercised: the generator reaches real handlers.
        assert!(
            a > cases / 20 && r > cases / 20,
            "{a} answered, {r} refused"
        );
    }
}
