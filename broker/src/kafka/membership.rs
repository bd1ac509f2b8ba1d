//! Group membership over Kafka: the KIP-848 ConsumerGroupHeartbeat (v0–v1),
//! which maps one to one onto the coordinator's GroupHeartbeat, and the
//! classic protocol (JoinGroup v0–v9, SyncGroup v0–v5, Heartbeat v0–v4,
//! LeaveGroup v0–v5) mapped onto the same coordinator.
//!
//! Classic members are members of the same KIP-848 groups: the
//! coordinator computes every assignment (a classic client never acts as
//! the group leader: JoinGroup names no leader, so each member sends an
//! empty SyncGroup and gets its own assignment back). A member's
//! generation is its member epoch at its last JoinGroup. Its Heartbeat
//! reports what it was given as owned; when the coordinator's answer
//! differs (partitions to revoke, or new ones granted), the Heartbeat
//! answers REBALANCE_IN_PROGRESS and the client rejoins, revoking (all of
//! them for the eager assignors, the revoked ones for cooperative-sticky)
//! and committing first, which the coordinator accepts while the member
//! still owns the partitions. Native, KIP-848 and classic members can
//! share one group.
//!
//! The per-member state of the classic mapping lives on the node the
//! client talks to (FindCoordinator names it); a node that restarts
//! forgets it and the client rejoins on UNKNOWN_MEMBER_ID.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use strata_proto::pb;
use strata_proto::pb::strata_server::Strata;
use tonic::Request;

use super::api::{Work, topic_id};
use super::errors::{self, code};
use super::wire::{Reader, WireError, Writer};
use super::{Kafka, RequestHeader};

/// Kafka's ILLEGAL_GENERATION.
const ILLEGAL_GENERATION: i16 = 22;
/// Kafka's INCONSISTENT_GROUP_PROTOCOL.
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// Kafka's REBALANCE_IN_PROGRESS.
const REBALANCE_IN_PROGRESS: i16 = 27;

/// A classic member as this node knows it.
#[derive(Debug, Clone)]
pub struct ClassicMember {
    /// The generation the client was given at its last JoinGroup.
    generation: i32,
    /// The coordinator's latest member epoch.
    epoch: i32,
    /// What the client was given (and so owns).
    assignment: Vec<pb::TopicPartitions>,
    protocol: String,
    session_timeout_ms: u32,
    last_seen: Instant,
}

/// Classic members by (group, member id).
pub type ClassicMembers = HashMap<(String, String), ClassicMember>;

fn normalized(mut a: Vec<pb::TopicPartitions>) -> Vec<pb::TopicPartitions> {
    a.retain(|t| !t.partitions.is_empty());
    for t in &mut a {
        t.partitions.sort_unstable();
    }
    a.sort_by(|x, y| x.topic.cmp(&y.topic));
    a
}

/// Calls the coordinator (through the service layer, so it is relayed to
/// wherever the group's coordinator runs).
async fn heartbeat(
    k: &Kafka,
    h: &RequestHeader,
    req: pb::GroupHeartbeatRequest,
) -> Result<pb::GroupHeartbeatResponse, tonic::Status> {
    let mut q = Request::new(req);
    if let Ok(v) = h.client_host.parse() {
        q.metadata_mut()
            .insert(crate::service::groups::CLIENT_HOST, v);
    }
    k.service
        .group_heartbeat(q)
        .await
        .map(tonic::Response::into_inner)
}

/// A consumer-protocol subscription: its topics and, from v1, the
/// partitions it owns.
fn parse_subscription(meta: &Bytes) -> (Vec<String>, Vec<pb::TopicPartitions>) {
    let mut r = Reader::new(meta.clone(), false);
    let parsed = (|| {
        let version = r.i16()?;
        let topics = r.array(|r| r.string())?;
        let _user_data = r.nullable_bytes()?;
        let owned = if version >= 1 {
            r.array(|r| {
                let topic = r.string()?;
                let partitions = r.array(|r| r.i32())?;
                Ok(pb::TopicPartitions {
                    topic,
                    partitions: partitions.into_iter().map(|p| p.max(0) as u32).collect(),
                })
            })?
        } else {
            Vec::new()
        };
        Ok::<_, WireError>((topics, owned))
    })();
    parsed.unwrap_or_default()
}

/// A consumer-protocol assignment (v0 layout; every version reads it), as
/// SyncGroup hands it out and DescribeGroups shows it.
pub(super) fn encode_assignment(a: &[pb::TopicPartitions]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(a.len() as i32);
    for t in a {
        b.put_i16(t.topic.len() as i16);
        b.put_slice(t.topic.as_bytes());
        b.put_i32(t.partitions.len() as i32);
        for p in &t.partitions {
            b.put_i32(*p as i32);
        }
    }
    b.put_i32(-1);
    b
}

