//! The APIs the front-end serves, at which versions, and the dispatch to
//! their handlers; ApiVersions, Metadata and topic administration live
//! here, produce, fetch and groups in their own modules.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::errors::{self, code};
use super::wire::{Reader, WireError, Writer};
use super::{Kafka, RequestHeader};
use crate::settings::TopicSettings;

/// A handler's deferred part: the response body, `None` for no response.
pub type Work = Pin<Box<dyn Future<Output = Result<Option<Writer>, WireError>> + Send>>;

/// A supported API: key, version range, first flexible version.
struct Api {
    key: i16,
    name: &'static str,
    min: i16,
    max: i16,
    flexible_from: i16,
}

/// Every API served, in ApiVersions order.
#[rustfmt::skip]
const APIS: &[Api] = &[
    Api { key: 0, name: "kafka_produce", min: 0, max: 9, flexible_from: 9 },
    Api { key: 1, name: "kafka_fetch", min: 4, max: 12, flexible_from: 12 },
    Api { key: 2, name: "kafka_list_offsets", min: 1, max: 6, flexible_from: 6 },
    Api { key: 3, name: "kafka_metadata", min: 0, max: 12, flexible_from: 9 },
    Api { key: 8, name: "kafka_offset_commit", min: 2, max: 9, flexible_from: 8 },
    Api { key: 9, name: "kafka_offset_fetch", min: 1, max: 9, flexible_from: 6 },
    Api { key: 10, name: "kafka_find_coordinator", min: 0, max: 4, flexible_from: 3 },
    Api { key: 11, name: "kafka_join_group", min: 0, max: 9, flexible_from: 6 },
    Api { key: 12, name: "kafka_heartbeat", min: 0, max: 4, flexible_from: 4 },
    Api { key: 13, name: "kafka_leave_group", min: 0, max: 5, flexible_from: 4 },
    Api { key: 14, name: "kafka_sync_group", min: 0, max: 5, flexible_from: 4 },
    Api { key: 15, name: "kafka_describe_groups", min: 0, max: 5, flexible_from: 5 },
    Api { key: 16, name: "kafka_list_groups", min: 0, max: 4, flexible_from: 3 },
    Api { key: 18, name: "kafka_api_versions", min: 0, max: 3, flexible_from: 3 },
    Api { key: 19, name: "kafka_create_topics", min: 0, max: 7, flexible_from: 5 },
    Api { key: 20, name: "kafka_delete_topics", min: 0, max: 5, flexible_from: 4 },
    Api { key: 22, name: "kafka_init_producer_id", min: 0, max: 4, flexible_from: 2 },
    Api { key: 23, name: "kafka_offset_for_leader_epoch", min: 2, max: 4, flexible_from: 4 },
    Api { key: 32, name: "kafka_describe_configs", min: 0, max: 4, flexible_from: 4 },
    Api { key: 68, name: "kafka_consumer_group_heartbeat", min: 0, max: 1, flexible_from: 0 },
];

/// How one request at one version is framed.
pub struct Spec {
    /// The body (and request header v2) use the flexible encodings.
    pub flexible_request: bool,
    /// The response header is v1 (tagged fields); ApiVersions never is.
    pub flexible_response_header: bool,
}

/// The metrics name of an API key.
pub fn name(key: i16) -> &'static str {
    APIS.iter()
        .find(|a| a.key == key)
        .map_or("kafka_unsupported", |a| a.name)
}

/// How `key` at `version` is framed, if served.
pub fn supported(key: i16, version: i16) -> Option<Spec> {
    let a = APIS.iter().find(|a| a.key == key)?;
    // ApiVersions answers any version (with UNSUPPORTED_VERSION past 3).
    if key != 18 && (version < a.min || version > a.max) {
        return None;
    }
    let flexible = version >= a.flexible_from && version <= a.max;
    Some(Spec {
        flexible_request: flexible,
        flexible_response_header: flexible && key != 18,
    })
}

