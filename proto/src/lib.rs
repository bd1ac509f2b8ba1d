//! Strata's wire formats, shared by every side so that the client never
//! depends on the broker crate.
//!
//! This crate owns the record-batch codec ([`batch`]): the producer
//! encodes a batch, the broker verifies it (without decompressing) and stores
//! it verbatim, and the consumer decodes it; the key partitioner; the
//! wall-clock millisecond timestamp ([`time::now_ms`]); and the gRPC
//! definitions (`pb`, `raft_pb`, with the `grpc` feature, on by default;
//! the storage engine turns it off).

pub mod batch;
pub mod partitioner;
#[cfg(feature = "grpc")]
pub mod status;
pub mod time;

pub use batch::{
    BatchError, BatchHeader, BatchLimits, Compression, EncodeError, Header, ProducerInfo, Record,
    RecordView, VerifiedBatch, admit_batch, decode_records, encode_batch, parse_header,
    verify_batch, verify_slice, visit_records,
};
pub use time::now_ms;

/// Generated protobuf messages and gRPC stubs of `proto/strata.proto`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("strata.v1");
}

/// Generated messages and the tonic client and server of the internal Raft
/// service between brokers (`proto/raft.proto`).
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod raft_pb {
    tonic::include_proto!("strata.raft.v1");
}