fn prune(members: &mut ClassicMembers) {
    members.retain(|_, m| {
        m.last_seen.elapsed() < Duration::from_millis(u64::from(m.session_timeout_ms) * 2 + 10_000)
    });
}

/// JoinGroup: joins (or rejoins) through a heartbeat and answers at once.
pub fn join_group(k: Arc<Kafka>, h: RequestHeader, mut r: Reader) -> Work {
    Box::pin(async move {
        let v = h.api_version;
        let group = r.string()?;
        let session_timeout = r.i32()?;
        let rebalance_timeout = if v >= 1 { r.i32()? } else { session_timeout };
        let member_id = r.string()?;
        let instance_id = if v >= 5 { r.nullable_string()? } else { None };
        let protocol_type = r.string()?;
        let protocols = r.array(|r| {
            let name = r.string()?;
            let meta = r.nullable_bytes()?.unwrap_or_default();
            r.tags()?;
            Ok((name, meta))
        })?;
        if v >= 8 {
            let _reason = r.nullable_string()?;
        }
        r.tags()?;

        let fail = |c: i16, member: &str| {
            let mut w = Writer::new(r.flexible);
            if v >= 2 {
                w.i32(0);
            }
            w.i16(c);
            w.i32(-1);
            if v >= 7 {
                w.nullable_string(None);
            }
            if v >= 7 {
                w.nullable_string(None);
            } else {
                w.string("");
            }
            w.string("");
            if v >= 9 {
                w.bool(false);
            }
            w.string(member);
            w.array_len(0);
            w.tags();
            w
        };
        let Some((protocol, meta)) = protocols.first().cloned() else {
            return Ok(Some(fail(INCONSISTENT_GROUP_PROTOCOL, &member_id)));
        };
        if protocol_type != "consumer" {
            return Ok(Some(fail(INCONSISTENT_GROUP_PROTOCOL, &member_id)));
        }
        let (topics, owned) = parse_subscription(&meta);
        let cooperative = protocol == "cooperative-sticky";
        let known = k
            .classic
            .lock()
            .get(&(group.clone(), member_id.clone()))
            .cloned();
        let session_timeout_ms = session_timeout.max(0) as u32;
        let req = pb::GroupHeartbeatRequest {
            group: group.clone(),
            member_id: member_id.clone(),
            member_epoch: known.as_ref().map_or(0, |m| m.epoch),
            instance_id: instance_id.clone().unwrap_or_default(),
            subscribed_topics: topics,
            subscribed_pattern: String::new(),
            // Eager assignors give everything up before rejoining.
            owned: if cooperative { owned } else { Vec::new() },
            owned_set: true,
            session_timeout_ms: session_timeout_ms.clamp(
                k.broker.config().groups.session_timeout_min_ms,
                k.broker.config().groups.session_timeout_max_ms,
            ),
            rebalance_timeout_ms: rebalance_timeout.max(0) as u32,
            client_id: h.client_id.clone().unwrap_or_default(),
        };
        let mut answer = heartbeat(&k, &h, req.clone()).await;
        // A member this node does not know (it restarted, or the client
        // moved here): join again under the same id.
        if known.is_none()
            && !member_id.is_empty()
            && let Err(s) = &answer
            && matches!(
                errors::of_status(s),
                code::UNKNOWN_MEMBER_ID | code::FENCED_MEMBER_EPOCH
            )
        {
            let fresh = pb::GroupHeartbeatRequest {
                member_id: String::new(),
                ..req
            };
            answer = heartbeat(&k, &h, fresh).await;
        }
        let resp = match answer {
            Ok(x) => x,
            Err(s) => {
                let c = match errors::of_status(&s) {
                    code::FENCED_MEMBER_EPOCH => code::UNKNOWN_MEMBER_ID,
                    c => c,
                };
                k.classic.lock().remove(&(group.clone(), member_id.clone()));
                return Ok(Some(fail(c, "")));
            }
        };
        let assignment = normalized(resp.assignment);
        {
            let mut m = k.classic.lock();
            prune(&mut m);
            if resp.member_id != member_id {
                m.remove(&(group.clone(), member_id.clone()));
            }
            m.insert(
                (group.clone(), resp.member_id.clone()),
                ClassicMember {
                    generation: resp.member_epoch,
                    epoch: resp.member_epoch,
                    assignment,
                    protocol: protocol.clone(),
                    session_timeout_ms,
                    last_seen: Instant::now(),
                },
            );
        }
        let mut w = Writer::new(r.flexible);
        if v >= 2 {
            w.i32(0);
        }
        w.i16(code::NONE);
        w.i32(resp.member_epoch);
        if v >= 7 {
            w.nullable_string(Some("consumer"));
            w.nullable_string(Some(&protocol));
        } else {
            w.string(&protocol);
        }
        w.string(""); // no member leads: the coordinator assigns
        if v >= 9 {
            w.bool(false);
        }
        w.string(&resp.member_id);
        w.array_len(0);
        w.tags();
        Ok(Some(w))
    })
}

