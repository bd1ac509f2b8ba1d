//! The HTTP API (axum): JSON ingest and query of records, health, metrics
//! and the OpenAPI document (`docs/openapi.json`). Bodies are parsed by
//! hand so malformed JSON gets a 400 that says what is wrong; every error,
//! including unknown routes (404), wrong methods (405), unparsable path
//! parameters (400), bodies over the limit (413) and bodies that are too
//! slow (408), is the JSON `Error` of the OpenAPI document; broker errors
//! are mapped only through [`BrokerError::http_status`]. [`serve`] runs the
//! connections: bounded in number, with a deadline on request headers that
//! starts at accept (a client that sends nothing is closed too).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::json;
use strata_proto::batch::{BatchLimits, Compression, Header, Record, encode_batch};
use strata_proto::partitioner::partition_for_key;

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::topic::Acks;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

#[derive(Debug, Clone)]
struct AppState {
    broker: Arc<Broker>,
    round_robin: Arc<AtomicU32>,
}

/// The router over `broker`.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/records", post(ingest))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(query),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                invalid_request(
                    StatusCode::NOT_FOUND,
                    format!("no such resource: {method} {}", uri.path()),
                )
            },
        )
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                invalid_request(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed on {}", uri.path()),
                )
            },
        )
        .with_state(AppState {
            broker,
            round_robin: Arc::new(AtomicU32::new(0)),
        })
}

/// An error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
struct ApiError(StatusCode, String, String, Option<String>);

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        ApiError(
            e.http_status(),
            e.code().as_str_name().to_owned(),
            e.to_string(),
            None,
        )
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    invalid_request(StatusCode::BAD_REQUEST, msg)
}

/// An `INVALID_REQUEST` error with HTTP status `status`.
fn invalid_request(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, "INVALID_REQUEST".into(), msg.into(), None)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({"error": {"code": self.1, "message": self.2}}));
        match self.3 {
            Some(location) => (self.0, [(header::LOCATION, location)], body).into_response(),
            None => (self.0, body).into_response(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestBody {
    records: Vec<IngestRecord>,
    /// How `key`, `value` and header values are encoded: `utf8` (default) or `base64`.
    #[serde(default)]
    encoding: Encoding,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Utf8,
    Base64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestRecord {
    key: Option<String>,
    value: String,
    #[serde(default)]
    headers: UniqueHeaders,
    /// Headers in order, repeated keys allowed (after `headers`).
    #[serde(default)]
    header_list: Vec<HeaderItem>,
    partition: Option<u32>,
    timestamp_ms: Option<i64>,
}

/// One header of a `header_list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderItem {
    key: String,
    value: String,
}

/// A `headers` object whose keys must not repeat (JSON parsers keep one
/// value of a repeated key and drop the others silently; a repeated key is
/// refused instead, and `header_list` carries repeated keys).
#[derive(Debug, Default)]
struct UniqueHeaders(Vec<(String, String)>);

impl<'de> Deserialize<'de> for UniqueHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueHeaders;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of header names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!(
                            "header {k:?} appears twice in `headers`; use `header_list` for repeated keys"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(UniqueHeaders(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode(s: &str, enc: Encoding, what: &str, i: usize) -> Result<bytes::Bytes, ApiError> {
    match enc {
        Encoding::Utf8 => Ok(bytes::Bytes::copy_from_slice(s.as_bytes())),
        Encoding::Base64 => B64
            .decode(s)
            .map(bytes::Bytes::from)
            .map_err(|e| bad_request(format!("records[{i}].{what} is not valid base64: {e}"))),
    }
}

/// The path parameters, or a JSON 400 saying which one does not parse.
fn path_params<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| bad_request(format!("invalid path: {}", e.body_text())))
}

/// Reads a request body: 413 past `http_body_bytes_max`, 408 when it does
/// not arrive within `http_read_timeout_ms`.
async fn read_body(st: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let c = st.broker.config();
    let limit = c.http_body_bytes_max;
    let timeout = std::time::Duration::from_millis(c.http_read_timeout_ms);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BATCH_TOO_LARGE".into(),
                    format!("the request body exceeds http_body_bytes_max ({limit} bytes)"),
                    None,
                ))
            } else {
                Err(bad_request(format!("reading the request body: {e}")))
            }
        }
        Err(_) => Err(invalid_request(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms",
                c.http_read_timeout_ms
            ),
        )),
    }
}