/// The answer to an API or version not served: the header and
/// UNSUPPORTED_VERSION as the body's first field (what a client that sent
/// it without asking ApiVersions first can read).
pub fn unsupported(h: &RequestHeader) -> BytesMut {
    tracing::debug!(
        api_key = h.api_key,
        version = h.api_version,
        "kafka API or version not served"
    );
    let mut out = BytesMut::with_capacity(6);
    out.put_i32(h.correlation_id);
    out.put_i16(code::UNSUPPORTED_VERSION);
    out
}

/// Runs the ordered part of a request and returns the rest.
pub async fn dispatch(k: Arc<Kafka>, h: RequestHeader, mut r: Reader) -> Work {
    let v = h.api_version;
    let flexible = r.flexible;
    let done = |w: Result<Writer, WireError>| -> Work { Box::pin(std::future::ready(w.map(Some))) };
    match h.api_key {
        0 => super::produce::produce(k, v, r).await,
        1 => super::fetch::fetch(k, v, r),
        2 => super::fetch::list_offsets(k, v, r),
        3 => Box::pin(async move { metadata(&k, v, &mut r).await.map(Some) }),
        8 => super::groups::offset_commit(k, v, r),
        9 => super::groups::offset_fetch(k, v, r),
        10 => done(super::groups::find_coordinator(&k, v, &mut r)),
        11 => super::membership::join_group(k, h, r),
        12 => super::membership::heartbeat_classic(k, h, r),
        13 => super::membership::leave_group(k, h, r),
        14 => super::membership::sync_group(k, h, r),
        68 => super::membership::consumer_group_heartbeat(k, h, r),
        15 => super::groups::describe_groups(k, v, r),
        16 => super::groups::list_groups(k, v, r),
        18 => done(api_versions(v, flexible, &mut r)),
        19 => Box::pin(async move { create_topics(&k, v, &mut r).await.map(Some) }),
        20 => Box::pin(async move { delete_topics(&k, v, &mut r).await.map(Some) }),
        22 => Box::pin(async move {
            super::produce::init_producer_id(&k, v, &mut r)
                .await
                .map(Some)
        }),
        23 => super::fetch::offset_for_leader_epoch(k, v, r),
        32 => done(describe_configs(&k, v, &mut r)),
        _ => done(Err(WireError::Malformed(format!("API key {}", h.api_key)))),
    }
}

/// ApiVersions (v0–v3). A version past 3 gets UNSUPPORTED_VERSION and the
/// list in the v0 layout, so the client can retry at a version it shares.
fn api_versions(v: i16, flexible: bool, r: &mut Reader) -> Result<Writer, WireError> {
    if v > 3 {
        let mut w = Writer::new(false);
        w.i16(code::UNSUPPORTED_VERSION);
        w.array(APIS, |w, a| {
            w.i16(a.key);
            w.i16(a.min);
            w.i16(a.max);
        });
        return Ok(w);
    }
    if v >= 3 {
        let _software = r.string()?;
        let _software_version = r.string()?;
        r.tags()?;
    }
    let mut w = Writer::new(flexible);
    w.i16(code::NONE);
    w.array(APIS, |w, a| {
        w.i16(a.key);
        w.i16(a.min);
        w.i16(a.max);
        w.tags();
    });
    if v >= 1 {
        w.i32(0);
    }
    w.tags();
    Ok(w)
}

/// A stable topic id for Metadata v10+: derived from the name (Strata has
/// no topic ids; a deleted and re-created topic gets the same one).
pub fn topic_id(name: &str) -> [u8; 16] {
    use std::hash::Hasher;
    let mut id = [0u8; 16];
    for (i, seed) in [0x5374_7261_7461u64, 0x004b_6166_6b61]
        .into_iter()
        .enumerate()
    {
        let mut h = twox_hash::XxHash64::with_seed(seed);
        h.write(name.as_bytes());
        id[i * 8..i * 8 + 8].copy_from_slice(&h.finish().to_be_bytes());
    }
    id
}

/// A topic a Metadata request names: by id (v10+), by name, or both.
type AskedTopic = (Option<[u8; 16]>, Option<String>);