/// SyncGroup: the member's assignment as the coordinator computed it.
pub fn sync_group(k: Arc<Kafka>, h: RequestHeader, mut r: Reader) -> Work {
    Box::pin(async move {
        let v = h.api_version;
        let group = r.string()?;
        let generation = r.i32()?;
        let member_id = r.string()?;
        if v >= 3 {
            let _instance = r.nullable_string()?;
        }
        if v >= 5 {
            let _ptype = r.nullable_string()?;
            let _pname = r.nullable_string()?;
        }
        let _assignments = r.array(|r| {
            let _m = r.string()?;
            let _a = r.nullable_bytes()?;
            r.tags()?;
            Ok(())
        })?;
        r.tags()?;
        let member = k.classic.lock().get(&(group, member_id)).cloned();
        let (error, assignment, protocol) = match member {
            None => (code::UNKNOWN_MEMBER_ID, BytesMut::new(), String::new()),
            Some(m) if m.generation != generation => {
                (ILLEGAL_GENERATION, BytesMut::new(), m.protocol)
            }
            Some(m) => (code::NONE, encode_assignment(&m.assignment), m.protocol),
        };
        let mut w = Writer::new(r.flexible);
        if v >= 1 {
            w.i32(0);
        }
        w.i16(error);
        if v >= 5 {
            w.nullable_string(Some("consumer"));
            w.nullable_string(Some(&protocol));
        }
        w.nullable_bytes(Some(&assignment));
        w.tags();
        Ok(Some(w))
    })
}

/// Heartbeat: keeps the member alive; REBALANCE_IN_PROGRESS when its
/// assignment changed (see the module doc).
pub fn heartbeat_classic(k: Arc<Kafka>, h: RequestHeader, mut r: Reader) -> Work {
    Box::pin(async move {
        let v = h.api_version;
        let group = r.string()?;
        let generation = r.i32()?;
        let member_id = r.string()?;
        if v >= 3 {
            let _instance = r.nullable_string()?;
        }
        r.tags()?;
        let key = (group.clone(), member_id.clone());
        let member = k.classic.lock().get(&key).cloned();
        let error = match member {
            None => code::UNKNOWN_MEMBER_ID,
            Some(m) if m.generation != generation => ILLEGAL_GENERATION,
            Some(m) => {
                let req = pb::GroupHeartbeatRequest {
                    group: group.clone(),
                    member_id: member_id.clone(),
                    member_epoch: m.epoch,
                    owned: m.assignment.clone(),
                    owned_set: true,
                    client_id: h.client_id.clone().unwrap_or_default(),
                    ..Default::default()
                };
                match heartbeat(&k, &h, req).await {
                    Ok(resp) => {
                        let now = normalized(resp.assignment);
                        let mut all = k.classic.lock();
                        if let Some(x) = all.get_mut(&key) {
                            x.epoch = resp.member_epoch;
                            x.last_seen = Instant::now();
                        }
                        if now == m.assignment {
                            code::NONE
                        } else {
                            REBALANCE_IN_PROGRESS
                        }
                    }
                    Err(s) => match errors::of_status(&s) {
                        code::UNKNOWN_MEMBER_ID | code::FENCED_MEMBER_EPOCH => {
                            k.classic.lock().remove(&key);
                            code::UNKNOWN_MEMBER_ID
                        }
                        c => c,
                    },
                }
            }
        };
        let mut w = Writer::new(r.flexible);
        if v >= 1 {
            w.i32(0);
        }
        w.i16(error);
        w.tags();
        Ok(Some(w))
    })
}

