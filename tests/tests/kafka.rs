//! The Kafka listener end to end, with a minimal raw Kafka client (the
//! real clients — kcat, confluent-kafka, kafka-python — run in
//! `tests/python/kafka_clients.py`): hostile and malformed frames close
//! the connection or get Kafka's error codes and change nothing, while the
//! broker keeps serving; a response that completes while the next request
//! is half read loses nothing; and in a 3-node cluster every node
//! advertises its own Kafka address, leaders match the Raft leaders, a
//! follower refuses produce with NOT_LEADER_OR_FOLLOWER, and after a kill
//! -9 of a leader the new one is advertised and takes writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use strata_client::{Admin, TopicConfig};
use strata_proto::batch::{Compression, Record, encode_batch};
use strata_tests::{BrokerProcess, poll_until_async, start_cluster, test_dir};

/// A blocking raw Kafka connection.
struct Conn {
    s: TcpStream,
    next_id: i32,
}

impl Conn {
    fn open(addr: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn { s, next_id: 1 }
    }

    /// Frames a request (header v1) without sending it.
    fn frame(&mut self, key: i16, version: i16, body: &[u8]) -> (i32, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(id);
        b.put_i16(4);
        b.put_slice(b"test");
        b.put_slice(body);
        let mut f = Vec::with_capacity(b.len() + 4);
        f.extend_from_slice(&(b.len() as u32).to_be_bytes());
        f.extend_from_slice(&b);
        (id, f)
    }

    fn send(&mut self, key: i16, version: i16, body: &[u8]) -> i32 {
        let (id, f) = self.frame(key, version, body);
        self.s.write_all(&f).unwrap();
        id
    }

    /// Reads one response; `None` when the broker closed the connection.
    fn recv(&mut self) -> Option<(i32, Bytes)> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).ok()?;
        let id = i32::from_be_bytes(body[..4].try_into().unwrap());
        Some((id, Bytes::from(body).slice(4..)))
    }

    fn call(&mut self, key: i16, version: i16, body: &[u8]) -> Option<Bytes> {
        let id = self.send(key, version, body);
        let (got, b) = self.recv()?;
        assert_eq!(got, id, "responses come back in order");
        Some(b)
    }

    /// Whether the broker closed the connection (EOF within the timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn s16(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A Kafka RecordBatch v2 of `values` (through the broker's own
/// translation of a Strata batch, which the unit tests check both ways).
fn kafka_batch(values: &[&str]) -> BytesMut {
    let now = strata_proto::now_ms();
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record {
            key: None,
            value: Bytes::copy_from_slice(v.as_bytes()),
            headers: Vec::new(),
            timestamp_ms: now,
        })
        .collect();
    let mut strata = Vec::new();
    encode_batch(&records, Compression::None, None, &mut strata).unwrap();
    let mut out = BytesMut::new();
    strata_broker::kafka::records::encode_fetched(&Bytes::from(strata), 0, 0, &mut out).unwrap();
    out
}

/// Produce v3 (acks=-1) of one batch to `topic`/`partition`; the
/// partition's error code and base offset.
fn produce(c: &mut Conn, topic: &str, partition: i32, batch: &[u8]) -> (i16, i64) {
    let mut b = BytesMut::new();
    b.put_i16(-1); // transactional id: null
    b.put_i16(-1); // acks
    b.put_i32(10_000);
    b.put_i32(1);
    s16(&mut b, topic);
    b.put_i32(1);
    b.put_i32(partition);
    b.put_i32(batch.len() as i32);
    b.put_slice(batch);
    let r = c.call(0, 3, &b).expect("produce answered");
    // responses[1]: name, partitions[1]: index, error, base offset, ...
    let at = 4 + 2 + topic.len() + 4 + 4;
    (i16_at(&r, at), i64_at(&r, at + 2))
}

/// ListOffsets v1 latest: the partition's error and high watermark.
fn latest(c: &mut Conn, topic: &str, partition: i32) -> (i16, i64) {
    let mut b = BytesMut::new();
    b.put_i32(-1);
    b.put_i32(1);
    s16(&mut b, topic);
    b.put_i32(1);
    b.put_i32(partition);
    b.put_i64(-1);
    let r = c.call(2, 1, &b).expect("list offsets answered");
    let at = 4 + 2 + topic.len() + 4 + 4;
    (i16_at(&r, at), i64_at(&r, at + 2 + 8))
}

