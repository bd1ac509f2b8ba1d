//! The predictive HTTP API of `strata-ml serve`: start training jobs, list
//! models, show their status (version = offsets learned up to, metrics,
//! progress and lag), predict, and score a topic into another topic.
//!
//! Jobs run as tasks in this process; each checkpoint a job saves replaces
//! the model that predictions are served from, so every prediction carries
//! the version (and offsets) of the checkpoint it came from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use strata_client::{Admin, ClientError, OffsetSpec, Producer, ProducerConfig, Record};

use crate::checkpoint::{Checkpoint, Store};
use crate::features::{FeatureSpec, Format, extract};
use crate::learners::{Algo, Hyper, Prediction, UnknownAlgo};
use crate::trainer::{self, JobConfig, Start, validate_model_name};

/// A model as served.
#[derive(Debug)]
struct Served {
    checkpoint: Checkpoint,
    state: String,
}

/// Shared state of the server.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    broker: String,
    models: Arc<Mutex<HashMap<String, Served>>>,
}

impl Registry {
    /// A registry over `store`, serving every model it holds.
    pub fn new(store: Store, broker: String) -> Result<Self, crate::checkpoint::CheckpointError> {
        let mut models = HashMap::new();
        for name in store.models()? {
            if let Some(cp) = store.latest(&name)? {
                models.insert(
                    name,
                    Served {
                        checkpoint: cp,
                        state: "stopped".into(),
                    },
                );
            }
        }
        Ok(Registry {
            store,
            broker,
            models: Arc::new(Mutex::new(models)),
        })
    }
}

/// The router.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v1/models", post(create).get(list))
        .route("/v1/models/{name}", get(status))
        .route("/v1/models/{name}/predict", post(predict))
        .route("/v1/process", post(process))
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .layer(DefaultBodyLimit::max(8 << 20))
        .with_state(registry)
}

#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": {"message": self.1}}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn client_error(e: ClientError) -> ApiError {
    match e {
        ClientError::UnknownTopic(m) => ApiError(StatusCode::NOT_FOUND, m),
        e => ApiError(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

fn unknown_model(name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("unknown model {name:?}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateModel {
    name: String,
    topic: String,
    algo: String,
    label: Option<String>,
    #[serde(default)]
    from: Option<String>,
    lr: Option<f64>,
    intercept_lr: Option<f64>,
    l2: Option<f64>,
    hash_bits: Option<u8>,
    hash_seed: Option<u32>,
    csv_header: Option<Vec<String>>,
    #[serde(default)]
    text: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
    follow: Option<bool>,
    checkpoint_every: Option<u64>,
    k: Option<usize>,
    decay: Option<f64>,
    seed: Option<u64>,
}

/// Why a start position did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// `offset:` followed by something that is not an offset.
    #[error("bad offset in {0:?}")]
    Offset(String),
    /// `timestamp:` followed by something that is not a timestamp in ms.
    #[error("bad timestamp in {0:?}")]
    Timestamp(String),
    /// None of the forms.
    #[error("start must be earliest, latest, offset:N or timestamp:MS, not {0:?}")]
    Unknown(String),
}

/// Parses `earliest`, `latest`, `offset:N` or `timestamp:MS`.
pub fn parse_start(s: &str) -> Result<Start, StartError> {
    Ok(match s {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        t => match t.split_once(':') {
            Some(("offset", n)) => {
                Start::Offset(n.parse().map_err(|_| StartError::Offset(s.to_owned()))?)
            }
            Some(("timestamp", n)) => {
                Start::Timestamp(n.parse().map_err(|_| StartError::Timestamp(s.to_owned()))?)
            }
            _ => return Err(StartError::Unknown(s.to_owned())),
        },
    })
}

async fn create(State(r): State<Registry>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: CreateModel =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    validate_model_name(&req.name).map_err(|e| bad(e.to_string()))?;
    let algo: Algo = req
        .algo
        .parse()
        .map_err(|e: UnknownAlgo| bad(e.to_string()))?;
    if algo.supervised() && req.label.is_none() {
        return Err(bad(format!("{algo:?} needs a label field")));
    }
    let start =
        parse_start(req.from.as_deref().unwrap_or("earliest")).map_err(|e| bad(e.to_string()))?;
    if r.models
        .lock()
        .get(&req.name)
        .is_some_and(|m| m.state == "running")
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("model {:?} is already training", req.name),
        ));
    }
    let admin = Admin::connect(&r.broker).await.map_err(client_error)?;
    admin
        .describe_topic(&req.topic)
        .await
        .map_err(client_error)?;
    let d = Hyper::default();
    let cfg = JobConfig {
        broker: r.broker.clone(),
        topic: req.topic.clone(),
        model: req.name.clone(),
        algo,
        hyper: Hyper {
            k: req.k.unwrap_or(d.k),
            decay: req.decay.unwrap_or(d.decay),
            seed: req.seed.unwrap_or(d.seed),
            lr: req.lr.unwrap_or(d.lr),
            intercept_lr: req.intercept_lr.unwrap_or(d.intercept_lr),
            l2: req.l2.unwrap_or(d.l2),
            ..d
        },
        spec: FeatureSpec {
            format: match req.csv_header {
                Some(header) => Format::Csv { header },
                None => Format::Json,
            },
            label: req.label,
            ignore: req.ignore,
            text: req.text,
            hash_bits: req.hash_bits.unwrap_or(20).min(31),
            hash_seed: req.hash_seed.unwrap_or(0),
        },
        start,
        checkpoint_every: req.checkpoint_every.unwrap_or(10_000).max(1),
        checkpoint_interval: Duration::from_secs(5),
        block: 1000,
        follow: req.follow.unwrap_or(true),
    };
    spawn_job(&r, cfg);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"name": req.name, "state": "running"})),
    ))
}

