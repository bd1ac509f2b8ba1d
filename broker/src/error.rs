//! The services' error type, and the one place that maps errors to wire
//! codes: the stable [`ErrorCode`] of the proto, gRPC statuses (with an
//! encoded `ErrorDetail`) and HTTP statuses.

use strata_proto::BatchError;
use strata_proto::pb::{ErrorCode, ErrorDetail};

use strata_group::GroupError;

use crate::dedup::SequenceError;
use crate::log::LogError;
use crate::meta::MetaError;
use crate::settings::SettingsError;

/// What went wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// Partitions the topic has.
        partitions: u32,
    },
    /// Bad topic name.
    #[error("invalid topic name {0}")]
    InvalidTopicName(String),
    /// Topic exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// Bad settings.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The batch failed verification.
    #[error("rejected batch: {0}")]
    CorruptBatch(BatchError),
    /// Batch over the limit.
    #[error("batch of {size} bytes exceeds the topic's limit of {max} bytes")]
    BatchTooLarge {
        /// Size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Offset outside the readable range.
    #[error(
        "offset {offset} is out of range: readable offsets are [{log_start_offset}, {high_watermark}]"
    )]
    OffsetOutOfRange {
        /// Asked for.
        offset: u64,
        /// First readable.
        log_start_offset: u64,
        /// End of the committed prefix.
        high_watermark: u64,
    },
    /// Sequence gap or stale duplicate from an idempotent producer.
    #[error("producer {producer_id}: out-of-order sequence {got}, expected {expected}")]
    OutOfOrderSequence {
        /// Producer.
        producer_id: u64,
        /// Expected next sequence.
        expected: u32,
        /// Received.
        got: u32,
    },
    /// A newer epoch of this producer exists.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// Producer.
        producer_id: u64,
        /// Epoch used.
        epoch: u16,
        /// Current epoch.
        current: u16,
    },
    /// An idempotent batch under a producer id this cluster never issued.
    #[error("producer id {0} was not issued by this cluster (ask InitProducer for one)")]
    UnknownProducer(u64),
    /// A batch dated too far in the future.
    #[error(
        "batch timestamp {timestamp_ms} ms is more than {after_max_ms} ms ahead of the broker's clock ({now_ms} ms); see message_timestamp_after_max_ms"
    )]
    InvalidTimestamp {
        /// The batch's newest record timestamp.
        timestamp_ms: i64,
        /// The broker's clock.
        now_ms: i64,
        /// The limit.
        after_max_ms: u64,
    },
    /// A malformed request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// This node does not lead the partition (or the metadata group).
    #[error("this node is not the leader{}", .leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_else(|| "; no leader is known yet".into()))]
    NotLeader {
        /// The leader's client address, if known.
        leader: Option<String>,
    },
    /// The topic is not in this node's metadata, and this node has not
    /// caught up with the cluster's metadata since it started (or since it
    /// was cut off), so the topic may well exist. Retriable: sent as
    /// `NOT_LEADER` with no leader hint, so clients ask another node.
    #[error(
        "topic {0:?} is not known here yet: this node's metadata has not caught up with the cluster (it restarted or is cut off); retry, or ask another node"
    )]
    MetadataBehind(String),
    /// This node leads but cannot reach a quorum of the group's replicas.
    #[error("this node leads the partition but cannot reach a quorum of its replicas: {0}")]
    NotEnoughReplicas(String),
    /// The broker is stopping.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// Storage failure.
    #[error("storage: {0}")]
    Storage(#[from] LogError),
    /// Metadata store failure.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A consumer-group operation was refused by the coordinator.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// This node does not coordinate the group.
    #[error("this node is not the coordinator of group {group:?}{}", .leader.as_ref().map(|l| format!("; the coordinator is at {l}")).unwrap_or_else(|| "; no coordinator is known yet".into()))]
    NotCoordinator {
        /// The group.
        group: String,
        /// The coordinator's client address, if known.
        leader: Option<String>,
    },
    /// The coordinator is rebuilding its groups from the log, or cannot
    /// serve them yet (its topic metadata is behind).
    #[error("the group coordinator is loading: {0}; retry shortly")]
    CoordinatorLoading(String),
}

impl From<SettingsError> for BrokerError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::InvalidTopicName(why) => BrokerError::InvalidTopicName(why),
            SettingsError::InvalidConfig(why) => BrokerError::InvalidConfig(why),
        }
    }
}

impl From<SequenceError> for BrokerError {
    fn from(e: SequenceError) -> Self {
        match e {
            SequenceError::Fenced {
                producer_id,
                epoch,
                current,
            } => BrokerError::ProducerFenced {
                producer_id,
                epoch,
                current,
            },
            SequenceError::OutOfOrder {
                producer_id,
                expected,
                got,
            } => BrokerError::OutOfOrderSequence {
                producer_id,
                expected,
                got,
            },
        }
    }
}

impl From<BatchError> for BrokerError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::TooLarge { size, max } => BrokerError::BatchTooLarge { size, max },
            e => BrokerError::CorruptBatch(e),
        }
    }
}

