//! The predictive HTTP API of a real `strata-ml serve` process: start
//! training over HTTP, watch status (version, offsets, metrics, lag),
//! predict, score a topic into another, and reject bad input with 4xx.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use strata_client::{Admin, Producer, ProducerConfig, Record, TopicConfig};
use strata_tests::{BrokerProcess, bin, http, poll_until};

struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_status_predict_and_process_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("phish", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    admin
        .create_topic("scores", 1, 1, TopicConfig::default())
        .await
        .unwrap();
    let text = include_str!("data/phishing.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let producer = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    let mut ds = Vec::new();
    let mut first_row = String::new();
    for l in lines {
        // CSV lines, in file order: the model should see exactly River's stream.
        if first_row.is_empty() {
            let obj: serde_json::Map<String, Value> = header
                .iter()
                .zip(l.split(','))
                .filter(|(k, _)| **k != "is_phishing")
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        serde_json::json!(v.parse::<f64>().unwrap()),
                    )
                })
                .collect();
            first_row = Value::Object(obj).to_string();
        }
        let r = Record {
            key: None,
            value: Bytes::from(l.to_owned()),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000,
        };
        ds.push(producer.send("phish", r, Some(0)).await.unwrap());
    }
    for d in ds {
        d.await.unwrap();
    }
    producer.close().await.unwrap();

    let mut child = Command::new(bin("strata-ml"))
        .args([
            "--store",
            dir.path().join("ml").to_str().unwrap(),
            "--broker",
            &broker.grpc,
            "serve",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("strata-ml ready http=")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let _worker = Worker(child);

    let csv = serde_json::json!(header);
    for (name, lr) in [("m1", 0.005), ("m2", 0.01)] {
        let body = serde_json::json!({
            "name": name, "topic": "phish", "algo": "logistic-regression", "label": "is_phishing",
            "lr": lr, "csv_header": csv, "follow": false, "checkpoint_every": 500,
        });
        let (code, resp) = http(&addr, "POST", "/v1/models", body.to_string().as_bytes());
        assert_eq!(code, 202, "{resp}");
    }
    for name in ["m1", "m2"] {
        poll_until("training to finish", Duration::from_secs(30), || {
            let (_, resp) = http(&addr, "GET", &format!("/v1/models/{name}"), b"");
            json(&resp)["state"] == "finished"
        });
    }
    // Several models learned from the same topic; each matches River.
    let (code, resp) = http(&addr, "GET", "/v1/models/m1", b"");
    assert_eq!(code, 200);
    let s = json(&resp);
    assert_eq!(s["offsets"]["0"], 1250);
    assert_eq!(s["lag"]["0"], 0);
    assert_eq!(
        s["version"], 2,
        "a checkpoint after the first 1000-record turn, one at the end"
    );
    assert_eq!(
        format!("{:.4}", s["metrics"]["accuracy"].as_f64().unwrap()),
        "0.8872"
    );
    assert!(
        s["metrics"]["baseline"].as_f64().unwrap() < 0.8872,
        "the model beats the last-label baseline"
    );
    let (_, resp) = http(&addr, "GET", "/v1/models/m2", b"");
    assert_eq!(
        format!(
            "{:.4}",
            json(&resp)["metrics"]["accuracy"].as_f64().unwrap()
        ),
        "0.8928"
    );
    let (_, resp) = http(&addr, "GET", "/v1/models", b"");
    assert_eq!(json(&resp)["models"].as_array().unwrap().len(), 2);

    // Predictions carry the model version.
    let body = format!(r#"{{"instances": [{first_row}, {first_row}]}}"#);
    let (code, resp) = http(&addr, "POST", "/v1/models/m1/predict", body.as_bytes());
    assert_eq!(code, 200, "{resp}");
    let p = json(&resp);
    assert_eq!(p["version"], s["version"]);
    assert_eq!(p["predictions"].as_array().unwrap().len(), 2);
    let pt = p["predictions"][0]["p_true"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&pt));

    // Bad input: a clear 4xx, and nothing changes.
    for (method, path, body, code) in [
        (
            "POST",
            "/v1/models/nope/predict",
            format!(r#"{{"features": {first_row}}}"#),
            404,
        ),
        ("POST", "/v1/models/m1/predict", "{bad json".to_owned(), 400),
        (
            "POST",
            "/v1/models/m1/predict",
            r#"{"features": {"https": {"nested": 1}}}"#.to_owned(),
            400,
        ),
        (
            "POST",
            "/v1/models/m1/predict",
            r#"{"instances": []}"#.to_owned(),
            400,
        ),
        (
            "POST",
            "/v1/models/m1/predict",
            r#"{"rows": 1}"#.to_owned(),
            400,
        ),
        (
            "POST",
            "/v1/models",
            r#"{"name":"x","topic":"phish","algo":"magic","label":"y"}"#.to_owned(),
            400,
        ),
        (
            "POST",
            "/v1/models",
            r#"{"name":"bad name","topic":"phish","algo":"logistic-regression","label":"y"}"#
                .to_owned(),
            400,
        ),
        (
            "POST",
            "/v1/models",
            r#"{"name":"x","topic":"nope","algo":"logistic-regression","label":"y"}"#.to_owned(),
            404,
        ),
        ("GET", "/v1/models/nope", String::new(), 404),
        (
            "POST",
            "/v1/process",
            r#"{"model":"nope","input_topic":"phish","output_topic":"scores"}"#.to_owned(),
            404,
        ),
    ] {
        let (got, resp) = http(&addr, method, path, body.as_bytes());
        assert_eq!(got, code, "{method} {path}: {resp}");
        assert!(
            json(&resp)["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{resp}"
        );
    }
    let (_, resp) = http(&addr, "GET", "/v1/models/m1", b"");
    assert_eq!(
        json(&resp)["version"],
        s["version"],
        "bad requests changed nothing"
    );

    // Score the topic into another one.
    let (code, resp) = http(
        &addr,
        "POST",
        "/v1/process",
        br#"{"model":"m1","input_topic":"phish","output_topic":"scores"}"#,
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(json(&resp)["processed"], 1250);
    let hw = admin.describe_topic("scores").await.unwrap().partition_info[0].high_watermark;
    assert_eq!(hw, 1250);
}