/// Metadata v1 of `topic`: brokers (id, host:port) and each partition's
/// (index, leader).
type Brokers = Vec<(i32, String)>;
fn metadata(c: &mut Conn, topic: &str) -> (Brokers, Vec<(i32, i32)>) {
    let mut b = BytesMut::new();
    b.put_i32(1);
    s16(&mut b, topic);
    let r = c.call(3, 1, &b).expect("metadata answered");
    let mut at = 0;
    let n = i32_at(&r, at);
    at += 4;
    let mut brokers = Vec::new();
    for _ in 0..n {
        let id = i32_at(&r, at);
        let hl = i16_at(&r, at + 4) as usize;
        let host = String::from_utf8(r[at + 6..at + 6 + hl].to_vec()).unwrap();
        let port = i32_at(&r, at + 6 + hl);
        at += 6 + hl + 4;
        let rack = i16_at(&r, at);
        at += 2 + rack.max(0) as usize;
        brokers.push((id, format!("{host}:{port}")));
    }
    at += 4; // controller
    let topics = i32_at(&r, at);
    assert_eq!(topics, 1);
    at += 4;
    assert_eq!(i16_at(&r, at), 0, "topic error");
    at += 2;
    let tl = i16_at(&r, at) as usize;
    at += 2 + tl + 1; // name, is_internal
    let np = i32_at(&r, at);
    at += 4;
    let mut parts = Vec::new();
    for _ in 0..np {
        let index = i32_at(&r, at + 2);
        let leader = i32_at(&r, at + 6);
        at += 10;
        for _ in 0..2 {
            let n = i32_at(&r, at);
            at += 4 + 4 * n as usize;
        }
        parts.push((index, leader));
    }
    (brokers, parts)
}

#[test]
fn hostile_frames_change_nothing_and_the_broker_keeps_serving() {
    let (dir, _keep) = test_dir();
    let broker = BrokerProcess::start(&dir.join("b"), &[]);
    let out = strata_tests::cli(&broker.grpc, &["topic", "create", "k"], None);
    assert!(out.status.success());
    let alive = |addr: &str| Conn::open(addr).call(18, 0, &[]).is_some();

    // A frame claiming 2 GiB is refused before anything is read into memory.
    let mut c = Conn::open(&broker.kafka);
    c.s.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
    assert!(c.closed(), "an oversized frame closes the connection");
    assert!(alive(&broker.kafka));

    // A Metadata request whose topic array claims 2^31-1 elements.
    let mut c = Conn::open(&broker.kafka);
    c.send(3, 1, &0x7fff_ffffi32.to_be_bytes());
    assert!(
        c.closed(),
        "an impossible array count closes the connection"
    );
    assert!(alive(&broker.kafka));

    // An unknown API key: UNSUPPORTED_VERSION, and the connection stays.
    let mut c = Conn::open(&broker.kafka);
    let r = c.call(999, 0, &[]).expect("an unknown API is answered");
    assert_eq!(i16_at(&r, 0), 35, "UNSUPPORTED_VERSION");
    let r = c
        .call(18, 9, &[])
        .expect("ApiVersions past its range is answered");
    assert_eq!(i16_at(&r, 0), 35, "ApiVersions v9: UNSUPPORTED_VERSION");
    assert!(i32_at(&r, 2) > 10, "with the list of APIs served");
    let r = c.call(18, 0, &[]).expect("the connection still serves");
    assert_eq!(i16_at(&r, 0), 0);

    // A batch with a flipped byte: CORRUPT_MESSAGE, nothing written.
    let mut bad = kafka_batch(&["x"]);
    let n = bad.len();
    bad[n - 1] ^= 0x40;
    assert_eq!(produce(&mut c, "k", 0, &bad).0, 2, "CORRUPT_MESSAGE");
    // An old message format (magic 1).
    let mut old = kafka_batch(&["x"]);
    old[16] = 1;
    assert_eq!(
        produce(&mut c, "k", 0, &old).0,
        43,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT"
    );
    assert_eq!(
        produce(&mut c, "k", 7, &kafka_batch(&["x"])).0,
        3,
        "unknown partition"
    );
    assert_eq!(latest(&mut c, "k", 0), (0, 0), "nothing was written");

    // Random frames (seeded): every served API key at versions in and out
    // of range, with random bodies. None may take the broker down.
    let mut rng = fastrand::Rng::with_seed(20_261_208);
    let keys = [
        0i16, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 68,
    ];
    let started = Instant::now();
    let mut c = Conn::open(&broker.kafka);
    for i in 0..3_000 {
        if started.elapsed() > Duration::from_secs(60) {
            panic!("random frames took over 60 s (at {i})");
        }
        let key = keys[rng.usize(..keys.len())];
        let version = rng.i16(-1..14);
        let body: Vec<u8> = (0..rng.usize(0..120)).map(|_| rng.u8(..)).collect();
        c.send(key, version, &body);
        // Read the answer if one comes; a refused request closes the
        // connection (then open another).
        c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if c.recv().is_none() {
            c = Conn::open(&broker.kafka);
        }
    }
    assert!(
        alive(&broker.kafka),
        "the broker survived 3,000 random frames"
    );
    let mut c = Conn::open(&broker.kafka);
    let (err, base) = produce(&mut c, "k", 0, &kafka_batch(&["after"]));
    assert_eq!(
        (err, base),
        (0, 0),
        "and a valid produce is the first write"
    );
}