async fn ingest(
    State(st): State<AppState>,
    topic: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let started = Instant::now();
    let r = async {
        let topic = path_params(topic)?;
        let body = read_body(&st, body).await?;
        ingest_inner(&st, &topic, &body).await
    }
    .await;
    let outcome = match &r {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.1.to_ascii_lowercase(),
    };
    st.broker
        .metrics()
        .request("http_ingest", &outcome, started.elapsed());
    r
}

async fn ingest_inner(
    st: &AppState,
    topic: &str,
    body: &[u8],
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let body: IngestBody =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))?;
    if body.records.is_empty() {
        return Err(bad_request("records is empty"));
    }
    let partitions = st.broker.partition_count(topic)?;
    // Validate and place every record before anything is written.
    let now = strata_proto::now_ms();
    let mut by_partition: BTreeMap<u32, Vec<(usize, Record)>> = BTreeMap::new();
    for (i, r) in body.records.iter().enumerate() {
        let key = r
            .key
            .as_deref()
            .map(|k| decode(k, body.encoding, "key", i))
            .transpose()?;
        let value = decode(&r.value, body.encoding, "value", i)?;
        let headers = r
            .headers
            .0
            .iter()
            .map(|(k, v)| (k, v, "headers"))
            .chain(
                r.header_list
                    .iter()
                    .map(|h| (&h.key, &h.value, "header_list")),
            )
            .map(|(k, v, what)| {
                Ok(Header {
                    key: k.clone(),
                    value: decode(v, body.encoding, what, i)?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let partition = match (r.partition, &key) {
            (Some(p), _) if p >= partitions => {
                return Err(BrokerError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition: p,
                    partitions,
                }
                .into());
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => st.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        };
        let record = Record {
            key,
            value,
            headers,
            timestamp_ms: r.timestamp_ms.unwrap_or(now),
        };
        by_partition.entry(partition).or_default().push((i, record));
    }
    // A record dated too far ahead refuses the whole request before any of
    // its batches is written.
    if let Some(t) = by_partition
        .values()
        .flatten()
        .map(|(_, r)| r.timestamp_ms)
        .max()
    {
        st.broker.check_timestamp(t)?;
    }
    // One batch per partition, or several in request order where the
    // records' timestamps lie further apart than a batch can hold.
    let mut encoded: Vec<(u32, bytes::Bytes, Run<'_>)> = Vec::new();
    for (p, recs) in &by_partition {
        // A partition led elsewhere is checked by its leader.
        let limits = match st.broker.partition(topic, *p) {
            Ok(part) => part.batch_limits(),
            Err(BrokerError::NotLeader { .. }) => BatchLimits::UNLIMITED,
            Err(e) => return Err(e.into()),
        };
        for run in timestamp_runs(recs) {
            let records: Vec<Record> = run.iter().map(|(_, r)| r.clone()).collect();
            let mut out = Vec::new();
            encode_batch(&records, Compression::None, None, &mut out)
                .map_err(|e| bad_request(e.to_string()))?;
            if out.len() > limits.batch_bytes_max {
                return Err(BrokerError::BatchTooLarge {
                    size: out.len(),
                    max: limits.batch_bytes_max,
                }
                .into());
            }
            encoded.push((*p, bytes::Bytes::from(out), run));
        }
    }
    let mut offsets = vec![json!(null); body.records.len()];
    for (p, batch, run) in encoded {
        // In a cluster, a partition led by another node is produced there
        // (over gRPC), so any node accepts HTTP ingest.
        let base_offset = match st.broker.produce(topic, p, batch.clone(), Acks::All).await {
            Ok(o) => o
                .base_offset
                .ok_or_else(|| BrokerError::InvalidRequest("acks=all produced no offset".into()))?,
            Err(BrokerError::NotLeader {
                leader: Some(leader),
            }) => forward_produce(&leader, topic, p, batch).await?,
            Err(e) => return Err(e.into()),
        };
        for (k, (i, _)) in run.iter().enumerate() {
            offsets[*i] = json!({"partition": p, "offset": base_offset + k as u64});
        }
    }
    Ok(axum::Json(json!({ "offsets": offsets })))
}

/// Records of one partition with their positions in the request.
type Run<'a> = &'a [(usize, Record)];

/// `records` cut into runs that one batch can hold: every timestamp of a
/// run within the batch format's ±2^31 ms of the run's first (a request
/// may carry any i64 timestamps; the batch stores i32 deltas).
fn timestamp_runs(records: Run<'_>) -> Vec<Run<'_>> {
    let fits = |first: i64, t: i64| {
        t.checked_sub(first)
            .is_some_and(|d| i32::try_from(d).is_ok())
    };
    let mut runs = Vec::new();
    let mut start = 0;
    for (k, (_, r)) in records.iter().enumerate() {
        if !fits(records[start].1.timestamp_ms, r.timestamp_ms) {
            runs.push(&records[start..k]);
            start = k;
        }
    }
    if start < records.len() {
        runs.push(&records[start..]);
    }
    runs
}

/// A 307 to the same query on the leader's HTTP address (clients that
/// follow redirects read on); 503 NOT_LEADER when that address is unknown.
fn redirect_to_leader(
    st: &AppState,
    leader_grpc: &str,
    topic: &str,
    partition: u32,
    q: &QueryParams,
) -> ApiError {
    let http = st.broker.cluster().and_then(|c| {
        c.meta_state()
            .nodes
            .values()
            .find(|n| n.grpc_addr == leader_grpc)
            .map(|n| n.http_addr.clone())
            .filter(|a| !a.is_empty())
    });
    let Some(http) = http else {
        return BrokerError::NotLeader {
            leader: Some(leader_grpc.to_owned()),
        }
        .into();
    };
    let mut query = vec![format!(
        "encoding={}",
        match q.encoding {
            Encoding::Utf8 => "utf8",
            Encoding::Base64 => "base64",
        }
    )];
    if let Some(o) = q.offset {
        query.push(format!("offset={o}"));
    }
    if let Some(m) = q.max {
        query.push(format!("max={m}"));
    }
    let location = format!(
        "http://{http}/v1/topics/{}/partitions/{partition}/records?{}",
        urlencode(topic),
        query.join("&")
    );
    ApiError(
        StatusCode::TEMPORARY_REDIRECT,
        "NOT_LEADER".into(),
        format!("this node does not serve {topic}/{partition}; its leader does: {location}"),
        Some(location.clone()),
    )
}

/// Topic names are `[A-Za-z0-9._-]`: nothing to escape, but keep the path
/// safe if that ever changes (everything but unreserved characters).
fn urlencode(s: &str) -> String {
    const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'.')
        .remove(b'_')
        .remove(b'-');
    percent_encoding::utf8_percent_encode(s, PATH).to_string()
}

/// Produces `batch` on the partition's leader at gRPC address `leader`;
/// returns the base offset. Errors keep the leader's code and message.
async fn forward_produce(
    leader: &str,
    topic: &str,
    partition: u32,
    batch: bytes::Bytes,
) -> Result<u64, ApiError> {
    let unavailable = |m: String| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_LEADER".into(),
            format!("forwarding to the leader at {leader}: {m}"),
            None,
        )
    };
    let mut client = super::peer_client(leader)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let r = client
        .produce(strata_proto::pb::ProduceRequest {
            topic: topic.to_owned(),
            partition,
            batch,
            acks: strata_proto::pb::Acks::All as i32,
        })
        .await
        .map_err(|s| match BrokerError::code_of(&s) {
            Some((code, http)) => ApiError(http, code.into(), s.message().to_owned(), None),
            None => unavailable(s.message().to_owned()),
        })?;
    r.into_inner()
        .base_offset
        .ok_or_else(|| unavailable(format!("the leader at {leader} answered without an offset")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParams {
    offset: Option<u64>,
    max: Option<u32>,
    #[serde(default)]
    encoding: Encoding,
}

async fn query(
    State(st): State<AppState>,
    path: Result<Path<(String, u32)>, PathRejection>,
    params: Result<Query<QueryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let started = Instant::now();
    let r = async {
        let (topic, partition) = path_params(path)?;
        let Query(q) =
            params.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
        query_inner(&st, &topic, partition, q).await
    }
    .await;
    let outcome = match &r {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.1.to_ascii_lowercase(),
    };
    st.broker
        .metrics()
        .request("http_query", &outcome, started.elapsed());
    r
}

async fn query_inner(
    st: &AppState,
    topic: &str,
    partition: u32,
    q: QueryParams,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    // Only the leader serves reads (a follower may not have applied the
    // high watermark yet): elsewhere, redirect there.
    let p = match st
        .broker
        .partition(topic, partition)
        .and_then(|p| p.check_leader().map(|()| p))
    {
        Ok(p) => p,
        Err(BrokerError::NotLeader {
            leader: Some(leader),
        }) => return Err(redirect_to_leader(st, &leader, topic, partition, &q)),
        Err(e) => return Err(e.into()),
    };
    let max = q
        .max
        .unwrap_or(100)
        .min(st.broker.config().http_records_max) as usize;
    if max == 0 {
        return Err(bad_request("max must be positive"));
    }
    let start = q.offset.unwrap_or_else(|| p.log_start_offset());
    let fetch_bytes = st.broker.config().fetch_bytes_default as usize;
    let p2 = p.clone();
    let batches = tokio::task::spawn_blocking(move || p2.read(start, fetch_bytes))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "STORAGE_ERROR".into(),
                e.to_string(),
                None,
            )
        })??;
    let enc = |b: &[u8], e: Encoding| -> serde_json::Value {
        match (e, std::str::from_utf8(b)) {
            (Encoding::Utf8, Ok(s)) => json!(s),
            _ => json!(B64.encode(b)),
        }
    };
    let mut records = Vec::new();
    let mut next = start;
    'outer: for b in batches {
        // Stored data that does not decode is the broker's fault, not the
        // reader's: a server error naming where.
        let decoded = strata_proto::decode_records(b.bytes.clone(), &BatchLimits::UNLIMITED)
            .map_err(|e| {
                BrokerError::Storage(crate::log::LogError::Invalid(format!(
                    "the stored batch at offset {} does not decode: {e}",
                    b.base_offset
                )))
            })?;
        for (i, r) in decoded.iter().enumerate() {
            let offset = b.base_offset + i as u64;
            if offset < start {
                continue;
            }
            if records.len() == max {
                break 'outer;
            }
            // One encoding per record: base64 when asked, or when any of its
            // fields is not UTF-8.
            let is_text = |b: &[u8]| std::str::from_utf8(b).is_ok();
            let text = is_text(&r.value)
                && r.key.as_ref().is_none_or(|k| is_text(k))
                && r.headers.iter().all(|h| is_text(&h.value));
            let e = if q.encoding == Encoding::Utf8 && text {
                Encoding::Utf8
            } else {
                Encoding::Base64
            };
            records.push(json!({
                "offset": offset,
                "timestamp_ms": r.timestamp_ms,
                "key": r.key.as_ref().map(|k| enc(k, e)),
                "value": enc(&r.value, e),
                // A map for convenience (a repeated key keeps its last
                // value) and the list, in order, with every header.
                "headers": r.headers.iter().map(|h| (h.key.clone(), enc(&h.value, e))).collect::<BTreeMap<_, _>>(),
                "header_list": r.headers.iter().map(|h| json!({"key": h.key, "value": enc(&h.value, e)})).collect::<Vec<_>>(),
                "encoding": e,
            }));
            next = offset + 1;
        }
    }
    Ok(axum::Json(json!({
        "records": records,
        "next_offset": next,
        "high_watermark": p.high_watermark(),
        "log_start_offset": p.log_start_offset(),
    })))
}

async fn health(State(st): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({
        "status": "ok",
        "node_id": st.broker.config().node_id,
        "topics": st.broker.topics().len(),
    }))
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.broker.metrics().render(st.broker.as_ref()),
    )
}

