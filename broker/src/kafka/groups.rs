//! Group APIs over the service layer's coordinator RPCs: FindCoordinator
//! (v0–v4), OffsetCommit (v2–v8), OffsetFetch (v1–v7), ListGroups (v0–v4)
//! and DescribeGroups (v0–v5).
//!
//! Every node relays group requests to the group's coordinator (the
//! leader of its `__consumer_offsets` partition), so FindCoordinator
//! names the node the client asked: the client never has to chase a
//! coordinator that moves. Offsets are the same as the native API's (the
//! next offset to read), so a group's commits are shared whichever
//! protocol made them. The classic join/sync protocol is not served yet:
//! commits from Kafka clients are standalone commits (generation −1, no
//! member), which the coordinator refuses while the group has members.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use strata_proto::pb;
use strata_proto::pb::strata_server::Strata;
use tonic::Request;

use super::Kafka;
use super::api::Work;
use super::errors::{self, code};
use super::wire::{Reader, WireError, Writer};

/// FindCoordinator: this node, for groups (see the module doc).
pub fn find_coordinator(k: &Kafka, v: i16, r: &mut Reader) -> Result<Writer, WireError> {
    let mut keys = Vec::new();
    if v <= 3 {
        keys.push(r.string()?);
    }
    let key_type = if v >= 1 { r.i8()? } else { 0 };
    if v >= 4 {
        keys = r.array(|r| r.string())?;
    }
    r.tags()?;
    let (host, port) = k.advertised.clone();
    let (error, message) = if key_type == 0 {
        (code::NONE, None)
    } else {
        (
            code::COORDINATOR_NOT_AVAILABLE,
            Some("transaction coordinators: Strata has no transactions"),
        )
    };
    let mut w = Writer::new(r.flexible);
    if v >= 1 {
        w.i32(0);
    }
    if v >= 4 {
        w.array(&keys, |w, key| {
            w.string(key);
            w.i32(k.node_id());
            w.string(&host);
            w.i32(port);
            w.i16(error);
            w.nullable_string(message);
            w.tags();
        });
    } else {
        w.i16(error);
        if v >= 1 {
            w.nullable_string(message);
        }
        w.i32(k.node_id());
        w.string(&host);
        w.i32(port);
    }
    w.tags();
    Ok(w)
}

/// OffsetCommit: one CommitOffsets per topic.
pub fn offset_commit(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        let group = r.string()?;
        let generation = r.i32()?;
        let member = r.string()?;
        if v >= 7 {
            let _instance = r.nullable_string()?;
        }
        if (2..=4).contains(&v) {
            let _retention = r.i64()?;
        }
        let topics = r.array(|r| {
            let name = r.string()?;
            let parts = r.array(|r| {
                let index = r.i32()?;
                let offset = r.i64()?;
                if v >= 6 {
                    let _epoch = r.i32()?;
                }
                let _metadata = r.nullable_string()?;
                r.tags()?;
                Ok((index, offset))
            })?;
            r.tags()?;
            Ok((name, parts))
        })?;
        r.tags()?;
        let mut results = Vec::with_capacity(topics.len());
        for (name, parts) in topics {
            let valid = parts.iter().all(|(i, o)| *i >= 0 && *o >= 0);
            let outcome = if !valid {
                code::INVALID_REQUEST
            } else {
                let req = pb::CommitOffsetsRequest {
                    group: group.clone(),
                    topic: name.clone(),
                    offsets: parts
                        .iter()
                        .map(|(i, o)| pb::PartitionOffset {
                            partition: *i as u32,
                            offset: *o as u64,
                        })
                        .collect(),
                    member_id: if generation < 0 {
                        String::new()
                    } else {
                        member.clone()
                    },
                    member_epoch: generation.max(0),
                };
                match k.service.commit_offsets(Request::new(req)).await {
                    Ok(_) => code::NONE,
                    Err(s) => {
                        tracing::debug!(%group, topic = %name, status = %s, "kafka offset commit refused");
                        errors::of_status(&s)
                    }
                }
            };
            results.push((name, parts, outcome));
        }
        let mut w = Writer::new(r.flexible);
        if v >= 3 {
            w.i32(0);
        }
        w.array(&results, |w, (name, parts, outcome)| {
            w.string(name);
            w.array(parts, |w, (i, _)| {
                w.i32(*i);
                w.i16(*outcome);
                w.tags();
            });
            w.tags();
        });
        w.tags();
        Ok(Some(w))
    })
}