#[test]
fn a_response_ready_mid_frame_does_not_lose_the_next_request() {
    let (dir, _keep) = test_dir();
    let broker = BrokerProcess::start(&dir.join("b"), &[]);
    let out = strata_tests::cli(&broker.grpc, &["topic", "create", "k"], None);
    assert!(out.status.success());
    let mut c = Conn::open(&broker.kafka);
    // A Fetch v4 at the tail that waits 300 ms for data (min_bytes 1).
    let mut f = BytesMut::new();
    f.put_i32(-1);
    f.put_i32(300);
    f.put_i32(1);
    f.put_i32(1 << 20);
    f.put_i8(0);
    f.put_i32(1);
    s16(&mut f, "k");
    f.put_i32(1);
    f.put_i32(0);
    f.put_i64(0);
    f.put_i32(1 << 20);
    let fetch_id = c.send(1, 4, &f);
    // The next request trickles in byte by byte across the fetch's answer.
    let (api_id, frame) = c.frame(18, 0, &[]);
    for byte in frame {
        c.s.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(40)); // pacing the bytes
    }
    let (a, _) = c.recv().expect("the fetch is answered");
    assert_eq!(a, fetch_id);
    let (b, body) = c.recv().expect("the trickled request is answered");
    assert_eq!(b, api_id);
    assert_eq!(i16_at(&body, 0), 0, "ApiVersions answered intact");
}

/// Fetch v7 with a session: (error, session id, partitions answered as
/// (index, high watermark, record bytes)).
fn session_fetch(
    c: &mut Conn,
    session: i32,
    epoch: i32,
    parts: &[(i32, i64)],
    forget: &[i32],
) -> (i16, i32, Vec<(i32, i64, usize)>) {
    let mut f = BytesMut::new();
    f.put_i32(-1);
    f.put_i32(0); // max wait: answer at once
    f.put_i32(0);
    f.put_i32(1 << 20);
    f.put_i8(0);
    f.put_i32(session);
    f.put_i32(epoch);
    f.put_i32(if parts.is_empty() { 0 } else { 1 });
    if !parts.is_empty() {
        s16(&mut f, "s");
        f.put_i32(parts.len() as i32);
        for (p, offset) in parts {
            f.put_i32(*p);
            f.put_i64(*offset);
            f.put_i64(-1);
            f.put_i32(1 << 20);
        }
    }
    f.put_i32(if forget.is_empty() { 0 } else { 1 });
    if !forget.is_empty() {
        s16(&mut f, "s");
        f.put_i32(forget.len() as i32);
        for p in forget {
            f.put_i32(*p);
        }
    }
    let r = c.call(1, 7, &f).expect("fetch answered");
    let error = i16_at(&r, 4);
    let id = i32_at(&r, 6);
    let mut at = 10;
    let mut out = Vec::new();
    let topics = i32_at(&r, at);
    at += 4;
    for _ in 0..topics {
        let tl = i16_at(&r, at) as usize;
        at += 2 + tl;
        let n = i32_at(&r, at);
        at += 4;
        for _ in 0..n {
            let index = i32_at(&r, at);
            let hw = i64_at(&r, at + 6);
            at += 4 + 2 + 8 + 8 + 8;
            let aborted = i32_at(&r, at);
            at += 4 + 16 * aborted.max(0) as usize;
            let len = i32_at(&r, at).max(0) as usize;
            at += 4 + len;
            out.push((index, hw, len));
        }
    }
    (error, id, out)
}

