//! The signature property: a real `strata-ml train` process killed with
//! SIGKILL at several random points and restarted each time ends with model
//! parameters, metrics and predictions bit-identical to a run that was never
//! interrupted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use strata_client::{Admin, Producer, ProducerConfig, Record, TopicConfig};
use strata_ml::checkpoint::Store;
use strata_ml::features::{FeatureSpec, extract};
use strata_tests::{BrokerProcess, bin};

const COPIES: usize = 40;

fn phishing_json() -> Vec<String> {
    let text = include_str!("data/phishing.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let mut obj = serde_json::Map::new();
            for (k, v) in header.iter().zip(l.split(',')) {
                let value = match v {
                    "True" => serde_json::json!(true),
                    "False" => serde_json::json!(false),
                    n => serde_json::json!(n.parse::<f64>().unwrap()),
                };
                obj.insert((*k).to_owned(), value);
            }
            serde_json::Value::Object(obj).to_string()
        })
        .collect()
}

fn train(broker: &str, store: &Path, algo: &[&str], kill_after: Option<usize>) -> (usize, bool) {
    let mut child = Command::new(bin("strata-ml"))
        .args([
            "--store",
            store.to_str().unwrap(),
            "--broker",
            broker,
            "train",
            "--topic",
            "phish",
            "--model",
            "m",
        ])
        .args(algo)
        .args(["--checkpoint-every", "300", "--block", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut checkpoints = 0;
    let mut finished = false;
    for line in stdout.lines().map_while(Result::ok) {
        if line.starts_with("checkpoint ") {
            checkpoints += 1;
            if kill_after == Some(checkpoints) {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        finished |= line.starts_with("done ");
    }
    let status = child.wait().unwrap();
    if kill_after.is_none() {
        assert!(status.success(), "training failed");
    }
    (checkpoints, finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_resumed_training_is_bit_identical_to_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("phish", 2, 1, TopicConfig::default())
        .await
        .unwrap();
    let rows = phishing_json();
    let producer = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    let mut ds = Vec::new();
    for (i, row) in rows.iter().cycle().take(rows.len() * COPIES).enumerate() {
        let r = Record {
            key: None,
            value: Bytes::from(row.clone()),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000,
        };
        ds.push(
            producer
                .send("phish", r, Some((i % 2) as u32))
                .await
                .unwrap(),
        );
    }
    for d in ds {
        d.await.unwrap();
    }
    // One garbage record: reported and skipped, not fatal.
    let junk = Record {
        key: None,
        value: Bytes::from_static(b"{oops"),
        headers: vec![],
        timestamp_ms: 0,
    };
    producer
        .send_and_wait("phish", junk, Some(1))
        .await
        .unwrap();
    producer.close().await.unwrap();

    // A supervised learner, and one whose state includes a random generator.
    let logistic: &[&str] = &[
        "--algo",
        "logistic-regression",
        "--label",
        "is_phishing",
        "--lr",
        "0.005",
    ];
    let hst: &[&str] = &[
        "--algo",
        "half-space-trees",
        "--seed",
        "7",
        "--ignore",
        "is_phishing",
    ];
    for (name, algo) in [("logistic", logistic), ("hst", hst)] {
        let reference = dir.path().join(format!("{name}-reference"));
        let (total_checkpoints, finished) = train(&broker.grpc, &reference, algo, None);
        assert!(finished);
        assert!(total_checkpoints > 50, "{total_checkpoints} checkpoints");

        // Kill at several pseudo-random points (seeded, so a failure replays).
        let crashy = dir.path().join(format!("{name}-crashy"));
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = 1 + (seed % 12) as usize;
            let (_, finished) = train(&broker.grpc, &crashy, algo, Some(k));
            assert!(
                !finished,
                "{name}: the job finished before its kill; kill points must land mid-training"
            );
        }
        let (_, finished) = train(&broker.grpc, &crashy, algo, None);
        assert!(finished);

        let a = Store::open(&reference)
            .unwrap()
            .latest("m")
            .unwrap()
            .unwrap();
        let b = Store::open(&crashy).unwrap().latest("m").unwrap().unwrap();
        assert_eq!(a.offsets, b.offsets, "{name}");
        assert_eq!(a.learned, (rows.len() * COPIES) as u64, "{name}");
        assert_eq!(
            (a.skipped, b.skipped),
            (1, 1),
            "{name}: the garbage record is skipped once"
        );
        assert_eq!(b.recent_skips[0].partition, 1);
        assert!(
            b.recent_skips[0].reason.contains("not a JSON object"),
            "{:?}",
            b.recent_skips
        );
        // Bit-identical parameters (RNG state included) and metrics.
        assert_eq!(
            serde_json::to_string(&a.learner).unwrap(),
            serde_json::to_string(&b.learner).unwrap(),
            "{name}"
        );
        let bits = |w: &[f64]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&a.learner.parameters()),
            bits(&b.learner.parameters()),
            "{name}"
        );
        assert!(!a.learner.parameters().is_empty());
        assert_eq!(a.metrics, b.metrics, "{name}");
        // …and predictions.
        let (mut la, mut lb) = (a.learner.clone(), b.learner.clone());
        let spec = FeatureSpec {
            label: None,
            ..a.spec.clone()
        };
        for row in rows.iter().take(100) {
            let ex = extract(&spec, row.as_bytes()).unwrap();
            let (pa, pb) = (la.predict(&ex.features), lb.predict(&ex.features));
            assert_eq!(format!("{pa:?}"), format!("{pb:?}"), "{name}");
        }
        if name == "logistic" {
            let acc = a
                .metrics
                .report(strata_ml::learners::Task::Classification)
                .accuracy
                .unwrap();
            assert!(acc > 0.85, "prequential accuracy {acc}");
        }
    }
}