/// One group's part of an OffsetFetch: asked topics (`None`: all).
type AskedGroup = (String, Option<Vec<(String, Vec<i32>)>>);

/// The committed offsets of one group, as OffsetFetch answers them.
async fn committed(k: &Kafka, group: &str) -> (i16, Vec<pb::GroupTopic>) {
    let asked = k
        .service
        .fetch_committed(Request::new(pb::FetchCommittedRequest {
            group: group.to_owned(),
            topic: String::new(),
        }))
        .await;
    match asked {
        Ok(resp) => (code::NONE, resp.into_inner().topics),
        Err(s) if errors::of_status(&s) == code::GROUP_ID_NOT_FOUND => (code::NONE, Vec::new()),
        Err(s) => (errors::of_status(&s), Vec::new()),
    }
}

/// OffsetFetch: the committed offsets (−1 where none); v8+ asks for
/// several groups at once.
pub fn offset_fetch(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        let topics_of = |r: &mut Reader| {
            r.nullable_array(|r| {
                let name = r.string()?;
                let parts = r.array(|r| r.i32())?;
                r.tags()?;
                Ok((name, parts))
            })
        };
        let groups: Vec<AskedGroup> = if v <= 7 {
            let g = r.string()?;
            vec![(g, topics_of(&mut r)?)]
        } else {
            r.array(|r| {
                let g = r.string()?;
                if v >= 9 {
                    let _member = r.nullable_string()?;
                    let _epoch = r.i32()?;
                }
                let t = topics_of(r)?;
                r.tags()?;
                Ok((g, t))
            })?
        };
        if v >= 7 {
            let _require_stable = r.bool()?;
        }
        r.tags()?;
        let mut answers = Vec::with_capacity(groups.len());
        for (group, topics) in groups {
            let (error, committed) = committed(&k, &group).await;
            let offset_of = |topic: &str, p: i32| -> i64 {
                committed
                    .iter()
                    .find(|t| t.topic == topic)
                    .and_then(|t| t.offsets.iter().find(|o| o.partition as i32 == p))
                    .map_or(-1, |o| o.offset as i64)
            };
            // Null topics (v2+): everything committed.
            let asked: Vec<(String, Vec<i32>)> = match topics {
                Some(t) => t,
                None => committed
                    .iter()
                    .map(|t| {
                        (
                            t.topic.clone(),
                            t.offsets.iter().map(|o| o.partition as i32).collect(),
                        )
                    })
                    .collect(),
            };
            let rows: Vec<(String, Vec<(i32, i64)>)> = asked
                .into_iter()
                .map(|(name, parts)| {
                    let offs = parts
                        .iter()
                        .map(|p| {
                            (
                                *p,
                                if error == code::NONE {
                                    offset_of(&name, *p)
                                } else {
                                    -1
                                },
                            )
                        })
                        .collect();
                    (name, offs)
                })
                .collect();
            answers.push((group, error, rows));
        }
        let write_topics = |w: &mut Writer, rows: &[(String, Vec<(i32, i64)>)], error: i16| {
            w.array(rows, |w, (name, parts)| {
                w.string(name);
                w.array(parts, |w, (p, o)| {
                    w.i32(*p);
                    w.i64(*o);
                    if v >= 5 {
                        w.i32(-1);
                    }
                    w.nullable_string(Some(""));
                    w.i16(if v >= 8 { code::NONE } else { error });
                    w.tags();
                });
                w.tags();
            });
        };
        let mut w = Writer::new(r.flexible);
        if v >= 3 {
            w.i32(0);
        }
        if v <= 7 {
            let (_, error, rows) = &answers[0];
            write_topics(&mut w, rows, *error);
            if v >= 2 {
                w.i16(*error);
            }
        } else {
            w.array(&answers, |w, (group, error, rows)| {
                w.string(group);
                write_topics(w, rows, *error);
                w.i16(*error);
                w.tags();
            });
        }
        w.tags();
        Ok(Some(w))
    })
}