/// Metadata (v0–v12): this cluster's brokers, and its topics with each
/// partition's leader (the Raft leader), leader epoch (the Raft term)
/// and replicas. Topics are never created by a metadata request.
async fn metadata(k: &Kafka, v: i16, r: &mut Reader) -> Result<Writer, WireError> {
    let topics: Option<Vec<AskedTopic>> = r.nullable_array(|r| {
        let id = if v >= 10 { Some(r.uuid()?) } else { None };
        let name = if v >= 10 {
            r.nullable_string()?
        } else {
            Some(r.string()?)
        };
        r.tags()?;
        Ok((id.filter(|u| *u != [0; 16]), name))
    })?;
    // Topics asked for by id only (KIP-848 clients resolve assignments so):
    // named by the topic whose derived id it is.
    let by_id = |id: [u8; 16]| -> Option<String> {
        k.broker
            .topic_views(&[])
            .ok()?
            .into_iter()
            .map(|t| t.name)
            .find(|n| topic_id(n) == id)
    };
    // v0: an empty array means every topic; v1+: null does.
    let asked: Vec<String> = match topics {
        None => Vec::new(),
        Some(t) if t.is_empty() && v == 0 => Vec::new(),
        Some(t) => {
            let names: Vec<String> = t
                .into_iter()
                .filter_map(|(id, name)| name.or_else(|| id.and_then(by_id)))
                .collect();
            if names.is_empty() {
                vec![String::new()] // asked for none: answer none
            } else {
                names
            }
        }
    };
    if v >= 4 {
        let _auto_create = r.bool()?;
    }
    if (8..=10).contains(&v) {
        let _cluster_ops = r.bool()?;
    }
    if v >= 8 {
        let _topic_ops = r.bool()?;
    }
    r.tags()?;

    let b = &k.broker;
    // Brokers: every node with a known Kafka address.
    let mut nodes: Vec<u64> = match b.cluster() {
        Some(c) => c.with_meta(|m| m.nodes.keys().copied().collect()),
        None => vec![b.config().node_id],
    };
    if nodes.is_empty() {
        nodes.push(b.config().node_id);
    }
    let mut brokers = Vec::new();
    for id in &nodes {
        if let Some((host, port)) = k.addr_of(*id).await {
            brokers.push((*id as i32, host, port));
        }
    }
    // Every node takes admin requests (and forwards them to the metadata
    // leader), so each names itself the controller.
    let controller = k.node_id();

    // Topics: the asked ones (unknown ones answered with an error), or all
    // user topics.
    let views = if asked.is_empty() {
        b.topic_views(&[]).unwrap_or_default()
    } else {
        let mut out = Vec::new();
        for name in &asked {
            if name.is_empty() {
                continue;
            }
            match b.topic_views(std::slice::from_ref(name)) {
                Ok(mut t) => out.append(&mut t),
                Err(_) => out.push(crate::broker::TopicView {
                    name: name.clone(),
                    settings: TopicSettings::default(),
                    partitions: Vec::new(),
                }),
            }
        }
        out
    };
    let single = b.cluster().is_none();

    let mut w = Writer::new(r.flexible);
    if v >= 3 {
        w.i32(0);
    }
    w.array(&brokers, |w, (id, host, port)| {
        w.i32(*id);
        w.string(host);
        w.i32(*port);
        if v >= 1 {
            w.nullable_string(None);
        }
        w.tags();
    });
    if v >= 2 {
        w.nullable_string(Some("strata"));
    }
    if v >= 1 {
        w.i32(controller);
    }
    let views: Vec<_> = views
        .into_iter()
        .filter(|t| asked.iter().any(|a| a == &t.name) || !crate::broker::is_internal(&t.name))
        .collect();
    w.array(&views, |w, t| {
        let exists = !t.partitions.is_empty();
        w.i16(if exists {
            code::NONE
        } else {
            code::UNKNOWN_TOPIC_OR_PARTITION
        });
        if v >= 12 {
            w.nullable_string(Some(&t.name));
        } else {
            w.string(&t.name);
        }
        if v >= 10 {
            w.uuid(if exists { topic_id(&t.name) } else { [0; 16] });
        }
        if v >= 1 {
            w.bool(crate::broker::is_internal(&t.name));
        }
        w.array_len(t.partitions.len());
        for (i, p) in t.partitions.iter().enumerate() {
            let leader = if single {
                b.config().node_id as i32
            } else if p.leader == 0 {
                -1
            } else {
                p.leader as i32
            };
            let epoch = if single {
                0
            } else {
                b.partition(&t.name, i as u32)
                    .ok()
                    .and_then(|x| x.leader_term().ok())
                    .map_or(-1, |t| t as i32)
            };
            w.i16(if leader < 0 {
                code::LEADER_NOT_AVAILABLE
            } else {
                code::NONE
            });
            w.i32(i as i32);
            w.i32(leader);
            if v >= 7 {
                w.i32(epoch);
            }
            let replicas: Vec<i32> = if single {
                vec![b.config().node_id as i32]
            } else {
                p.replicas.iter().map(|r| *r as i32).collect()
            };
            w.array(&replicas, |w, r| w.i32(*r));
            w.array(&replicas, |w, r| w.i32(*r));
            if v >= 5 {
                w.array_len(0);
            }
            w.tags();
        }
        if v >= 8 {
            w.i32(i32::MIN);
        }
        w.tags();
    });
    if (8..=10).contains(&v) {
        w.i32(i32::MIN);
    }
    w.tags();
    Ok(w)
}

