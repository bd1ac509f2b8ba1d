//! End-to-end tests of a single-node broker: the real `strata-broker`
//! binary driven through `strata-client`, the `strata` CLI, raw gRPC and
//! raw HTTP. Kill -9 is SIGKILL; waits poll with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::time::Duration;

use bytes::Bytes;
use strata_client::{
    Acks, Admin, ClientError, Compression, Consumer, ConsumerConfig, OffsetSpec, Producer,
    ProducerConfig, Record, ResetPolicy, Seek, TopicConfig,
};
use strata_proto::pb::{self, ErrorCode};
use strata_tests::{BrokerProcess, cli, http, poll_until, poll_until_async, raw_grpc};

fn rec(key: Option<String>, value: String) -> Record {
    // Current timestamps: time retention (7 days by default) must not apply.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Record {
        key: key.map(Bytes::from),
        value: Bytes::from(value),
        headers: vec![],
        timestamp_ms: now,
    }
}

/// Reads a topic from the log start up to the high watermark as of now.
/// A broker on free ports with data under `dir`, configured by `toml`
/// (written to `dir/broker.toml`).
fn start_with_config(dir: &std::path::Path, toml: &str) -> BrokerProcess {
    let config = dir.join("broker.toml");
    std::fs::write(&config, toml).unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

async fn read_all(addr: &str, topic: &str) -> BTreeMap<(u32, u64), Bytes> {
    let admin = Admin::connect(addr).await.unwrap();
    let d = admin.describe_topic(topic).await.unwrap();
    let want: u64 = d
        .partition_info
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
    let config = ConsumerConfig {
        reset: ResetPolicy::Earliest,
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::connect(addr, topic, None, config).await.unwrap();
    let mut out = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (out.len() as u64) < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {want}",
            out.len()
        );
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            assert!(
                out.insert((r.partition, r.offset), r.value).is_none(),
                "offset delivered twice"
            );
        }
    }
    out
}

fn status_code(s: &tonic::Status) -> ErrorCode {
    ErrorCode::try_from(
        strata_proto::status::decode_details(s.details())
            .unwrap()
            .code,
    )
    .unwrap()
}