/// Serves `router` on `listener` until `stop` resolves: at most
/// `connections_max` connections open at once (the next client waits to be
/// accepted), a connection that has not sent its first request's headers
/// within `read_timeout` of being accepted is closed (whatever it sent
/// before: nothing, part of the HTTP/2 preface, part of the headers), later
/// requests' headers have the same deadline (hyper's, from the moment the
/// connection is ready for them), and on `stop` open connections are
/// closed once their requests are answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    read_timeout: std::time::Duration,
    connections_max: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(connections_max));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let first_request = Arc::new(tokio::sync::Notify::new());
        let svc = FirstRequest {
            inner: hyper_util::service::TowerToHyperService::new(router.clone()),
            seen: first_request.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::pin!(conn);
            // hyper's header timeout starts only once the connection knows
            // its protocol, i.e. after its first bytes: a client that sends
            // none (or a prefix of the HTTP/2 preface) would hold its slot
            // forever without this deadline.
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = first_request.notified() => None,
                () = tokio::time::sleep(read_timeout) => {
                    tracing::debug!(%peer, "closing an HTTP connection that sent no request headers within http_read_timeout_ms");
                    drop(slot);
                    return;
                }
            };
            let r = match ended {
                Some(r) => r,
                None => conn.await,
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
}

/// A connection's service that signals `seen` when hyper hands it a
/// request, i.e. once a request's headers are in.
#[derive(Debug, Clone)]
struct FirstRequest<S> {
    inner: S,
    seen: Arc<tokio::sync::Notify>,
}