/// Maps Kafka topic configs onto Strata's settings; unknown names are
/// refused with the name.
fn settings_of(configs: &[(String, Option<String>)]) -> Result<TopicSettings, String> {
    let mut s = TopicSettings::default();
    for (name, value) in configs {
        let Some(value) = value else { continue };
        let int = || {
            value
                .parse::<i64>()
                .map_err(|_| format!("{name}={value:?} is not an integer"))
        };
        match name.as_str() {
            "retention.ms" => s.retention_ms = Some(int()?),
            "retention.bytes" => s.retention_bytes = Some(int()?),
            "segment.bytes" => s.segment_bytes = Some(int()?.max(0) as u64),
            "segment.ms" => s.segment_ms = Some(int()?),
            "max.message.bytes" => {
                s.max_batch_bytes = Some(int()?.clamp(0, u32::MAX as i64) as u32)
            }
            "cleanup.policy" if value == "delete" => {}
            other => {
                return Err(format!(
                    "config {other}={value:?} is not supported (supported: retention.ms, \
                     retention.bytes, segment.bytes, segment.ms, max.message.bytes, \
                     cleanup.policy=delete)"
                ));
            }
        }
    }
    Ok(s)
}

struct NewTopic {
    name: String,
    partitions: i32,
    replication: i16,
    assigned: bool,
    configs: Vec<(String, Option<String>)>,
}