/// Kafka's name for a Strata group state.
fn state_name(s: &str) -> &'static str {
    match s {
        "empty" => "Empty",
        "stable" => "Stable",
        "reconciling" => "Reconciling",
        _ => "Unknown",
    }
}

/// ListGroups: every group of the cluster (protocol type "consumer").
pub fn list_groups(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        let filter = if v >= 4 {
            r.array(|r| r.string())?
        } else {
            Vec::new()
        };
        r.tags()?;
        let listed = k
            .service
            .list_groups(Request::new(pb::ListGroupsRequest {}))
            .await;
        let (error, groups) = match listed {
            Ok(l) => (code::NONE, l.into_inner().summaries),
            Err(s) => (errors::of_status(&s), Vec::new()),
        };
        let groups: Vec<_> = groups
            .into_iter()
            .filter(|g| {
                filter.is_empty()
                    || filter
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(state_name(&g.state)))
            })
            .collect();
        let mut w = Writer::new(r.flexible);
        if v >= 1 {
            w.i32(0);
        }
        w.i16(error);
        w.array(&groups, |w, g| {
            w.string(&g.group);
            w.string("consumer");
            if v >= 4 {
                w.string(state_name(&g.state));
            }
            w.tags();
        });
        w.tags();
        Ok(Some(w))
    })
}

/// The consumer protocol's subscription (v0), as DescribeGroups shows it.
fn subscription(topics: &[String]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(topics.len() as i32);
    for t in topics {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
    }
    b.put_i32(-1);
    b
}

/// DescribeGroups: state and members ("Dead" for an unknown group, as
/// Kafka answers).
pub fn describe_groups(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    Box::pin(async move {
        let names = r.array(|r| r.string())?;
        if v >= 3 {
            let _ops = r.bool()?;
        }
        r.tags()?;
        let mut described = Vec::with_capacity(names.len());
        for g in names {
            let d = k
                .service
                .describe_group(Request::new(pb::DescribeGroupRequest { group: g.clone() }))
                .await;
            described.push((g, d.map(tonic::Response::into_inner)));
        }
        let mut w = Writer::new(r.flexible);
        if v >= 1 {
            w.i32(0);
        }
        w.array(&described, |w, (g, d)| {
            match d {
                Ok(d) => {
                    w.i16(code::NONE);
                    w.string(g);
                    w.string(state_name(&d.state));
                    w.string("consumer");
                    w.string("uniform");
                    w.array(&d.members, |w, m| {
                        w.string(&m.member_id);
                        if v >= 4 {
                            w.nullable_string(
                                (!m.instance_id.is_empty()).then_some(m.instance_id.as_str()),
                            );
                        }
                        w.string(&m.client_id);
                        w.string(&m.client_host);
                        w.nullable_bytes(Some(&subscription(&m.subscribed_topics)));
                        w.nullable_bytes(Some(&super::membership::encode_assignment(&m.assigned)));
                        w.tags();
                    });
                }
                Err(s) => {
                    let c = errors::of_status(s);
                    let dead = c == code::GROUP_ID_NOT_FOUND;
                    w.i16(if dead { code::NONE } else { c });
                    w.string(g);
                    w.string(if dead { "Dead" } else { "" });
                    w.string("");
                    w.string("");
                    w.array_len(0);
                }
            }
            if v >= 3 {
                w.i32(i32::MIN);
            }
            w.tags();
        });
        w.tags();
        Ok(Some(w))
    })
}
