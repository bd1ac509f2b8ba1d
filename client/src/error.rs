//! The client's error type: broker errors arrive as gRPC statuses carrying an
//! `ErrorDetail` with a stable code, and are turned into typed variants here
//! (one place), so callers match on `OffsetOutOfRange`, `UnknownTopic`, …
//! rather than on strings.

use strata_proto::pb;

/// The broker's stable error codes (`ErrorCode` in `proto/strata.proto`;
/// a retired code is never reused), as [`ClientError::code`] reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No code, or one this client does not know (a newer broker).
    Unspecified,
    /// No such topic.
    UnknownTopic,
    /// No such partition.
    UnknownPartition,
    /// The topic name breaks the naming rules.
    InvalidTopicName,
    /// The topic exists.
    TopicAlreadyExists,
    /// A setting is out of range.
    InvalidConfig,
    /// The batch failed verification.
    CorruptBatch,
    /// The batch exceeds the topic's limit.
    BatchTooLarge,
    /// The offset is outside the readable range.
    OffsetOutOfRange,
    /// The node does not lead the partition.
    NotLeader,
    /// An idempotent producer's sequence does not follow.
    OutOfOrderSequence,
    /// A newer epoch of the producer exists.
    ProducerFenced,
    /// The broker's storage failed.
    StorageError,
    /// The request is malformed.
    InvalidRequest,
    /// The producer id was not issued by this cluster (the producer takes
    /// a new one and resends: nothing was written).
    UnknownProducer,
    /// The broker is stopping.
    ShuttingDown,
    /// The partition's leader cannot reach a quorum of its replicas;
    /// retriable (a batch in flight has an unknown outcome until then).
    NotEnoughReplicas,
    /// The batch is dated too far ahead of the broker's clock.
    InvalidTimestamp,
    /// The node does not coordinate the group (retriable; nodes relay
    /// group requests to the coordinator, so this is rare).
    NotCoordinator,
    /// The coordinator is rebuilding its groups; retriable.
    CoordinatorLoading,
    /// The member is not in the group: rejoin with epoch 0.
    UnknownMemberId,
    /// The member's epoch is stale or it does not own the partition (a
    /// zombie): drop its partitions and rejoin.
    FencedMemberEpoch,
    /// The operation needs a group without members.
    GroupNotEmpty,
    /// No such group.
    UnknownGroup,
    /// A commit below the committed offset.
    OffsetRegression,
    /// The group has as many members as the broker allows.
    GroupFull,
}

/// What went wrong talking to Strata.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection failed or the broker is unavailable; retriable.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The offset is outside the readable range.
    #[error(
        "offset {offset} is out of range: readable offsets are [{log_start_offset}, {high_watermark}]"
    )]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// First readable offset.
        log_start_offset: u64,
        /// End of the committed prefix.
        high_watermark: u64,
    },
    /// No such topic.
    #[error("{0}")]
    UnknownTopic(String),
    /// Another error the broker reported, with its stable code.
    #[error("{message} ({code:?})")]
    Broker {
        /// Stable code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// A batch could not be encoded or decoded.
    #[error("batch: {0}")]
    Batch(String),
    /// Bad arguments.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// No committed offset and the reset policy is `error`.
    #[error(
        "no committed offset for group {group:?} on {topic}/{partition}, and the reset policy is 'error'"
    )]
    NoCommittedOffset {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The node asked does not lead the partition; retry at `leader`.
    #[error("{message}")]
    NotLeader {
        /// The leader's client address, if the node knew it.
        leader: Option<String>,
        /// The broker's message.
        message: String,
    },
    /// A record was not acknowledged within the producer's delivery
    /// timeout.
    #[error(
        "not acknowledged within the delivery timeout ({after:?}, {attempts} attempts){}; last error: {last_error}",
        if *outcome_unknown { "; it may or may not have been written" } else { "; it was not written" }
    )]
    DeliveryTimedOut {
        /// The delivery timeout.
        after: std::time::Duration,
        /// Sends of its batch.
        attempts: u32,
        /// The batch reached a broker, which may have written it without
        /// the answer arriving.
        outcome_unknown: bool,
        /// The last failure.
        last_error: String,
    },
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
}

impl ClientError {
    /// Whether retrying the same request can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable(_)
                | ClientError::NotLeader { .. }
                | ClientError::Broker {
                    code: ErrorCode::NotLeader
                        | ErrorCode::ShuttingDown
                        | ErrorCode::StorageError
                        | ErrorCode::NotEnoughReplicas
                        | ErrorCode::NotCoordinator
                        | ErrorCode::CoordinatorLoading,
                    ..
                }
        )
    }

    /// The stable code, when the broker sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            ClientError::UnknownTopic(_) => Some(ErrorCode::UnknownTopic),
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::NotLeader { .. } => Some(ErrorCode::NotLeader),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let detail = strata_proto::status::decode_details(s.details()).filter(|d| d.code != 0);
        let Some(d) = detail else {
            return match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded => ClientError::Unavailable(s.message().to_owned()),
                _ => ClientError::Broker {
                    code: ErrorCode::Unspecified,
                    message: format!("{}: {}", s.code(), s.message()),
                },
            };
        };
        let code = pb::ErrorCode::try_from(d.code)
            .map(ErrorCode::from)
            .unwrap_or(ErrorCode::Unspecified);
        match code {
            ErrorCode::OffsetOutOfRange => ClientError::OffsetOutOfRange {
                offset: parse_offset(&d.message).unwrap_or(0),
                log_start_offset: d.log_start_offset.unwrap_or(0),
                high_watermark: d.high_watermark.unwrap_or(0),
            },
            ErrorCode::UnknownTopic => ClientError::UnknownTopic(d.message),
            ErrorCode::NotLeader => ClientError::NotLeader {
                leader: d.leader_hint,
                message: d.message,
            },
            _ => ClientError::Broker {
                code,
                message: d.message,
            },
        }
    }
}

fn parse_offset(message: &str) -> Option<u64> {
    message
        .strip_prefix("offset ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl From<tonic::transport::Error> for ClientError {
    fn from(e: tonic::transport::Error) -> Self {
        ClientError::Unavailable(e.to_string())
    }
}

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