/// CreateTopics (v0–v7). −1 partitions or replication factor take the
/// defaults (1 partition; min(3, nodes) replicas in a cluster); explicit
/// replica assignments are refused (Strata places replicas itself).
async fn create_topics(k: &Kafka, v: i16, r: &mut Reader) -> Result<Writer, WireError> {
    let topics = r.array(|r| {
        let name = r.string()?;
        let partitions = r.i32()?;
        let replication = r.i16()?;
        let assignments = r.array(|r| {
            let _p = r.i32()?;
            let _ids = r.array(|r| r.i32())?;
            r.tags()?;
            Ok(())
        })?;
        let configs = r.array(|r| {
            let n = r.string()?;
            let val = r.nullable_string()?;
            r.tags()?;
            Ok((n, val))
        })?;
        r.tags()?;
        Ok(NewTopic {
            name,
            partitions,
            replication,
            assigned: !assignments.is_empty(),
            configs,
        })
    })?;
    let _timeout = r.i32()?;
    let validate_only = if v >= 1 { r.bool()? } else { false };
    r.tags()?;

    let nodes = k
        .broker
        .cluster()
        .map_or(1, |c| c.with_meta(|m| m.nodes.len().max(1))) as i16;
    let mut results = Vec::new();
    for t in &topics {
        let partitions = if t.partitions == -1 { 1 } else { t.partitions };
        let replication = if t.replication == -1 {
            nodes.min(3)
        } else {
            t.replication
        };
        let outcome: Result<(), (i16, String)> = async {
            if t.assigned {
                return Err((
                    code::INVALID_REPLICA_ASSIGNMENT,
                    "explicit replica assignments are not supported: Strata places replicas".into(),
                ));
            }
            if partitions <= 0 {
                return Err((
                    code::INVALID_PARTITIONS,
                    format!("{partitions} partitions: at least 1"),
                ));
            }
            if replication <= 0 || replication > nodes {
                return Err((
                    code::INVALID_REPLICATION_FACTOR,
                    format!("replication factor {replication} with {nodes} node(s)"),
                ));
            }
            let settings = settings_of(&t.configs).map_err(|m| (code::INVALID_CONFIG, m))?;
            if crate::broker::is_internal(&t.name) {
                return Err((
                    code::INVALID_TOPIC_EXCEPTION,
                    format!("{:?}: names starting with \"__\" are internal", t.name),
                ));
            }
            if validate_only {
                crate::settings::validate_topic_name(&t.name)
                    .map_err(|e| (code::INVALID_TOPIC_EXCEPTION, e.to_string()))?;
                if k.broker.topic(&t.name).is_ok() {
                    return Err((
                        code::TOPIC_ALREADY_EXISTS,
                        format!("topic {:?} already exists", t.name),
                    ));
                }
                return Ok(());
            }
            k.broker
                .create_topic(&t.name, partitions as u32, replication as u32, settings)
                .await
                .map(|_| ())
                .map_err(|e| (errors::of(&e), e.to_string()))
        }
        .await;
        results.push((t, partitions, replication, outcome));
    }

    let mut w = Writer::new(r.flexible);
    if v >= 2 {
        w.i32(0);
    }
    w.array(&results, |w, (t, partitions, replication, outcome)| {
        w.string(&t.name);
        if v >= 7 {
            w.uuid(if outcome.is_ok() {
                topic_id(&t.name)
            } else {
                [0; 16]
            });
        }
        match outcome {
            Ok(()) => w.i16(code::NONE),
            Err((c, _)) => w.i16(*c),
        }
        if v >= 1 {
            w.nullable_string(outcome.as_ref().err().map(|(_, m)| m.as_str()));
        }
        if v >= 5 {
            w.i32(if outcome.is_ok() { *partitions } else { -1 });
            w.i16(if outcome.is_ok() { *replication } else { -1 });
            w.null_array();
        }
        w.tags();
    });
    w.tags();
    Ok(w)
}

/// DeleteTopics (v0–v5).
async fn delete_topics(k: &Kafka, v: i16, r: &mut Reader) -> Result<Writer, WireError> {
    let names = r.array(|r| r.string())?;
    let _timeout = r.i32()?;
    r.tags()?;
    let mut results = Vec::new();
    for n in &names {
        let outcome = k
            .broker
            .delete_topic(n)
            .await
            .map_err(|e| (errors::of(&e), e.to_string()));
        results.push((n, outcome));
    }
    let mut w = Writer::new(r.flexible);
    if v >= 1 {
        w.i32(0);
    }
    w.array(&results, |w, (n, outcome)| {
        w.string(n);
        w.i16(outcome.as_ref().err().map_or(code::NONE, |(c, _)| *c));
        if v >= 5 {
            w.nullable_string(outcome.as_ref().err().map(|(_, m)| m.as_str()));
        }
        w.tags();
    });
    w.tags();
    Ok(w)
}

/// Kafka's resource type for topics in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's resource type for brokers.
const RESOURCE_BROKER: i8 = 4;
/// Config sources: a topic override, or the broker's default.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// One config entry as DescribeConfigs shows it.
struct ConfigEntry {
    name: &'static str,
    value: String,
    overridden: bool,
}