async fn raw_client(addr: &str) -> pb::strata_client::StrataClient<tonic::transport::Channel> {
    pb::strata_client::StrataClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Fetches every batch of a partition from offset 0 without following.
async fn raw_batches(addr: &str, topic: &str, partition: u32) -> Vec<(u64, Bytes)> {
    let mut client = raw_client(addr).await;
    let req = pb::FetchRequest {
        topic: topic.into(),
        partition,
        start: Some(pb::fetch_request::Start::Offset(0)),
        max_bytes: 4096,
        follow: false,
        max_wait_ms: 0,
        member: None,
    };
    let mut stream = client.fetch(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend(m.batches.into_iter().map(|b| (b.base_offset, b.batch)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_and_replay_return_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("t", 2, 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..2000 {
        let value = format!("value-{i}");
        let d = producer
            .send(
                "t",
                rec(Some(format!("key-{}", i % 17)), value.clone()),
                None,
            )
            .await
            .unwrap();
        deliveries.push((value, d));
    }
    let mut sent = BTreeMap::new();
    for (value, d) in deliveries {
        let m = d.await.unwrap();
        assert!(
            sent.insert((m.partition, m.offset.unwrap()), Bytes::from(value))
                .is_none()
        );
    }
    producer.close().await.unwrap();
    assert_eq!(read_all(&broker.grpc, "t").await, sent);

    // Replaying returns the stored batches byte for byte, every time.
    for p in 0..2 {
        let first = raw_batches(&broker.grpc, "t", p).await;
        assert!(!first.is_empty());
        assert_eq!(raw_batches(&broker.grpc, "t", p).await, first);
    }

    // HTTP ingest and query, health and metrics.
    let (code, body) = http(&broker.http, "POST", "/v1/topics/t/records", br#"{"records":[{"key":"a","value":"hello","partition":1},{"value":"aGk=","partition":1}],"encoding":"utf8"}"#);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let o = v["offsets"][0]["offset"].as_u64().unwrap();
    let (code, body) = http(
        &broker.http,
        "GET",
        &format!("/v1/topics/t/partitions/1/records?offset={o}&max=2"),
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["records"][0]["value"], "hello");
    assert_eq!(v["records"][0]["key"], "a");
    assert_eq!(v["records"][1]["value"], "aGk=");
    assert_eq!(v["records"].as_array().unwrap().len(), 2);
    let (code, body) = http(&broker.http, "GET", "/health", b"");
    assert_eq!(
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"].clone()
        ),
        (200, "ok".into())
    );
    let (code, body) = http(&broker.http, "GET", "/metrics", b"");
    assert_eq!(code, 200);
    for name in [
        "strata_produce_records_total",
        "strata_request_duration_seconds_bucket",
        "strata_fsync_duration_seconds",
        "figure=\"high_watermark\"",
    ] {
        assert!(body.contains(name), "metrics lack {name}");
    }
    let (code, body) = http(&broker.http, "GET", "/openapi.json", b"");
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["paths"]["/v1/topics/{topic}/records"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_nothing_else_appears() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("k", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let config = ProducerConfig {
        batch_bytes_max: 4096,
        delivery_timeout: Duration::from_secs(3),
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc, config).await.unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let mut waiters = tokio::task::JoinSet::new();
    let total = 20_000;
    for i in 0..total {
        let value = format!("r{i}");
        let d = producer
            .send("k", rec(None, value.clone()), Some(0))
            .await
            .unwrap();
        let sink = acked.clone();
        waiters.spawn(async move {
            if let Ok(m) = d.await {
                sink.lock().unwrap().insert(m.offset.unwrap(), value);
            }
        });
        if i == total / 2 {
            let a = acked.clone();
            poll_until_async("some acknowledgements", Duration::from_secs(20), || {
                let n = a.lock().unwrap().len();
                async move { n > 1000 }
            })
            .await;
            broker.kill9();
            break;
        }
    }
    while waiters.join_next().await.is_some() {}
    drop(producer);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000);

    broker.restart();
    let got = read_all(&broker.grpc, "k").await;
    for (offset, value) in &acked {
        assert_eq!(
            got.get(&(0, *offset)).map(|b| b.as_ref()),
            Some(value.as_bytes()),
            "acknowledged record at {offset} lost"
        );
    }
    // Nothing else: every record is one that was sent, once, and offsets are dense.
    let mut seen = HashSet::new();
    for (i, ((_, offset), value)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        let v = std::str::from_utf8(value).unwrap();
        assert!(
            v.starts_with('r') && v[1..].parse::<u64>().unwrap() < total,
            "unknown record {v}"
        );
        assert!(seen.insert(v.to_owned()), "duplicate {v}");
    }
    // And a clean stop (SIGTERM) exits successfully.
    assert!(
        broker.stop(),
        "strata-broker did not exit cleanly on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_resumes_from_its_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("c", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let total: u64 = 50_000;
    let lines: String = (0..total).map(|i| format!("v{i}\n")).collect();
    let out = cli(
        &broker.grpc,
        &["produce", "c", "--quiet"],
        Some(lines.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CLI consumer in a group, killed with SIGKILL mid-stream.
    let mut child = std::process::Command::new(strata_tests::bin("strata"))
        .args([
            "--broker",
            &broker.grpc,
            "--json",
            "consume",
            "c",
            "--group",
            "g",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (p2, pause2) = (printed.clone(), paused.clone());
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // The kill can cut the last line short.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                break;
            };
            p2.lock().unwrap().push(v["offset"].as_u64().unwrap());
            // Stop reading for a while: the full pipe blocks the consumer
            // mid-stream, so it is killed with records left to read.
            while p2.lock().unwrap().len() >= 2000
                && pause2.load(std::sync::atomic::Ordering::SeqCst)
            {
                std::thread::yield_now();
            }
        }
    });
    poll_until(
        "the consumer to print records",
        Duration::from_secs(20),
        || printed.lock().unwrap().len() >= 2000,
    );
    let admin2 = admin.clone();
    poll_until_async("a commit", Duration::from_secs(20), || {
        let a = admin2.clone();
        async move {
            a.committed("g", "c")
                .await
                .unwrap()
                .first()
                .is_some_and(|(_, o)| *o > 0)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Collect what the killed consumer had written to the pipe.
    paused.store(false, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();
    let printed = printed.lock().unwrap().clone();
    assert_eq!(
        printed,
        (0..printed.len() as u64).collect::<Vec<_>>(),
        "printed in order without gaps"
    );
    // Committed offsets survive a broker crash too.
    let committed = admin.committed("g", "c").await.unwrap()[0].1;
    assert!(
        committed > 0 && committed <= printed.len() as u64,
        "committed {committed}, printed {}",
        printed.len()
    );
    // The pipe's backpressure keeps the killed consumer near what was read:
    // it must have stopped mid-stream for this test to mean anything.
    assert!(
        committed < total,
        "the consumer finished before it was killed"
    );
    broker.kill9();
    broker.restart();

    let config = ConsumerConfig {
        group: Some("g".into()),
        reset: ResetPolicy::Error,
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::connect(&broker.grpc, "c", None, config)
        .await
        .unwrap();
    assert_eq!(
        c.positions()[&0],
        committed,
        "resumes at the committed offset"
    );
    let mut rest = Vec::new();
    while rest.len() < (total - committed) as usize {
        let rs = c.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!rs.is_empty(), "stalled after {} records", rest.len());
        rest.extend(rs.iter().map(|r| (r.offset, r.value.clone())));
    }
    assert_eq!(rest.first().unwrap().0, committed);
    for (i, (offset, value)) in rest.iter().enumerate() {
        assert_eq!(*offset, committed + i as u64);
        assert_eq!(value.as_ref(), format!("v{offset}").as_bytes());
    }
    // A group without commits and policy `error` fails explicitly.
    let config = ConsumerConfig {
        group: Some("fresh".into()),
        reset: ResetPolicy::Error,
        ..ConsumerConfig::default()
    };
    let err = Consumer::connect(&broker.grpc, "c", None, config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::NoCommittedOffset { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_data_and_old_offsets_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--retention-check-ms", "100"]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    let config = TopicConfig {
        segment_bytes: Some(128 * 1024),
        max_batch_bytes: Some(16 * 1024),
        retention_bytes: Some(256 * 1024),
        ..TopicConfig::default()
    };
    admin.create_topic("r", 1, 1, config).await.unwrap();
    let pconfig = ProducerConfig {
        batch_bytes_max: 8 * 1024,
        compression: Compression::None,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc, pconfig).await.unwrap();
    let mut ds = Vec::new();
    for i in 0..6000 {
        ds.push(
            producer
                .send("r", rec(None, format!("{i:0100}")), None)
                .await
                .unwrap(),
        );
    }
    for d in ds {
        d.await.unwrap();
    }
    let a = admin.clone();
    poll_until_async(
        "retention to bring the partition within its limit",
        Duration::from_secs(20),
        || {
            let a = a.clone();
            async move {
                let info = a.describe_topic("r").await.unwrap().partition_info[0].clone();
                // Retention runs every 100 ms, also while the producer is still
                // writing: wait for a pass after the last write.
                info.log_start_offset > 0 && info.size_bytes < (256 + 2 * 128) * 1024
            }
        },
    )
    .await;
    let info = admin.describe_topic("r").await.unwrap().partition_info[0].clone();
    assert!(
        info.size_bytes >= 256 * 1024 && info.size_bytes < (256 + 2 * 128) * 1024,
        "{info:?}"
    );

    let mut c = Consumer::connect(
        &broker.grpc,
        "r",
        None,
        ConsumerConfig {
            reset: ResetPolicy::Latest,
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    match c.seek(0, Seek::Offset(0)).await {
        Err(ClientError::OffsetOutOfRange {
            offset: 0,
            log_start_offset,
            high_watermark: 6000,
        }) => {
            assert!(log_start_offset >= info.log_start_offset);
        }
        other => panic!("expected out of range, got {other:?}"),
    }
    let err = raw_client(&broker.grpc)
        .await
        .fetch(pb::FetchRequest {
            topic: "r".into(),
            partition: 0,
            start: Some(pb::fetch_request::Start::Offset(0)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::OffsetOutOfRange);
    let d = strata_proto::status::decode_details(err.details()).unwrap();
    assert!(d.log_start_offset.unwrap() > 0);
    let out = cli(
        &broker.grpc,
        &["consume", "r", "-p", "0", "--offset", "0"],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("b", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..10 {
        producer
            .send_and_wait("b", rec(None, format!("{i}")), None)
            .await
            .unwrap();
    }
    let grpc = broker.grpc.clone();
    let hw = || {
        let grpc = grpc.clone();
        async move {
            Admin::connect(&grpc)
                .await
                .unwrap()
                .describe_topic("b")
                .await
                .unwrap()
                .partition_info[0]
                .high_watermark
        }
    };
    assert_eq!(hw().await, 10);

    // Unknown topic, invalid topic name.
    let err = producer
        .send("nope", rec(None, "x".into()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopic(_)), "{err}");
    let err = admin
        .create_topic("bad/name", 1, 1, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(strata_client::ErrorCode::InvalidTopicName),
        "{err}"
    );
    assert!(err.to_string().contains("'/' is not allowed"), "{err}");
    let err = admin
        .create_topic("b", 1, 1, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(strata_client::ErrorCode::TopicAlreadyExists)
    );
    let err = admin
        .create_topic(
            "z",
            1,
            1,
            TopicConfig {
                retention_ms: Some(0),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(strata_client::ErrorCode::InvalidConfig));

    let mut raw = raw_client(&broker.grpc).await;
    let produce = |batch: Vec<u8>| pb::ProduceRequest {
        topic: "b".into(),
        partition: 0,
        batch: Bytes::from(batch),
        acks: 0,
    };
    // Oversized batch (the default limit is 1 MiB).
    let mut big = Vec::new();
    strata_proto::encode_batch(
        &[rec(None, "x".repeat(2 << 20))],
        Compression::None,
        None,
        &mut big,
    )
    .unwrap();
    let err = raw.produce(produce(big)).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::BatchTooLarge, "{err}");
    // Bad CRC.
    let mut bad = Vec::new();
    strata_proto::encode_batch(
        &[rec(None, "hello".into())],
        Compression::None,
        None,
        &mut bad,
    )
    .unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let err = raw.produce(produce(bad)).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::CorruptBatch);
    assert!(err.message().contains("CRC mismatch"), "{}", err.message());
    // A valid header and CRC around records that do not parse: a record
    // count of 2 for 3 records (the CRC recomputed), refused before it is
    // stored (it used to be acknowledged and then be unreadable).
    let mut lying = Vec::new();
    strata_proto::encode_batch(
        &[
            rec(None, "a".into()),
            rec(None, "b".into()),
            rec(None, "c".into()),
        ],
        Compression::Lz4,
        None,
        &mut lying,
    )
    .unwrap();
    lying[12..16].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&lying[8..]);
    lying[4..8].copy_from_slice(&crc.to_le_bytes());
    let err = raw.produce(produce(lying)).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::CorruptBatch, "{err}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("left after the last record"),
        "{}",
        err.message()
    );
    // A message over the broker's gRPC limit (16 MiB) is refused by tonic
    // before any handler runs; it still carries the rich status details.
    let err = raw
        .clone()
        .max_encoding_message_size(64 << 20)
        .produce(produce(vec![0u8; 17 << 20]))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::BatchTooLarge, "{err}");
    // Unknown partition.
    let mut ok = Vec::new();
    strata_proto::encode_batch(&[rec(None, "x".into())], Compression::None, None, &mut ok).unwrap();
    let err = raw
        .produce(pb::ProduceRequest {
            partition: 9,
            ..produce(ok)
        })
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::UnknownPartition);
    // Garbage protobuf.
    let err = raw_grpc(&broker.grpc, "/strata.v1.Strata/Produce", vec![0xff; 64])
        .await
        .unwrap_err();
    assert!(err.message().contains("decode"), "{err}");
    // Garbage JSON, wrong field types, unknown topic and bad queries over HTTP.
    for (method, path, body, code) in [
        ("POST", "/v1/topics/b/records", &b"{not json"[..], 400),
        (
            "POST",
            "/v1/topics/b/records",
            br#"{"records":[{"value":5}]}"#,
            400,
        ),
        (
            "POST",
            "/v1/topics/b/records",
            br#"{"records":[{"value":"!!","partition":0}],"encoding":"base64"}"#,
            400,
        ),
        ("POST", "/v1/topics/b/records", br#"{"records":[]}"#, 400),
        (
            "POST",
            "/v1/topics/nope/records",
            br#"{"records":[{"value":"x"}]}"#,
            404,
        ),
        (
            "GET",
            "/v1/topics/b/partitions/0/records?offset=abc",
            b"",
            400,
        ),
        // A well-formed read of records that do not exist (OFFSET_OUT_OF_RANGE).
        (
            "GET",
            "/v1/topics/b/partitions/0/records?offset=99",
            b"",
            404,
        ),
        ("GET", "/v1/topics/b/partitions/7/records", b"", 404),
    ] {
        let (got, resp) = http(&broker.http, method, path, body);
        assert_eq!(got, code, "{method} {path}: {resp}");
        let v: serde_json::Value =
            serde_json::from_str(&resp).unwrap_or_else(|_| panic!("{path}: not JSON: {resp}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{resp}"
        );
    }
    // CLI exit codes.
    assert_eq!(
        cli(&broker.grpc, &["consume", "nope"], None).status.code(),
        Some(3)
    );
    assert_eq!(
        cli("127.0.0.1:1", &["topic", "list"], None).status.code(),
        Some(5)
    );

    // Nothing changed, and the broker still serves.
    assert!(broker.is_running());
    assert_eq!(hw().await, 10);
    producer
        .send_and_wait("b", rec(None, "after".into()), None)
        .await
        .unwrap();
    assert_eq!(hw().await, 11);
    assert_eq!(read_all(&broker.grpc, "b").await.len(), 11);
    let _ = Acks::All;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_never_duplicate_and_sequences_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("i", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let mut raw = raw_client(&broker.grpc).await;
    let id = raw
        .init_producer(pb::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner();
    let batch = |epoch: u16, seq: u32, n: usize| {
        let records: Vec<Record> = (0..n).map(|k| rec(None, format!("s{seq}-{k}"))).collect();
        let mut out = Vec::new();
        let p = strata_proto::ProducerInfo {
            producer_id: id.producer_id,
            producer_epoch: epoch,
            base_sequence: seq,
        };
        strata_proto::encode_batch(&records, Compression::Lz4, Some(p), &mut out).unwrap();
        pb::ProduceRequest {
            topic: "i".into(),
            partition: 0,
            batch: Bytes::from(out),
            acks: 0,
        }
    };
    let first = raw.produce(batch(0, 0, 3)).await.unwrap().into_inner();
    assert_eq!((first.base_offset, first.duplicate), (Some(0), false));
    let second = raw.produce(batch(0, 3, 2)).await.unwrap().into_inner();
    assert_eq!(second.base_offset, Some(3));
    // A retry of either batch gets the original offsets and appends nothing.
    let again = raw.produce(batch(0, 0, 3)).await.unwrap().into_inner();
    assert_eq!((again.base_offset, again.duplicate), (Some(0), true));
    let again = raw.produce(batch(0, 3, 2)).await.unwrap().into_inner();
    assert_eq!((again.base_offset, again.duplicate), (Some(3), true));
    // A gap is refused; an older epoch is fenced once a newer one wrote.
    let err = raw.produce(batch(0, 9, 1)).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::OutOfOrderSequence, "{err}");
    let err = raw.produce(batch(1, 4, 1)).await.unwrap_err();
    assert_eq!(
        status_code(&err),
        ErrorCode::OutOfOrderSequence,
        "a new epoch starts at sequence 0"
    );
    raw.produce(batch(1, 0, 1)).await.unwrap();
    let err = raw.produce(batch(0, 5, 1)).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::ProducerFenced);
    let values: Vec<Bytes> = read_all(&broker.grpc, "i").await.into_values().collect();
    let want: Vec<Bytes> = ["s0-0", "s0-1", "s0-2", "s3-0", "s3-1", "s0-0"]
        .into_iter()
        .map(|s| Bytes::from_static(s.as_bytes()))
        .collect();
    assert_eq!(values, want);

    // Offsets by timestamp: records carry their timestamps.
    let p = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("ts", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    for t in [1000, 2000, 3000] {
        let r = Record {
            timestamp_ms: 1_700_000_000_000 + t,
            ..rec(None, format!("t{t}"))
        };
        p.send_and_wait("ts", r, None).await.unwrap();
    }
    let o = admin
        .list_offsets(
            "ts",
            0,
            strata_client::OffsetSpec::Timestamp(1_700_000_001_500),
        )
        .await
        .unwrap();
    assert_eq!(o.offset, 1);
    let o = admin
        .list_offsets(
            "ts",
            0,
            strata_client::OffsetSpec::Timestamp(1_800_000_000_000),
        )
        .await
        .unwrap();
    assert_eq!(o.offset, 3, "past the last record: the high watermark");
}

/// One `strata_partition{figure=…}` gauge of a partition from `/metrics`.
fn partition_figure(http_addr: &str, topic: &str, partition: u32, figure: &str) -> Option<u64> {
    let (_, body) = http(http_addr, "GET", "/metrics", b"");
    let labels = format!(
        "strata_partition{{figure=\"{figure}\",partition=\"{partition}\",topic=\"{topic}\"}}"
    );
    body.lines()
        .find_map(|l| l.strip_prefix(labels.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Guards issue 12 item 3: a producer id never issued was accepted (a
/// client writing under id 3 made the real owner's first batch a
/// "duplicate"), and producer state never expired nor had a bound (20,000
/// short-lived producers left thousands of ids in every partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_checked_and_idle_producers_expire() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_config(
        dir.path(),
        "producer_id_expiration_ms = 3000\nproducers_per_partition_max = 2\nretention_check_ms = 100\n",
    );
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("p", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let mut raw = raw_client(&broker.grpc).await;
    let batch = |id: u64, seq: u32| {
        let mut out = Vec::new();
        let p = strata_proto::ProducerInfo {
            producer_id: id,
            producer_epoch: 0,
            base_sequence: seq,
        };
        strata_proto::encode_batch(
            &[rec(None, format!("{id}-{seq}"))],
            Compression::None,
            Some(p),
            &mut out,
        )
        .unwrap();
        pb::ProduceRequest {
            topic: "p".into(),
            partition: 0,
            batch: Bytes::from(out),
            acks: 0,
        }
    };
    let hw = || partition_figure(&broker.http, "p", 0, "high_watermark");

    // Ids never issued are refused and write nothing: small ones a client
    // would guess, and one issued by another broker (another key).
    let other_dir = tempfile::tempdir().unwrap();
    let other = BrokerProcess::start(&other_dir.path().join("data"), &[]);
    let foreign = raw_client(&other.grpc)
        .await
        .init_producer(pb::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner()
        .producer_id;
    for fake in [3, 1 << 20, foreign] {
        let err = raw.produce(batch(fake, 0)).await.unwrap_err();
        assert_eq!(
            status_code(&err),
            ErrorCode::UnknownProducer,
            "{fake}: {err}"
        );
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }
    assert_eq!(hw(), Some(0));

    let issue = || {
        let mut raw = raw.clone();
        async move {
            raw.init_producer(pb::InitProducerRequest {})
                .await
                .unwrap()
                .into_inner()
                .producer_id
        }
    };
    let (a, b, c) = (issue().await, issue().await, issue().await);
    assert!(a != b && b != c && a != c);
    raw.produce(batch(a, 0)).await.unwrap();
    // Known: a gap is refused.
    let err = raw.produce(batch(a, 5)).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::OutOfOrderSequence, "{err}");
    raw.produce(batch(b, 0)).await.unwrap();
    assert_eq!(partition_figure(&broker.http, "p", 0, "producers"), Some(2));
    // A third producer: the partition keeps two (the least recently seen
    // goes).
    raw.produce(batch(c, 0)).await.unwrap();
    assert_eq!(partition_figure(&broker.http, "p", 0, "producers"), Some(2));
    let err = raw.produce(batch(c, 9)).await.unwrap_err();
    assert_eq!(
        status_code(&err),
        ErrorCode::OutOfOrderSequence,
        "c is kept: {err}"
    );

    // Idle for 3 s, every producer is forgotten; one coming back starts
    // afresh (any sequence), as after a restart.
    poll_until("idle producers expire", Duration::from_secs(15), || {
        partition_figure(&broker.http, "p", 0, "producers") == Some(0)
    });
    let r = raw.produce(batch(c, 9)).await.unwrap().into_inner();
    assert_eq!((r.base_offset, r.duplicate), (Some(3), false));
    assert_eq!(hw(), Some(4));
    drop(other);
}

/// Guards issue 12 item 6: time retention trusted producer timestamps, so
/// one record dated in the future kept its segment, and everything after
/// it, forever. Such a batch is now refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_dated_in_the_future_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("f", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut raw = raw_client(&broker.grpc).await;
    let produce = |ahead_ms: i64| {
        let mut raw = raw.clone();
        async move {
            let r = Record {
                timestamp_ms: now + ahead_ms,
                ..rec(None, format!("{ahead_ms}"))
            };
            let mut out = Vec::new();
            strata_proto::encode_batch(&[r], Compression::None, None, &mut out).unwrap();
            raw.produce(pb::ProduceRequest {
                topic: "f".into(),
                partition: 0,
                batch: Bytes::from(out),
                acks: 0,
            })
            .await
        }
    };
    // Two hours ahead: past the default hour.
    let err = produce(2 * 3_600_000).await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::InvalidTimestamp, "{err}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("message_timestamp_after_max_ms"),
        "{err}"
    );
    // Ten minutes ahead (a skewed producer clock) and the past are fine.
    produce(600_000).await.unwrap();
    produce(-86_400_000).await.unwrap();
    let _ = &mut raw;
    let values: Vec<Bytes> = read_all(&broker.grpc, "f").await.into_values().collect();
    assert_eq!(
        values,
        vec![Bytes::from("600000"), Bytes::from("-86400000")],
        "the refused batch left nothing"
    );
    // Over HTTP, a request with one such record writes none of its records,
    // even those stored as a batch of their own (2^32 ms apart).
    let body = format!(
        r#"{{"records":[{{"value":"old","timestamp_ms":{}}},{{"value":"ahead","timestamp_ms":{}}}]}}"#,
        now - (1 << 32),
        now + 2 * 3_600_000
    );
    let (status, reply) = http(
        &broker.http,
        "POST",
        "/v1/topics/f/records",
        body.as_bytes(),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("INVALID_TIMESTAMP"), "{reply}");
    assert_eq!(
        read_all(&broker.grpc, "f").await.len(),
        2,
        "nothing of the request was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_topics_groups_and_offline_log_inspection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start(&data, &[]);
    let b = broker.grpc.clone();
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let out = cli(&b, args, stdin);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "2",
            "--retention-ms",
            "86400000",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = run(&["--json", "topic", "describe", "cli"], None);
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            d["partitions"].as_u64(),
            d["config"]["retention_ms"].as_i64()
        ),
        (Some(2), Some(86_400_000))
    );
    let (code, out, _) = run(
        &[
            "--json",
            "topic",
            "alter",
            "cli",
            "--retention-bytes",
            "1000000",
        ],
        None,
    );
    assert_eq!(code, Some(0));
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            d["config"]["retention_ms"].as_i64(),
            d["config"]["retention_bytes"].as_i64()
        ),
        (Some(86_400_000), Some(1_000_000))
    );
    let (code, _, err) = run(&["topic", "alter", "cli", "--retention-ms", "0"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("retention_ms must be positive"), "{err}");

    let input: String = (0..100)
        .map(|i| format!("key{}|value{i}\n", i % 5))
        .collect();
    let (code, _, err) = run(
        &["produce", "cli", "--key-separator", "|", "--quiet"],
        Some(input.as_bytes()),
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = run(&["--json", "consume", "cli", "--from", "earliest"], None);
    assert_eq!(code, Some(0));
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 100);
    // The same key always lands in the same partition.
    let mut by_key = BTreeMap::new();
    for r in &records {
        let p = by_key
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_insert(r["partition"].as_u64());
        assert_eq!(*p, r["partition"].as_u64());
    }
    // Group commit, offsets with lag, reset.
    let (code, _, _) = run(&["consume", "cli", "--group", "g", "-n", "10"], None);
    assert_eq!(code, Some(0));
    let (_, out, _) = run(&["--json", "group", "offsets", "g"], None);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let committed: u64 = rows.iter().map(|r| r["committed"].as_u64().unwrap()).sum();
    let lag: u64 = rows.iter().map(|r| r["lag"].as_u64().unwrap()).sum();
    // Exactly what was printed is committed: the records polled past -n
    // are read again by the group's next consumer.
    assert!(committed == 10 && committed + lag == 100, "{out}");
    let (code, _, _) = run(&["group", "reset", "g", "cli", "--to", "earliest"], None);
    assert_eq!(code, Some(0));
    let (_, out, _) = run(&["--json", "group", "offsets", "g"], None);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        rows.iter().all(|r| r["committed"].as_u64() == Some(0)),
        "{out}"
    );

    // Offline inspection: clean, then a flipped byte is found (exit 6).
    assert!(broker.stop());
    let (code, out, err) = run(&["log", "verify", data.to_str().unwrap()], None);
    assert_eq!(code, Some(0), "{out}{err}");
    // The topic's two segments, and the internal offsets topic's.
    let cli_ok = out
        .lines()
        .filter(|l| l.contains("/topics/cli/") && l.ends_with(" OK"))
        .count();
    assert_eq!(cli_ok, 2, "{out}");
    assert!(
        out.lines()
            .filter(|l| l.contains("/topics/__consumer_offsets/"))
            .all(|l| l.ends_with(" OK")),
        "{out}"
    );
    let (code, out, _) = run(
        &[
            "log",
            "dump",
            "--records",
            data.join("topics/cli/0").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("value"), "{out}");
    let seg = data.join("topics/cli/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let (code, out, _) = run(&["log", "verify", data.to_str().unwrap()], None);
    assert_eq!(code, Some(6), "{out}");
    assert!(
        out.contains("PROBLEM") && out.contains("CRC mismatch"),
        "{out}"
    );
    let (code, _, err) = run(
        &[
            "log",
            "verify",
            dir.path().join("nothing").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, Some(1), "{err}");

    // The broker recovers the damaged tail on restart and keeps serving.
    broker.restart();
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    let d = admin.describe_topic("cli").await.unwrap();
    assert_eq!(d.partitions, 2);
    assert_eq!(
        cli(&broker.grpc, &["topic", "delete", "cli"], None)
            .status
            .code(),
        Some(0)
    );
    assert!(matches!(
        admin.describe_topic("cli").await.unwrap_err(),
        ClientError::UnknownTopic(_)
    ));
}

/// The ordered produce stream: requests are appended and answered in the
/// order sent; the first error ends the stream and nothing after it is
/// appended (so a producer's sequence can never be overtaken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stream_is_ordered_and_stops_at_the_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    Admin::connect(&broker.grpc)
        .await
        .unwrap()
        .create_topic("s", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let batch = |v: &str, corrupt: bool| {
        let mut out = Vec::new();
        strata_proto::encode_batch(
            &[rec(None, v.to_owned())],
            Compression::None,
            None,
            &mut out,
        )
        .unwrap();
        if corrupt {
            let last = out.len() - 1;
            out[last] ^= 1;
        }
        pb::ProduceRequest {
            topic: "s".into(),
            partition: 0,
            batch: Bytes::from(out),
            acks: 0,
        }
    };
    let reqs = vec![
        batch("a", false),
        batch("b", false),
        batch("bad", true),
        batch("c", false),
    ];
    let mut raw = raw_client(&broker.grpc).await;
    let mut responses = raw
        .produce_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        responses.message().await.unwrap().unwrap().base_offset,
        Some(0)
    );
    assert_eq!(
        responses.message().await.unwrap().unwrap().base_offset,
        Some(1)
    );
    let err = responses.message().await.unwrap_err();
    assert_eq!(status_code(&err), ErrorCode::CorruptBatch);
    let values: Vec<Bytes> = read_all(&broker.grpc, "s").await.into_values().collect();
    assert_eq!(
        values,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        "nothing after the error was appended"
    );
    // ACKS_NONE is answered once queued: without an offset, not a fake 0.
    let r = raw
        .produce(pb::ProduceRequest {
            acks: pb::Acks::None as i32,
            ..batch("d", false)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.base_offset, r.record_count), (None, 1));
}

/// `ProduceBatches` from a raw client, as an outside client would use it:
/// one request carries batches of several partitions, the response answers
/// each in order, a failed batch is answered in its result without ending
/// the stream, and a later request on the same stream is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_batches_answers_each_batch_and_survives_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("m", 2, 1, TopicConfig::default())
        .await
        .unwrap();
    let batch = |n: usize, tag: &str| {
        let records: Vec<Record> = (0..n).map(|i| rec(None, format!("{tag}{i}"))).collect();
        let mut out = Vec::new();
        strata_proto::encode_batch(&records, Compression::None, None, &mut out).unwrap();
        Bytes::from(out)
    };
    let item = |partition: u32, b: Bytes| pb::ProduceRequest {
        topic: "m".into(),
        partition,
        batch: b,
        acks: 0,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut raw = raw_client(&broker.grpc).await;
    let mut answers = raw
        .produce_batches(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::ProduceBatchesRequest {
        batches: vec![
            item(0, batch(3, "a")),
            item(9, batch(1, "x")),
            item(1, batch(2, "b")),
            item(0, batch(2, "c")),
        ],
    })
    .await
    .unwrap();
    let r = answers.message().await.unwrap().expect("an answer");
    assert_eq!(r.results.len(), 4, "one result per batch");
    let ok = |i: usize| match &r.results[i].outcome {
        Some(pb::produce_result::Outcome::Ok(o)) => (o.base_offset, o.record_count),
        other => panic!("batch {i}: {other:?}"),
    };
    assert_eq!(ok(0), (Some(0), 3));
    match &r.results[1].outcome {
        Some(pb::produce_result::Outcome::Error(d)) => {
            assert_eq!(d.code, ErrorCode::UnknownPartition as i32, "{d:?}")
        }
        other => panic!("batch 1: {other:?}"),
    }
    assert_eq!(ok(2), (Some(0), 2));
    assert_eq!(
        ok(3),
        (Some(3), 2),
        "batches of one partition keep their order"
    );
    // The stream goes on after the failed batch.
    tx.send(pb::ProduceBatchesRequest {
        batches: vec![item(1, batch(1, "d"))],
    })
    .await
    .unwrap();
    let r = answers.message().await.unwrap().expect("an answer");
    match &r.results[..] {
        [
            pb::ProduceResult {
                outcome: Some(pb::produce_result::Outcome::Ok(o)),
            },
        ] => assert_eq!((o.base_offset, o.record_count), (Some(2), 1)),
        other => panic!("{other:?}"),
    }
    let all = read_all(&broker.grpc, "m").await;
    assert_eq!(
        all.len(),
        8,
        "3 + 2 records on partition 0, 2 + 1 on partition 1"
    );
    assert_eq!(all[&(0, 4)], Bytes::from("c1"));
    assert_eq!(all[&(1, 2)], Bytes::from("d0"));
}

/// A stopped (SIGSTOP) broker does not hold a producer: its requests time
/// out, every record sent meanwhile fails within the delivery timeout
/// saying whether it may have been written, none is written twice when the
/// broker resumes and reads what was queued on its sockets, a record that
/// never reached it is not written at all, and the producer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_times_requests_out_and_nothing_is_written_twice() {
    strata_tests::init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    // Started on port 0: the metadata names the port it is bound to (a
    // client that learned ":0" would alternate with a dead address).
    let meta = admin.metadata(&[]).await.unwrap();
    assert_eq!(meta.brokers.len(), 1);
    assert_eq!(meta.brokers[0].grpc_addr, broker.grpc);
    admin
        .create_topic("s", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::connect(
        &broker.grpc,
        ProducerConfig {
            linger: Duration::from_millis(1),
            batch_bytes_max: 1024,
            delivery_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_millis(500),
            retry_backoff_max: Duration::from_millis(200),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..100 {
        let m = producer
            .send_and_wait("s", rec(None, format!("v{i}")), Some(0))
            .await
            .unwrap();
        acked.insert(m.offset.unwrap(), format!("v{i}"));
    }

    broker.signal("STOP");
    let stopped = std::time::Instant::now();
    let mut deliveries = Vec::new();
    for i in 100..300 {
        let d = producer
            .send("s", rec(None, format!("v{i}")), Some(0))
            .await
            .unwrap();
        deliveries.push((format!("v{i}"), d));
    }
    let mut maybe_written = HashSet::new();
    let mut not_written = HashSet::new();
    for (value, d) in deliveries {
        match tokio::time::timeout(Duration::from_secs(10), d)
            .await
            .expect("a record sent to a stopped broker stays unresolved")
        {
            Err(ClientError::DeliveryTimedOut {
                outcome_unknown, ..
            }) => {
                if outcome_unknown {
                    maybe_written.insert(value);
                } else {
                    not_written.insert(value);
                }
            }
            other => panic!("{value}: {other:?}"),
        }
    }
    let resolved_in = stopped.elapsed();
    broker.signal("CONT");
    println!(
        "stopped broker: 200 records failed within {resolved_in:?} ({} may have been written, {} were not)",
        maybe_written.len(),
        not_written.len()
    );
    assert!(
        resolved_in < Duration::from_millis(4_500),
        "failing took {resolved_in:?}"
    );

    // The producer goes on once the broker is back.
    for i in 300..400 {
        let m = tokio::time::timeout(
            Duration::from_secs(30),
            producer.send_and_wait("s", rec(None, format!("v{i}")), Some(0)),
        )
        .await
        .expect("the producer recovers")
        .unwrap();
        acked.insert(m.offset.unwrap(), format!("v{i}"));
    }
    let end = admin
        .list_offsets("s", 0, OffsetSpec::Latest)
        .await
        .unwrap()
        .offset;
    let mut c = strata_tests::reader(&broker.grpc, "s").await;
    let mut log = Vec::new();
    while (log.len() as u64) < end {
        for r in c.poll(Duration::from_millis(500)).await.unwrap() {
            log.push(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    let mut counts = BTreeMap::<&str, u32>::new();
    for v in &log {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    for v in &not_written {
        assert!(
            !counts.contains_key(v.as_str()),
            "{v} was reported not written"
        );
    }
    for (offset, v) in &acked {
        assert_eq!(&log[*offset as usize], v, "acknowledged offset {offset}");
    }
}

/// Every HTTP error is the OpenAPI document's JSON error (unknown route,
/// wrong method, unparsable path parameter, body over the limit, repeated
/// header keys), repeated header keys travel in `header_list`, and slow
/// clients are cut off: headers not sent in time close the connection, a
/// body not sent in time gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_and_slow_clients_are_cut_off() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_config(
        dir.path(),
        "http_read_timeout_ms = 500\nhttp_body_bytes_max = 2048\nhttp_connections_max = 4\n",
    );
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("h", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let json_error = |(status, body): (u16, String), want: u16, code: &str| {
        assert_eq!(status, want, "{body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
        assert_eq!(v["error"]["code"], code, "{body}");
        v["error"]["message"].as_str().unwrap().to_owned()
    };
    let h = broker.http.as_str();
    json_error(http(h, "GET", "/nope", b""), 404, "INVALID_REQUEST");
    json_error(
        http(h, "DELETE", "/v1/topics/h/records", b""),
        405,
        "INVALID_REQUEST",
    );
    let m = json_error(
        http(h, "GET", "/v1/topics/h/partitions/-1/records", b""),
        400,
        "INVALID_REQUEST",
    );
    assert!(m.contains("invalid path"), "{m}");
    let big = format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "x".repeat(4096));
    json_error(
        http(h, "POST", "/v1/topics/h/records", big.as_bytes()),
        413,
        "BATCH_TOO_LARGE",
    );
    let m = json_error(
        http(
            h,
            "POST",
            "/v1/topics/h/records",
            br#"{"records":[{"value":"x","headers":{"a":"1","a":"2"}}]}"#,
        ),
        400,
        "INVALID_REQUEST",
    );
    assert!(m.contains("header_list"), "{m}");
    // Repeated keys through header_list are kept, in order.
    let (status, body) = http(
        h,
        "POST",
        "/v1/topics/h/records",
        br#"{"records":[{"value":"x","headers":{"z":"0"},"header_list":[{"key":"a","value":"1"},{"key":"a","value":"2"}]}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(h, "GET", "/v1/topics/h/partitions/0/records?offset=0", b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["records"][0]["header_list"],
        serde_json::json!([
            {"key": "z", "value": "0"},
            {"key": "a", "value": "1"},
            {"key": "a", "value": "2"}
        ])
    );
    // Timestamps further apart than one batch's i32 deltas: stored as two
    // batches, in order (was a 400 for a valid request).
    let (status, body) = http(
        h,
        "POST",
        "/v1/topics/h/records",
        br#"{"records":[{"value":"a","timestamp_ms":0},{"value":"b","timestamp_ms":1099511627776}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["offsets"],
        serde_json::json!([{"partition": 0, "offset": 1}, {"partition": 0, "offset": 2}])
    );
    let (_, body) = http(h, "GET", "/v1/topics/h/partitions/0/records?offset=1", b"");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stored: Vec<_> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["value"].clone(), r["timestamp_ms"].clone()))
        .collect();
    assert_eq!(
        stored,
        [
            (serde_json::json!("a"), serde_json::json!(0)),
            (
                serde_json::json!("b"),
                serde_json::json!(1_099_511_627_776_i64)
            )
        ]
    );

    // Headers that never finish: the connection is closed.
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(h).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a connection with unfinished headers stayed open {:?}",
        started.elapsed()
    );
    // A body that never finishes: 408.
    let mut s = std::net::TcpStream::connect(h).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /v1/topics/h/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"rec",
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 500 ms"), "{text}");
}

/// Regression (issue 12 item 4): hyper's header timeout starts only once a
/// connection has shown its protocol, i.e. after its first bytes, so a
/// client that connected and sent nothing, or a prefix of the HTTP/2
/// preface, held one of the `http_connections_max` slots forever; with
/// every slot held that way the broker answered nobody. Such connections
/// are closed `http_read_timeout_ms` after accept, and so is a keep-alive
/// connection idle after its request.
#[test]
fn idle_http_connections_are_closed_at_the_read_timeout_and_free_their_slots() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_config(
        dir.path(),
        "http_read_timeout_ms = 500\nhttp_connections_max = 2\n",
    );
    let h = broker.http.clone();
    assert_eq!(http(&h, "GET", "/health", b"").0, 200);

    // Both slots taken by clients that never send a request.
    let opened = Instant::now();
    let silent = std::net::TcpStream::connect(&h).unwrap();
    let mut preface = std::net::TcpStream::connect(&h).unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    // A third client: accepted only once one of them is closed.
    let third = {
        let h = h.clone();
        std::thread::spawn(move || {
            let r = http(&h, "GET", "/health", b"");
            (r, opened.elapsed())
        })
    };
    let closed_after = |mut s: &std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "an idle connection is still open after {:?} ({e})",
                opened.elapsed()
            ),
        }
        opened.elapsed()
    };
    let silent_closed = closed_after(&silent);
    let preface_closed = closed_after(&preface);
    let ((status, body), served) = third.join().unwrap();
    println!(
        "idle connections closed after {silent_closed:?} (no byte) and {preface_closed:?} \
         (part of the HTTP/2 preface); the waiting client was served after {served:?}"
    );
    assert_eq!(status, 200, "{body}");
    // Closed at the deadline, not before it, nor long after.
    for t in [silent_closed, preface_closed] {
        assert!(
            (Duration::from_millis(450)..Duration::from_secs(5)).contains(&t),
            "{t:?}"
        );
    }
    // The limit held: the third client waited for a slot to free.
    assert!(served >= Duration::from_millis(500), "{served:?}");

    // A keep-alive connection idle after its response is closed too.
    let mut s = std::net::TcpStream::connect(&h).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("a keep-alive connection stayed open ({e})"));
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Regression (issue 12 item 4): a Fetch without `follow` at the tail with
/// `max_wait_ms = 2^32-1` waited until the client gave up; the broker cuts
/// the wait to `fetch_wait_ms_max` (60 s by default, 300 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wait_at_the_tail_is_capped_by_fetch_wait_ms_max() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_config(dir.path(), "fetch_wait_ms_max = 300\n");
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("w", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let mut client = raw_client(&broker.grpc).await;
    let started = std::time::Instant::now();
    let req = pb::FetchRequest {
        topic: "w".into(),
        partition: 0,
        start: Some(pb::fetch_request::Start::Position(
            pb::Position::Latest as i32,
        )),
        max_bytes: 0,
        follow: false,
        max_wait_ms: u32::MAX,
        member: None,
    };
    let mut stream = client.fetch(req).await.unwrap().into_inner();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the fetch stream stayed open past fetch_wait_ms_max");
    let waited = started.elapsed();
    println!("a fetch with max_wait_ms = 2^32-1 ended after {waited:?}");
    assert!(end.unwrap().is_none(), "nothing was produced");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}

/// The HTTP query's caps and paging as docs/openapi.json states them: at
/// most `max` records (capped by `http_records_max`), at most the stored
/// batches within `fetch_bytes_default` from the batch holding `offset`
/// (always one), and `next_offset` to page on until it reaches the high
/// watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_query_pages_by_next_offset_under_its_size_caps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_config(
        dir.path(),
        "http_records_max = 25\nfetch_bytes_default = 1024\n",
    );
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("q", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let h = broker.http.as_str();
    // One batch per request: two of 10 records over 1,024 bytes, one of 40
    // small records.
    for (n, len) in [(10, 200), (10, 200), (40, 1)] {
        let records: Vec<_> = (0..n)
            .map(|_| serde_json::json!({"value": "v".repeat(len)}))
            .collect();
        let body = serde_json::json!({ "records": records }).to_string();
        let (status, body) = http(h, "POST", "/v1/topics/q/records", body.as_bytes());
        assert_eq!(status, 200, "{body}");
    }
    let page = |query: &str| {
        let (status, body) = http(
            h,
            "GET",
            &format!("/v1/topics/q/partitions/0/records?{query}"),
            b"",
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let offsets: Vec<u64> = v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(v["high_watermark"], 60, "{body}");
        (offsets, v["next_offset"].as_u64().unwrap())
    };
    // The byte cap: one batch (over fetch_bytes_default on its own).
    assert_eq!(page("offset=0&max=1000"), ((0..10).collect(), 10));
    // max, from inside a batch.
    assert_eq!(page("offset=5&max=3"), (vec![5, 6, 7], 8));
    // The record cap: http_records_max of a 40-record batch.
    assert_eq!(page("offset=20&max=1000"), ((20..45).collect(), 45));
    // At the high watermark: nothing, and next_offset stays.
    assert_eq!(page("offset=60"), (vec![], 60));
    // Paging from the log start reads every offset once.
    let (mut all, mut next) = page("max=1000");
    for _ in 0..20 {
        if next == 60 {
            break;
        }
        let (offsets, n) = page(&format!("offset={next}&max=1000"));
        assert!(n > next, "no progress at {next}");
        all.extend(offsets);
        next = n;
    }
    assert_eq!(all, (0..60).collect::<Vec<u64>>());
}