/// LeaveGroup: each member leaves (a static one keeps its partitions
/// until its session times out, as the native leave −2 does).
pub fn leave_group(k: Arc<Kafka>, h: RequestHeader, mut r: Reader) -> Work {
    Box::pin(async move {
        let v = h.api_version;
        let group = r.string()?;
        let members: Vec<(String, Option<String>)> = if v <= 2 {
            vec![(r.string()?, None)]
        } else {
            r.array(|r| {
                let m = r.string()?;
                let i = r.nullable_string()?;
                if v >= 5 {
                    let _reason = r.nullable_string()?;
                }
                r.tags()?;
                Ok((m, i))
            })?
        };
        r.tags()?;
        let mut results = Vec::with_capacity(members.len());
        for (m, instance) in &members {
            let known = k.classic.lock().remove(&(group.clone(), m.clone()));
            let epoch = known.map_or(0, |x| x.epoch);
            let req = pb::GroupHeartbeatRequest {
                group: group.clone(),
                member_id: m.clone(),
                member_epoch: if instance.is_some() { -2 } else { -1 },
                instance_id: instance.clone().unwrap_or_default(),
                ..Default::default()
            };
            let c = if epoch == 0 && m.is_empty() {
                code::UNKNOWN_MEMBER_ID
            } else {
                match heartbeat(&k, &h, req).await {
                    Ok(_) => code::NONE,
                    Err(s) => errors::of_status(&s),
                }
            };
            results.push((m.clone(), instance.clone(), c));
        }
        let top = if v <= 2 {
            results.first().map_or(code::NONE, |r| r.2)
        } else {
            code::NONE
        };
        let mut w = Writer::new(r.flexible);
        if v >= 1 {
            w.i32(0);
        }
        w.i16(top);
        if v >= 3 {
            w.array(&results, |w, (m, i, c)| {
                w.string(m);
                w.nullable_string(i.as_deref());
                w.i16(*c);
                w.tags();
            });
        }
        w.tags();
        Ok(Some(w))
    })
}

/// ConsumerGroupHeartbeat (KIP-848), onto GroupHeartbeat; topics are
/// named by the ids Metadata gives them.
pub fn consumer_group_heartbeat(k: Arc<Kafka>, h: RequestHeader, mut r: Reader) -> Work {
    Box::pin(async move {
        let v = h.api_version;
        let group = r.string()?;
        let member_id = r.string()?;
        let member_epoch = r.i32()?;
        let instance_id = r.nullable_string()?;
        let _rack = r.nullable_string()?;
        let rebalance_timeout = r.i32()?;
        let topics = r.nullable_array(|r| r.string())?;
        let regex = if v >= 1 { r.nullable_string()? } else { None };
        let _assignor = r.nullable_string()?;
        let owned = r.nullable_array(|r| {
            let id = r.uuid()?;
            let parts = r.array(|r| r.i32())?;
            r.tags()?;
            Ok((id, parts))
        })?;
        r.tags()?;

        let names: HashMap<[u8; 16], String> = k
            .broker
            .topic_views(&[])
            .unwrap_or_default()
            .into_iter()
            .map(|t| (topic_id(&t.name), t.name))
            .collect();
        let owned_pb = owned.as_ref().map(|o| {
            o.iter()
                .filter_map(|(id, parts)| {
                    names.get(id).map(|n| pb::TopicPartitions {
                        topic: n.clone(),
                        partitions: parts.iter().map(|p| (*p).max(0) as u32).collect(),
                    })
                })
                .collect::<Vec<_>>()
        });
        let req = pb::GroupHeartbeatRequest {
            group,
            member_id,
            member_epoch,
            instance_id: instance_id.unwrap_or_default(),
            subscribed_topics: topics.unwrap_or_default(),
            subscribed_pattern: regex.unwrap_or_default(),
            owned_set: owned_pb.is_some(),
            owned: owned_pb.unwrap_or_default(),
            session_timeout_ms: 0,
            rebalance_timeout_ms: rebalance_timeout.max(0) as u32,
            client_id: h.client_id.clone().unwrap_or_default(),
        };
        let answer = heartbeat(&k, &h, req).await;
        let mut w = Writer::new(true);
        w.i32(0);
        match answer {
            Ok(resp) => {
                w.i16(code::NONE);
                w.nullable_string(None);
                w.nullable_string(Some(&resp.member_id));
                w.i32(resp.member_epoch);
                w.i32(resp.heartbeat_interval_ms as i32);
                // The assignment, always sent (a client compares).
                w.i8(1);
                w.array(&resp.assignment, |w, t| {
                    w.uuid(topic_id(&t.topic));
                    w.array(&t.partitions, |w, p| w.i32(*p as i32));
                    w.tags();
                });
                w.tags();
            }
            Err(s) => {
                w.i16(errors::of_status(&s));
                w.nullable_string(Some(s.message()));
                w.nullable_string(None);
                w.i32(-1);
                w.i32(0);
                w.i8(-1);
            }
        }
        w.tags();
        Ok(Some(w))
    })
}