/// Starts a job whose checkpoints update the served model.
pub fn spawn_job(r: &Registry, cfg: JobConfig) {
    let name = cfg.model.clone();
    {
        let mut models = r.models.lock();
        match models.get_mut(&name) {
            Some(m) => m.state = "running".into(),
            None => {
                // Visible (without a version) until its first checkpoint.
                let placeholder = Checkpoint {
                    version: 0,
                    model: name.clone(),
                    topic: cfg.topic.clone(),
                    offsets: BTreeMap::new(),
                    turn: 0,
                    spec: cfg.spec.clone(),
                    learner: crate::learners::Learner::new(cfg.algo, cfg.hyper),
                    metrics: Default::default(),
                    learned: 0,
                    skipped: 0,
                    recent_skips: Vec::new(),
                    saved_ms: 0,
                };
                models.insert(
                    name.clone(),
                    Served {
                        checkpoint: placeholder,
                        state: "running".into(),
                    },
                );
            }
        }
    }
    let r = r.clone();
    tokio::spawn(async move {
        let models = r.models.clone();
        let result = trainer::run(&r.store, &cfg, |cp| {
            let mut m = models.lock();
            if let Some(s) = m.get_mut(&cp.model) {
                s.checkpoint = cp.clone();
            }
        })
        .await;
        let mut m = models.lock();
        if let Some(s) = m.get_mut(&name) {
            s.state = match result {
                Ok(_) => "finished".into(),
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "training job failed");
                    format!("failed: {e}")
                }
            };
        }
    });
}

fn model_json(name: &str, s: &Served) -> Value {
    let cp = &s.checkpoint;
    json!({
        "name": name,
        "state": s.state,
        "topic": cp.topic,
        "algo": cp.learner.algo,
        "hyperparameters": cp.learner.hyper,
        "version": cp.version,
        "offsets": cp.offsets,
        "learned": cp.learned,
        "skipped": cp.skipped,
        "recent_skips": cp.recent_skips,
        "metrics": cp.metrics.report(cp.learner.algo.task()),
        "features": cp.learner.index.names().len(),
        "saved_ms": cp.saved_ms,
    })
}

async fn list(State(r): State<Registry>) -> impl IntoResponse {
    let models = r.models.lock();
    let mut names: Vec<&String> = models.keys().collect();
    names.sort();
    axum::Json(
        json!({"models": names.iter().map(|n| model_json(n, &models[*n])).collect::<Vec<_>>()}),
    )
}

async fn status(
    State(r): State<Registry>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (mut v, topic, offsets) = {
        let models = r.models.lock();
        let s = models.get(&name).ok_or_else(|| unknown_model(&name))?;
        (
            model_json(&name, s),
            s.checkpoint.topic.clone(),
            s.checkpoint.offsets.clone(),
        )
    };
    // Lag: records between the version's offsets and the high watermarks.
    if let Ok(admin) = Admin::connect(&r.broker).await {
        let mut lag = BTreeMap::new();
        for (p, o) in offsets {
            if let Ok(x) = admin.list_offsets(&topic, p, OffsetSpec::Latest).await {
                lag.insert(p, x.high_watermark.saturating_sub(o));
            }
        }
        v["lag"] = json!(lag);
    }
    Ok(axum::Json(v))
}

/// A prediction as JSON.
pub fn prediction_json(p: &Prediction) -> Value {
    match p {
        Prediction::Class { p_true } => json!({"class": p_true > &0.5, "p_true": p_true}),
        Prediction::Classes { probs } => json!({
            "class": probs.first().map(|(c, _)| c.clone()),
            "probabilities": probs.iter().map(|(c, p)| (c.clone(), *p)).collect::<BTreeMap<_, _>>(),
        }),
        Prediction::Value(v) => json!({"value": v}),
        Prediction::Cluster(c) => json!({"cluster": c}),
        Prediction::Anomaly(s) => json!({"anomaly_score": s}),
    }
}