impl BrokerError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            BrokerError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            BrokerError::InvalidTopicName(_) => ErrorCode::InvalidTopicName,
            BrokerError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
            BrokerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            BrokerError::CorruptBatch(_) => ErrorCode::CorruptBatch,
            BrokerError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            BrokerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            BrokerError::Storage(LogError::OffsetOutOfRange { .. }) => ErrorCode::OffsetOutOfRange,
            BrokerError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            BrokerError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            BrokerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            BrokerError::UnknownProducer(_) => ErrorCode::UnknownProducer,
            BrokerError::InvalidTimestamp { .. } => ErrorCode::InvalidTimestamp,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
            BrokerError::NotLeader { .. } | BrokerError::MetadataBehind(_) => ErrorCode::NotLeader,
            BrokerError::NotEnoughReplicas(_) => ErrorCode::NotEnoughReplicas,
            BrokerError::Storage(LogError::EntryTooLarge { .. }) => ErrorCode::BatchTooLarge,
            BrokerError::Storage(_) | BrokerError::Meta(_) => ErrorCode::StorageError,
            BrokerError::NotCoordinator { .. } => ErrorCode::NotCoordinator,
            BrokerError::CoordinatorLoading(_) => ErrorCode::CoordinatorLoading,
            BrokerError::Group(g) => match g {
                GroupError::InvalidGroupName { .. } | GroupError::InvalidRequest(_) => {
                    ErrorCode::InvalidRequest
                }
                GroupError::UnknownMember { .. } => ErrorCode::UnknownMemberId,
                GroupError::FencedMemberEpoch { .. } => ErrorCode::FencedMemberEpoch,
                GroupError::GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
                GroupError::UnknownGroup { .. } => ErrorCode::UnknownGroup,
                GroupError::OffsetRegression { .. } => ErrorCode::OffsetRegression,
                GroupError::UnknownTopicOrPartition { .. } => ErrorCode::UnknownPartition,
                GroupError::GroupFull { .. } => ErrorCode::GroupFull,
                GroupError::Corrupt(_) => ErrorCode::StorageError,
            },
        }
    }

    /// The detail carried in a gRPC status.
    pub fn detail(&self) -> ErrorDetail {
        let mut d = ErrorDetail {
            code: self.code() as i32,
            message: self.to_string(),
            ..Default::default()
        };
        match self {
            BrokerError::OffsetOutOfRange {
                log_start_offset,
                high_watermark,
                ..
            } => {
                d.log_start_offset = Some(*log_start_offset);
                d.high_watermark = Some(*high_watermark);
            }
            BrokerError::Storage(LogError::OffsetOutOfRange {
                log_start_offset,
                next_offset,
                ..
            }) => {
                d.log_start_offset = Some(*log_start_offset);
                d.high_watermark = Some(*next_offset);
            }
            BrokerError::NotLeader { leader } | BrokerError::NotCoordinator { leader, .. } => {
                d.leader_hint = leader.clone()
            }
            _ => {}
        }
        d
    }

    /// The gRPC status: a standard code for generic clients, the detail for ours.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self.code() {
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => Code::NotFound,
            ErrorCode::TopicAlreadyExists => Code::AlreadyExists,
            ErrorCode::InvalidTopicName
            | ErrorCode::InvalidConfig
            | ErrorCode::CorruptBatch
            | ErrorCode::BatchTooLarge
            | ErrorCode::InvalidTimestamp
            | ErrorCode::InvalidRequest => Code::InvalidArgument,
            ErrorCode::OffsetOutOfRange => Code::OutOfRange,
            ErrorCode::OutOfOrderSequence
            | ErrorCode::ProducerFenced
            | ErrorCode::UnknownProducer => Code::FailedPrecondition,
            ErrorCode::NotLeader
            | ErrorCode::ShuttingDown
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorLoading => Code::Unavailable,
            ErrorCode::UnknownGroup => Code::NotFound,
            ErrorCode::UnknownMemberId
            | ErrorCode::FencedMemberEpoch
            | ErrorCode::GroupNotEmpty
            | ErrorCode::OffsetRegression
            | ErrorCode::GroupFull => Code::FailedPrecondition,
            ErrorCode::StorageError | ErrorCode::Unspecified => Code::Internal,
        };
        let message = self.to_string();
        let details = strata_proto::status::encode_details(code as i32, &message, &self.detail());
        tonic::Status::with_details(code, message, details.into())
    }

    /// The HTTP status.
    pub fn http_status(&self) -> axum::http::StatusCode {
        http_status_of(self.to_status().code())
    }

    /// The stable code name and HTTP status of a status from another
    /// broker (one this node forwarded a request to); `None` without a
    /// Strata error detail.
    pub fn code_of(status: &tonic::Status) -> Option<(&'static str, axum::http::StatusCode)> {
        let d = strata_proto::status::decode_details(status.details())?;
        let code = ErrorCode::try_from(d.code).ok()?;
        Some((code.as_str_name(), http_status_of(status.code())))
    }
}

fn http_status_of(code: tonic::Code) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match code {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        // OFFSET_OUT_OF_RANGE: a well-formed read of records that do not
        // exist (below the log start, past the high watermark).
        tonic::Code::OutOfRange => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