#[test]
fn fetch_sessions_answer_only_what_changed() {
    let (dir, _keep) = test_dir();
    let broker = BrokerProcess::start(&dir.join("b"), &[]);
    let out = strata_tests::cli(
        &broker.grpc,
        &["topic", "create", "s", "--partitions", "2"],
        None,
    );
    assert!(out.status.success());
    let mut c = Conn::open(&broker.kafka);
    assert_eq!(produce(&mut c, "s", 0, &kafka_batch(&["a"])).0, 0);
    assert_eq!(produce(&mut c, "s", 1, &kafka_batch(&["b"])).0, 0);

    // Epoch 0 opens a session with a full fetch: both partitions answered.
    let (err, id, parts) = session_fetch(&mut c, 0, 0, &[(0, 0), (1, 0)], &[]);
    assert_eq!(err, 0);
    assert!(id > 0, "a session was opened");
    assert_eq!(
        parts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        vec![(0, 1), (1, 1)]
    );
    assert!(parts.iter().all(|p| p.2 > 0), "with their records");

    // Incremental, at the ends: nothing changed, nothing answered.
    let (err, same, parts) = session_fetch(&mut c, id, 1, &[(0, 1), (1, 1)], &[]);
    assert_eq!((err, same), (0, id));
    assert!(parts.is_empty(), "no news: {parts:?}");

    // A write to partition 1: an incremental fetch naming nothing gets it.
    assert_eq!(produce(&mut c, "s", 1, &kafka_batch(&["c"])).0, 0);
    let (err, _, parts) = session_fetch(&mut c, id, 2, &[], &[]);
    assert_eq!(err, 0);
    assert_eq!(parts.len(), 1, "only the partition with news: {parts:?}");
    assert_eq!((parts[0].0, parts[0].1), (1, 2));
    assert!(parts[0].2 > 0);

    // Forget partition 1; a write there is no longer answered.
    let (_, _, parts) = session_fetch(&mut c, id, 3, &[], &[1]);
    assert!(parts.is_empty(), "{parts:?}");
    assert_eq!(produce(&mut c, "s", 1, &kafka_batch(&["d"])).0, 0);
    let (_, _, parts) = session_fetch(&mut c, id, 4, &[], &[]);
    assert!(
        parts.is_empty(),
        "a forgotten partition is not fetched: {parts:?}"
    );

    // A wrong epoch, an unknown session.
    assert_eq!(
        session_fetch(&mut c, id, 9, &[], &[]).0,
        71,
        "INVALID_FETCH_SESSION_EPOCH"
    );
    assert_eq!(
        session_fetch(&mut c, id + 1, 1, &[], &[]).0,
        70,
        "FETCH_SESSION_ID_NOT_FOUND"
    );
    // Epoch -1 closes it: the id is gone afterwards.
    let (err, none, _) = session_fetch(&mut c, id, -1, &[(0, 0)], &[]);
    assert_eq!((err, none), (0, 0));
    assert_eq!(session_fetch(&mut c, id, 5, &[], &[]).0, 70, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_budget_counts_the_bytes_sent_not_the_compressed_ones() {
    let (dir, _keep) = test_dir();
    let broker = BrokerProcess::start(&dir.join("b"), &[]);
    let out = strata_tests::cli(&broker.grpc, &["topic", "create", "z"], None);
    assert!(out.status.success());
    // Three native LZ4 batches of 2 MiB of zeros each (~8 KiB stored).
    let mut c =
        strata_proto::pb::strata_client::StrataClient::connect(format!("http://{}", broker.grpc))
            .await
            .unwrap();
    let now = strata_proto::now_ms();
    for _ in 0..3 {
        let records: Vec<Record> = (0..2)
            .map(|_| Record {
                key: None,
                value: Bytes::from(vec![0u8; 1 << 20]),
                headers: Vec::new(),
                timestamp_ms: now,
            })
            .collect();
        let mut batch = Vec::new();
        encode_batch(&records, Compression::Lz4, None, &mut batch).unwrap();
        assert!(batch.len() < 100_000);
        c.produce(strata_proto::pb::ProduceRequest {
            topic: "z".into(),
            partition: 0,
            batch: batch.into(),
            acks: 0,
        })
        .await
        .unwrap();
    }
    let kafka = broker.kafka.clone();
    let size = tokio::task::spawn_blocking(move || {
        // Fetch v4: partition budget 1 MiB, total 50 MiB (librdkafka's).
        let mut f = BytesMut::new();
        f.put_i32(-1);
        f.put_i32(100);
        f.put_i32(1);
        f.put_i32(50 << 20);
        f.put_i8(0);
        f.put_i32(1);
        s16(&mut f, "z");
        f.put_i32(1);
        f.put_i32(0);
        f.put_i64(0);
        f.put_i32(1 << 20);
        let r = Conn::open(&kafka).call(1, 4, &f).expect("fetch answered");
        // throttle, topics[1]: name, partitions[1]: index, error, hw, lso,
        // aborted (null), records.
        let at = 4 + 4 + 2 + 1 + 4 + 4;
        assert_eq!(i16_at(&r, at), 0, "no error");
        assert_eq!(i64_at(&r, at + 2), 6, "high watermark");
        i32_at(&r, at + 2 + 8 + 8 + 4)
    })
    .await
    .unwrap();
    // One batch (2 MiB and its framing), not all three (6 MiB): at least
    // one batch goes out, then the budget stops the response.
    assert!(
        (2 << 20..3 << 20).contains(&size),
        "records of {size} bytes for a 1 MiB partition budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_advertises_its_own_address_and_leaders_move_on_failover() {
    let (dir, _keep) = test_dir();
    let mut nodes = start_cluster(&dir);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    strata_tests::wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("kc", 3, 3, TopicConfig::default())
        .await
        .unwrap();
    let kafka: Vec<String> = nodes.iter().map(|n| n.kafka.clone()).collect();

    // Every node lists the three brokers at their own Kafka addresses,
    // and every partition with a leader.
    for addr in &kafka {
        let addr = addr.clone();
        let want = kafka.clone();
        poll_until_async(
            "metadata with 3 brokers and leaders",
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                let want = want.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let (brokers, parts) = metadata(&mut Conn::open(&addr), "kc");
                        let mut got: Vec<(i32, String)> = brokers;
                        got.sort();
                        let expected: Vec<(i32, String)> = want
                            .iter()
                            .enumerate()
                            .map(|(i, a)| (i as i32 + 1, a.clone()))
                            .collect();
                        got == expected && parts.len() == 3 && parts.iter().all(|p| p.1 > 0)
                    })
                    .await
                    .unwrap()
                }
            },
        )
        .await;
    }
    let a0 = kafka[0].clone();
    let (_, parts) = tokio::task::spawn_blocking(move || metadata(&mut Conn::open(&a0), "kc"))
        .await
        .unwrap();
    let leader = parts[0].1 as usize;
    let follower = if leader == 1 { 2 } else { 1 };

    // Produce at the leader works; at a follower it is refused.
    let (la, fa) = (kafka[leader - 1].clone(), kafka[follower - 1].clone());
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            produce(&mut Conn::open(&la), "kc", 0, &kafka_batch(&["a", "b"])),
            (0, 0)
        );
        assert_eq!(
            produce(&mut Conn::open(&fa), "kc", 0, &kafka_batch(&["c"])).0,
            6,
            "a follower answers NOT_LEADER_OR_FOLLOWER"
        );
    })
    .await
    .unwrap();

    // Kill -9 the leader: a survivor advertises a new leader that takes
    // the next write at offset 2.
    nodes[leader - 1].kill9();
    let survivor = kafka[follower - 1].clone();
    let kafka2 = kafka.clone();
    poll_until_async(
        "a new leader takes the write",
        Duration::from_secs(30),
        || {
            let survivor = survivor.clone();
            let kafka2 = kafka2.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let (_, parts) = metadata(&mut Conn::open(&survivor), "kc");
                    let l = parts[0].1;
                    if l <= 0 || l as usize == leader {
                        return false;
                    }
                    let (err, base) = produce(
                        &mut Conn::open(&kafka2[l as usize - 1]),
                        "kc",
                        0,
                        &kafka_batch(&["d"]),
                    );
                    err == 0 && base == 2
                })
                .await
                .unwrap()
            }
        },
    )
    .await;
}