/// Features of one instance given as a JSON object, with the model's spec.
fn instance(spec: &FeatureSpec, v: &Value, i: usize) -> Result<Vec<(String, f64)>, ApiError> {
    if !v.is_object() {
        return Err(bad(format!("instances[{i}] is not a JSON object")));
    }
    let json_spec = FeatureSpec {
        format: Format::Json,
        label: None,
        ..spec.clone()
    };
    let bytes = serde_json::to_vec(v).map_err(|e| bad(e.to_string()))?;
    let ex = extract(&json_spec, &bytes).map_err(|e| bad(format!("instances[{i}]: {e}")))?;
    Ok(ex
        .features
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v))
        .collect())
}

async fn predict(
    State(r): State<Registry>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let instances: Vec<Value> = match (v.get("instances"), v.get("features")) {
        (Some(Value::Array(a)), None) => a.clone(),
        (None, Some(f)) => vec![f.clone()],
        _ => {
            return Err(bad(
                "the body must be {\"features\": {...}} or {\"instances\": [{...}, ...]}",
            ));
        }
    };
    if instances.is_empty() {
        return Err(bad("instances is empty"));
    }
    let mut models = r.models.lock();
    let s = models.get_mut(&name).ok_or_else(|| unknown_model(&name))?;
    let cp = &mut s.checkpoint;
    let examples = instances
        .iter()
        .enumerate()
        .map(|(i, v)| instance(&cp.spec, v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let predictions: Vec<Value> = examples
        .iter()
        .map(|f| prediction_json(&cp.learner.predict(f)))
        .collect();
    Ok(axum::Json(
        json!({"model": name, "version": cp.version, "offsets": cp.offsets, "predictions": predictions}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessRequest {
    model: String,
    input_topic: String,
    output_topic: String,
    #[serde(default)]
    from: Option<String>,
}

async fn process(State(r): State<Registry>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: ProcessRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let (spec, mut learner, version) = {
        let models = r.models.lock();
        let s = models
            .get(&req.model)
            .ok_or_else(|| unknown_model(&req.model))?;
        (
            s.checkpoint.spec.clone(),
            s.checkpoint.learner.clone(),
            s.checkpoint.version,
        )
    };
    learner.rebuild();
    let start =
        parse_start(req.from.as_deref().unwrap_or("earliest")).map_err(|e| bad(e.to_string()))?;
    let admin = Admin::connect(&r.broker).await.map_err(client_error)?;
    let input = admin
        .describe_topic(&req.input_topic)
        .await
        .map_err(client_error)?;
    admin
        .describe_topic(&req.output_topic)
        .await
        .map_err(client_error)?;
    let producer = Producer::connect(&r.broker, ProducerConfig::default())
        .await
        .map_err(client_error)?;
    let json_spec = FeatureSpec {
        label: None,
        ..spec
    };
    let (mut processed, mut skipped) = (0u64, 0u64);
    let mut deliveries = Vec::new();
    for p in 0..input.partitions {
        let lso = admin
            .list_offsets(&req.input_topic, p, OffsetSpec::Earliest)
            .await
            .map_err(client_error)?;
        let begin = match start {
            Start::Earliest => lso.log_start_offset,
            Start::Latest => lso.high_watermark,
            Start::Offset(o) => o,
            Start::Timestamp(t) => {
                admin
                    .list_offsets(&req.input_topic, p, OffsetSpec::Timestamp(t))
                    .await
                    .map_err(client_error)?
                    .offset
            }
        };
        let end = lso.high_watermark;
        if begin >= end {
            continue;
        }
        let cfg = strata_client::ConsumerConfig {
            reset: strata_client::ResetPolicy::Earliest,
            ..Default::default()
        };
        let mut c =
            strata_client::Consumer::connect(&r.broker, &req.input_topic, Some(vec![p]), cfg)
                .await
                .map_err(client_error)?;
        c.seek(p, strata_client::Seek::Offset(begin))
            .await
            .map_err(client_error)?;
        let mut next = begin;
        while next < end {
            for rec in c.poll(Duration::from_secs(5)).await.map_err(client_error)? {
                if rec.offset >= end {
                    break;
                }
                next = rec.offset + 1;
                match extract(&json_spec, &rec.value) {
                    Ok(ex) => {
                        let pred = learner.predict(&ex.features);
                        let out = json!({"input_partition": p, "input_offset": rec.offset, "model": req.model, "version": version, "prediction": prediction_json(&pred)});
                        let record = Record {
                            key: rec.key.clone(),
                            value: out.to_string().into(),
                            headers: vec![],
                            timestamp_ms: rec.timestamp_ms,
                        };
                        deliveries.push(
                            producer
                                .send(&req.output_topic, record, None)
                                .await
                                .map_err(client_error)?,
                        );
                        processed += 1;
                    }
                    Err(_) => skipped += 1,
                }
            }
        }
    }
    producer.flush().await.map_err(client_error)?;
    for d in deliveries {
        d.await.map_err(client_error)?;
    }
    producer.close().await.map_err(client_error)?;
    Ok(axum::Json(
        json!({"model": req.model, "version": version, "processed": processed, "skipped": skipped}),
    ))
}
