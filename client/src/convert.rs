//! Every translation between the client's domain types and the wire's
//! prost messages, in one place: the rest of the client builds requests
//! from these helpers and hands callers only domain types.
//!
//! The wire's conventions stop here: a leader of 0 ("none known") becomes
//! `None`, a replica's role string becomes a [`ReplicaRole`], an absent
//! topic config becomes the all-defaults [`TopicConfig`]. Errors are not
//! here: statuses are decoded in `error.rs`.

use std::collections::BTreeMap;

use strata_proto::pb;

use crate::error::ErrorCode;
use crate::types::{
    Acks, BrokerInfo, GroupDescription, GroupListing, GroupMemberInfo, GroupOffsets,
    GroupPartitionLag, GroupSummary, Metadata, NodeStatus, OffsetSpec, PartitionInfo,
    PartitionOffsets, ReplicaRole, ReplicaStatus, TopicConfig, TopicDescription, TopicPartition,
};

/// The wire marks "no leader known" with node id 0 (node ids start at 1).
fn leader(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

pub(crate) fn topic_config_to_pb(c: TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        segment_ms: c.segment_ms,
        max_batch_bytes: c.max_batch_bytes,
    }
}

fn topic_config(c: pb::TopicConfig) -> TopicConfig {
    TopicConfig {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        segment_ms: c.segment_ms,
        max_batch_bytes: c.max_batch_bytes,
    }
}

fn partition_info(p: pb::PartitionInfo) -> PartitionInfo {
    PartitionInfo {
        partition: p.partition,
        leader: leader(p.leader),
        replicas: p.replicas,
        log_start_offset: p.log_start_offset,
        high_watermark: p.high_watermark,
        size_bytes: p.size_bytes,
        segments: p.segments,
    }
}

pub(crate) fn topic_description(d: pb::TopicDescription) -> TopicDescription {
    TopicDescription {
        name: d.name,
        partitions: d.partitions,
        config: d.config.map(topic_config).unwrap_or_default(),
        partition_info: d.partition_info.into_iter().map(partition_info).collect(),
    }
}

pub(crate) fn metadata(m: pb::MetadataResponse) -> Metadata {
    Metadata {
        brokers: m
            .brokers
            .into_iter()
            .map(|b| BrokerInfo {
                node_id: b.node_id,
                grpc_addr: b.grpc_addr,
                http_addr: b.http_addr,
            })
            .collect(),
        topics: m.topics.into_iter().map(topic_description).collect(),
    }
}

pub(crate) fn offset_spec_to_pb(spec: OffsetSpec) -> pb::list_offsets_request::Spec {
    use pb::list_offsets_request::Spec;
    match spec {
        OffsetSpec::Earliest => Spec::Position(pb::Position::Earliest as i32),
        OffsetSpec::Latest => Spec::Position(pb::Position::Latest as i32),
        OffsetSpec::Timestamp(t) => Spec::TimestampMs(t),
    }
}

pub(crate) fn partition_offsets(r: pb::ListOffsetsResponse) -> PartitionOffsets {
    PartitionOffsets {
        offset: r.offset,
        log_start_offset: r.log_start_offset,
        high_watermark: r.high_watermark,
    }
}

pub(crate) fn partition_offsets_to_pb(offsets: &[(u32, u64)]) -> Vec<pb::PartitionOffset> {
    offsets
        .iter()
        .map(|&(partition, offset)| pb::PartitionOffset { partition, offset })
        .collect()
}

pub(crate) fn partition_offsets_from_pb(offsets: Vec<pb::PartitionOffset>) -> Vec<(u32, u64)> {
    offsets
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}

pub(crate) fn group_offsets(g: pb::GroupTopic) -> GroupOffsets {
    GroupOffsets {
        group: g.group,
        topic: g.topic,
        offsets: partition_offsets_from_pb(g.offsets),
    }
}