impl<S: hyper::service::Service<R>, R> hyper::service::Service<R> for FirstRequest<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        // Stores a permit if the connection task is not waiting yet.
        self.seen.notify_one();
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_too_far_apart_in_time_for_one_batch_are_split_in_order() {
        let rec = |i: usize, t: i64| {
            (
                i,
                Record {
                    key: None,
                    value: bytes::Bytes::new(),
                    headers: vec![],
                    timestamp_ms: t,
                },
            )
        };
        let d = i64::from(i32::MAX);
        let recs = [
            rec(0, 0),
            rec(1, d),
            rec(2, d + 1),
            rec(3, i64::MIN),
            rec(4, i64::MAX),
            rec(5, i64::MAX - d),
        ];
        let runs: Vec<Vec<(usize, i64)>> = timestamp_runs(&recs)
            .iter()
            .map(|run| run.iter().map(|(i, r)| (*i, r.timestamp_ms)).collect())
            .collect();
        assert_eq!(
            runs,
            [
                vec![(0, 0), (1, d)],
                vec![(2, d + 1)],
                vec![(3, i64::MIN)],
                vec![(4, i64::MAX), (5, i64::MAX - d)],
            ]
        );
        for run in timestamp_runs(&recs) {
            let records: Vec<Record> = run.iter().map(|(_, r)| r.clone()).collect();
            encode_batch(&records, Compression::None, None, &mut Vec::new()).unwrap();
        }
        assert!(timestamp_runs(&[]).is_empty());
    }

    #[test]
    fn redirect_paths_escape_everything_but_unreserved_characters() {
        assert_eq!(urlencode("orders.v1_eu-west"), "orders.v1_eu-west");
        assert_eq!(urlencode("a b/ü?"), "a%20b%2F%C3%BC%3F");
    }
}
