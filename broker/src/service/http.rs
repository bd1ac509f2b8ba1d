//! The HTTP API (axum): JSON ingest and query of records, health, metrics
//! and the OpenAPI document (`docs/openapi.json`). Bodies are parsed by
//! hand so malformed JSON gets a 400 that says what is wrong; errors are
//! mapped only through [`BrokerError::http_status`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
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
    let limit = broker.config().http_body_bytes_max;
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
        .layer(DefaultBodyLimit::max(limit))
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
    ApiError(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST".into(),
        msg.into(),
        None,
    )
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
    headers: BTreeMap<String, String>,
    partition: Option<u32>,
    timestamp_ms: Option<i64>,
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

async fn ingest(
    State(st): State<AppState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let started = Instant::now();
    let r = ingest_inner(&st, &topic, &body).await;
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
            .iter()
            .map(|(k, v)| {
                Ok(Header {
                    key: k.clone(),
                    value: decode(v, body.encoding, "headers", i)?,
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
    let mut encoded = Vec::new();
    for (p, recs) in &by_partition {
        let records: Vec<Record> = recs.iter().map(|(_, r)| r.clone()).collect();
        let mut out = Vec::new();
        encode_batch(&records, Compression::None, None, &mut out)
            .map_err(|e| bad_request(e.to_string()))?;
        // A partition led elsewhere is checked by its leader.
        let limits = match st.broker.partition(topic, *p) {
            Ok(part) => part.batch_limits(),
            Err(BrokerError::NotLeader { .. }) => BatchLimits::UNLIMITED,
            Err(e) => return Err(e.into()),
        };
        if out.len() > limits.batch_bytes_max {
            return Err(BrokerError::BatchTooLarge {
                size: out.len(),
                max: limits.batch_bytes_max,
            }
            .into());
        }
        encoded.push((*p, bytes::Bytes::from(out)));
    }
    let mut offsets = vec![json!(null); body.records.len()];
    for (p, batch) in encoded {
        // In a cluster, a partition led by another node is produced there
        // (over gRPC), so any node accepts HTTP ingest.
        let base_offset = match st.broker.produce(topic, p, batch.clone(), Acks::All).await {
            Ok(o) => o.base_offset,
            Err(BrokerError::NotLeader {
                leader: Some(leader),
            }) => forward_produce(&leader, topic, p, batch).await?,
            Err(e) => return Err(e.into()),
        };
        for (k, (i, _)) in by_partition[&p].iter().enumerate() {
            offsets[*i] = json!({"partition": p, "offset": base_offset + k as u64});
        }
    }
    Ok(axum::Json(json!({ "offsets": offsets })))
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
    Ok(r.into_inner().base_offset)
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
    Path((topic, partition)): Path<(String, u32)>,
    params: Result<Query<QueryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let started = Instant::now();
    let Query(q) = params.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    let r = query_inner(&st, &topic, partition, q).await;
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
                "headers": r.headers.iter().map(|h| (h.key.clone(), enc(&h.value, e))).collect::<BTreeMap<_, _>>(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_paths_escape_everything_but_unreserved_characters() {
        assert_eq!(urlencode("orders.v1_eu-west"), "orders.v1_eu-west");
        assert_eq!(urlencode("a b/ü?"), "a%20b%2F%C3%BC%3F");
    }
}