/// A topic's configs in Kafka's names: effective values, and whether the
/// topic sets them or the broker's defaults do.
fn topic_configs(s: &TopicSettings, d: &crate::settings::LogDefaults) -> Vec<ConfigEntry> {
    let e = |name, value: String, overridden| ConfigEntry {
        name,
        value,
        overridden,
    };
    vec![
        e("cleanup.policy", "delete".into(), false),
        e(
            "max.message.bytes",
            s.max_batch_bytes.unwrap_or(d.max_batch_bytes).to_string(),
            s.max_batch_bytes.is_some(),
        ),
        e(
            "retention.bytes",
            s.retention_bytes.unwrap_or(d.retention_bytes).to_string(),
            s.retention_bytes.is_some(),
        ),
        e(
            "retention.ms",
            s.retention_ms.unwrap_or(d.retention_ms).to_string(),
            s.retention_ms.is_some(),
        ),
        e(
            "segment.bytes",
            s.segment_bytes.unwrap_or(d.segment_bytes).to_string(),
            s.segment_bytes.is_some(),
        ),
        e(
            "segment.ms",
            s.segment_ms.unwrap_or(d.segment_ms).to_string(),
            s.segment_ms.is_some(),
        ),
    ]
}

/// DescribeConfigs (v0–v4): topic configs (the ones CreateTopics takes);
/// a broker resource answers an empty list. Read-only here: Strata's own
/// `topic alter` changes them.
fn describe_configs(k: &Kafka, v: i16, r: &mut Reader) -> Result<Writer, WireError> {
    let resources = r.array(|r| {
        let rtype = r.i8()?;
        let name = r.string()?;
        let keys = r.nullable_array(|r| r.string())?;
        r.tags()?;
        Ok((rtype, name, keys))
    })?;
    if v >= 1 {
        let _synonyms = r.bool()?;
    }
    if v >= 3 {
        let _docs = r.bool()?;
    }
    r.tags()?;
    let defaults = &k.broker.config().log;
    let mut w = Writer::new(r.flexible);
    w.i32(0);
    w.array(&resources, |w, (rtype, name, keys)| {
        let (error, message, entries) = match *rtype {
            RESOURCE_TOPIC => match k.broker.topic_views(std::slice::from_ref(name)) {
                Ok(t) if !t.is_empty() => {
                    (code::NONE, None, topic_configs(&t[0].settings, defaults))
                }
                _ => (
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(format!("unknown topic {name:?}")),
                    Vec::new(),
                ),
            },
            RESOURCE_BROKER => (code::NONE, None, Vec::new()),
            t => (
                code::INVALID_REQUEST,
                Some(format!(
                    "resource type {t}: only topics (2) and brokers (4)"
                )),
                Vec::new(),
            ),
        };
        let entries: Vec<&ConfigEntry> = entries
            .iter()
            // Null or empty: every key (as Kafka answers).
            .filter(|e| {
                keys.as_ref()
                    .is_none_or(|ks| ks.is_empty() || ks.iter().any(|k| k == e.name))
            })
            .collect();
        w.i16(error);
        w.nullable_string(message.as_deref());
        w.i8(*rtype);
        w.string(name);
        w.array(&entries, |w, e| {
            w.string(e.name);
            w.nullable_string(Some(&e.value));
            w.bool(true); // read-only over Kafka
            if v == 0 {
                w.bool(!e.overridden);
            } else {
                w.i8(if e.overridden {
                    SOURCE_TOPIC
                } else {
                    SOURCE_DEFAULT
                });
            }
            w.bool(false);
            if v >= 1 {
                w.array_len(0);
            }
            if v >= 3 {
                w.i8(if e.name == "cleanup.policy" { 7 } else { 5 }); // LIST or LONG
                w.nullable_string(None);
            }
            w.tags();
        });
        w.tags();
    });
    w.tags();
    Ok(w)
}