pub(crate) fn partitions_from_pb(v: Vec<pb::TopicPartitions>) -> Vec<TopicPartition> {
    v.into_iter()
        .flat_map(|t| {
            let topic = t.topic;
            t.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect()
}

pub(crate) fn partitions_to_pb(v: &[TopicPartition]) -> Vec<pb::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in v {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(t, partitions)| pb::TopicPartitions {
            topic: t.to_owned(),
            partitions,
        })
        .collect()
}

pub(crate) fn group_listing(r: pb::ListGroupsResponse) -> GroupListing {
    GroupListing {
        groups: r
            .summaries
            .into_iter()
            .map(|s| GroupSummary {
                group: s.group,
                state: s.state,
                members: s.members,
                group_epoch: s.group_epoch,
                coordinator: s.coordinator,
                hold: s.hold,
            })
            .collect(),
        offsets: r.groups.into_iter().map(group_offsets).collect(),
        unavailable_partitions: r.unavailable_partitions,
    }
}

pub(crate) fn group_description(d: pb::DescribeGroupResponse) -> GroupDescription {
    GroupDescription {
        group: d.group,
        state: d.state,
        group_epoch: d.group_epoch,
        assignment_epoch: d.assignment_epoch,
        coordinator: d.coordinator,
        hold: d.hold,
        members: d
            .members
            .into_iter()
            .map(|m| GroupMemberInfo {
                member_id: m.member_id,
                instance_id: (!m.instance_id.is_empty()).then_some(m.instance_id),
                member_epoch: m.member_epoch,
                client_id: m.client_id,
                client_host: m.client_host,
                subscribed_topics: m.subscribed_topics,
                subscribed_pattern: (!m.subscribed_pattern.is_empty())
                    .then_some(m.subscribed_pattern),
                assigned: partitions_from_pb(m.assigned),
                revoking: partitions_from_pb(m.revoking),
                target: partitions_from_pb(m.target),
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| GroupPartitionLag {
                topic: p.topic,
                partition: p.partition,
                committed: p.committed,
                high_watermark: p.high_watermark,
                lag: p.lag,
                owner: (!p.owner.is_empty()).then_some(p.owner),
            })
            .collect(),
    }
}

fn replica_role(role: String) -> ReplicaRole {
    match role.as_str() {
        "leader" => ReplicaRole::Leader,
        "follower" => ReplicaRole::Follower,
        "candidate" => ReplicaRole::Candidate,
        "learner" => ReplicaRole::Learner,
        "stopped" => ReplicaRole::Stopped,
        _ => ReplicaRole::Other(role),
    }
}

fn replica_status(r: pb::ReplicaStatus) -> ReplicaStatus {
    ReplicaStatus {
        topic: r.topic,
        partition: r.partition,
        role: replica_role(r.role),
        term: r.term,
        leader: leader(r.leader),
        voters: r.voters,
        learners: r.learners,
        log_end: r.log_end,
        applied_end: r.applied_end,
        high_watermark: r.high_watermark,
        log_start_offset: r.log_start_offset,
        matched_end: r.matched_end.into_iter().collect(),
        snapshot_end: r.snapshot_end,
        purged_end: r.purged_end,
    }
}

pub(crate) fn node_status(s: pb::NodeStatusResponse) -> NodeStatus {
    NodeStatus {
        node_id: s.node_id,
        raft_addr: s.raft_addr,
        clustered: s.clustered,
        replicas: s.replicas.into_iter().map(replica_status).collect(),
        uptime_ms: s.uptime_ms,
    }
}

pub(crate) fn acks_to_pb(acks: Acks) -> pb::Acks {
    match acks {
        Acks::All => pb::Acks::All,
        Acks::Leader => pb::Acks::Leader,
        Acks::None => pb::Acks::None,
    }
}

impl From<pb::ErrorCode> for ErrorCode {
    fn from(c: pb::ErrorCode) -> Self {
        use pb::ErrorCode as P;
        match c {
            P::Unspecified => ErrorCode::Unspecified,
            P::UnknownTopic => ErrorCode::UnknownTopic,
            P::UnknownPartition => ErrorCode::UnknownPartition,
            P::InvalidTopicName => ErrorCode::InvalidTopicName,
            P::TopicAlreadyExists => ErrorCode::TopicAlreadyExists,
            P::InvalidConfig => ErrorCode::InvalidConfig,
            P::CorruptBatch => ErrorCode::CorruptBatch,
            P::BatchTooLarge => ErrorCode::BatchTooLarge,
            P::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
            P::NotLeader => ErrorCode::NotLeader,
            P::OutOfOrderSequence => ErrorCode::OutOfOrderSequence,
            P::ProducerFenced => ErrorCode::ProducerFenced,
            P::StorageError => ErrorCode::StorageError,
            P::InvalidRequest => ErrorCode::InvalidRequest,
            P::UnknownProducer => ErrorCode::UnknownProducer,
            P::ShuttingDown => ErrorCode::ShuttingDown,
            P::NotEnoughReplicas => ErrorCode::NotEnoughReplicas,
            P::InvalidTimestamp => ErrorCode::InvalidTimestamp,
            P::NotCoordinator => ErrorCode::NotCoordinator,
            P::CoordinatorLoading => ErrorCode::CoordinatorLoading,
            P::UnknownMemberId => ErrorCode::UnknownMemberId,
            P::FencedMemberEpoch => ErrorCode::FencedMemberEpoch,
            P::GroupNotEmpty => ErrorCode::GroupNotEmpty,
            P::UnknownGroup => ErrorCode::UnknownGroup,
            P::OffsetRegression => ErrorCode::OffsetRegression,
            P::GroupFull => ErrorCode::GroupFull,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire code maps to the variant of the same name (the CLI prints
    /// the name, so the mapping must not shift).
    #[test]
    fn error_codes_map_by_name() {
        let mut known = 0;
        for n in 0..64 {
            if let Ok(wire) = pb::ErrorCode::try_from(n) {
                known += 1;
                assert_eq!(format!("{wire:?}"), format!("{:?}", ErrorCode::from(wire)));
            }
        }
        assert_eq!(known, 26, "a code was added to the proto: map it");
    }

    #[test]
    fn leader_zero_means_none_known() {
        let d = topic_description(pb::TopicDescription {
            name: "t".into(),
            partitions: 2,
            config: None,
            partition_info: vec![
                pb::PartitionInfo {
                    partition: 0,
                    leader: 0,
                    ..Default::default()
                },
                pb::PartitionInfo {
                    partition: 1,
                    leader: 3,
                    ..Default::default()
                },
            ],
        });
        assert_eq!(d.config, TopicConfig::default());
        assert_eq!(d.partition_info[0].leader, None);
        assert_eq!(d.partition_info[1].leader, Some(3));
    }

    #[test]
    fn unknown_roles_are_kept_not_dropped() {
        assert_eq!(replica_role("leader".into()), ReplicaRole::Leader);
        assert_eq!(
            replica_role("observer".into()),
            ReplicaRole::Other("observer".into())
        );
    }

    #[test]
    fn topic_config_round_trips() {
        let c = TopicConfig {
            retention_ms: Some(-1),
            retention_bytes: None,
            segment_bytes: Some(1 << 20),
            segment_ms: Some(60_000),
            max_batch_bytes: None,
        };
        assert_eq!(topic_config(topic_config_to_pb(c.clone())), c);
    }
}
