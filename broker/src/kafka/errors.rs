//! Kafka's error codes, and the one mapping from Strata's errors to them.

use strata_group::GroupError;

use crate::error::BrokerError;
use crate::log::LogError;

/// Kafka error codes used by the front-end (Kafka's `Errors` numbering).
#[allow(missing_docs)]
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const INVALID_RECORD: i16 = 87;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
}

/// The Kafka error code for a Strata error.
pub fn of(e: &BrokerError) -> i16 {
    use code::*;
    match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            UNKNOWN_TOPIC_OR_PARTITION
        }
        BrokerError::InvalidTopicName(_) => INVALID_TOPIC_EXCEPTION,
        BrokerError::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        BrokerError::InvalidConfig(_) => INVALID_CONFIG,
        BrokerError::CorruptBatch(_) => CORRUPT_MESSAGE,
        BrokerError::BatchTooLarge { .. }
        | BrokerError::Storage(LogError::EntryTooLarge { .. }) => MESSAGE_TOO_LARGE,
        BrokerError::OffsetOutOfRange { .. }
        | BrokerError::Storage(LogError::OffsetOutOfRange { .. }) => OFFSET_OUT_OF_RANGE,
        BrokerError::OutOfOrderSequence { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
        BrokerError::ProducerFenced { .. } => INVALID_PRODUCER_EPOCH,
        BrokerError::UnknownProducer(_) => UNKNOWN_PRODUCER_ID,
        BrokerError::InvalidTimestamp { .. } => INVALID_TIMESTAMP,
        BrokerError::InvalidRequest(_) => INVALID_REQUEST,
        BrokerError::NotLeader { .. } | BrokerError::MetadataBehind(_) => NOT_LEADER_OR_FOLLOWER,
        BrokerError::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        BrokerError::NotEnoughReplicas(_) => NOT_ENOUGH_REPLICAS,
        BrokerError::NotCoordinator { .. } => NOT_COORDINATOR,
        BrokerError::CoordinatorLoading(_) => COORDINATOR_LOAD_IN_PROGRESS,
        BrokerError::Group(g) => match g {
            GroupError::UnknownMember { .. } => UNKNOWN_MEMBER_ID,
            GroupError::FencedMemberEpoch { .. } => FENCED_MEMBER_EPOCH,
            GroupError::GroupNotEmpty { .. } => NON_EMPTY_GROUP,
            GroupError::UnknownGroup { .. } => GROUP_ID_NOT_FOUND,
            GroupError::UnknownTopicOrPartition { .. } => UNKNOWN_TOPIC_OR_PARTITION,
            GroupError::GroupFull { .. } => GROUP_MAX_SIZE_REACHED,
            GroupError::OffsetRegression { .. } => INVALID_REQUEST,
            GroupError::Corrupt(_) => KAFKA_STORAGE_ERROR,
            _ => INVALID_REQUEST,
        },
        BrokerError::Storage(_) | BrokerError::Meta(_) => KAFKA_STORAGE_ERROR,
        #[allow(unreachable_patterns)]
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka error code for a status from the service layer (the group
/// RPCs answer with gRPC statuses carrying Strata's error detail).
pub fn of_status(s: &tonic::Status) -> i16 {
    use strata_proto::pb::ErrorCode as E;
    let Some(detail) = strata_proto::status::decode_details(s.details()) else {
        return match s.code() {
            tonic::Code::Unavailable => code::COORDINATOR_NOT_AVAILABLE,
            tonic::Code::NotFound => code::UNKNOWN_TOPIC_OR_PARTITION,
            tonic::Code::InvalidArgument => code::INVALID_REQUEST,
            _ => code::UNKNOWN_SERVER_ERROR,
        };
    };
    match E::try_from(detail.code).unwrap_or(E::Unspecified) {
        E::UnknownTopic | E::UnknownPartition => code::UNKNOWN_TOPIC_OR_PARTITION,
        E::OffsetOutOfRange => code::OFFSET_OUT_OF_RANGE,
        E::NotLeader | E::ShuttingDown | E::NotCoordinator => code::NOT_COORDINATOR,
        E::CoordinatorLoading => code::COORDINATOR_LOAD_IN_PROGRESS,
        E::NotEnoughReplicas => code::COORDINATOR_NOT_AVAILABLE,
        E::UnknownMemberId => code::UNKNOWN_MEMBER_ID,
        E::FencedMemberEpoch => code::FENCED_MEMBER_EPOCH,
        E::GroupNotEmpty => code::NON_EMPTY_GROUP,
        E::UnknownGroup => code::GROUP_ID_NOT_FOUND,
        E::GroupFull => code::GROUP_MAX_SIZE_REACHED,
        E::InvalidTopicName => code::INVALID_TOPIC_EXCEPTION,
        E::StorageError => code::KAFKA_STORAGE_ERROR,
        _ => code::INVALID_REQUEST,
    }
}
