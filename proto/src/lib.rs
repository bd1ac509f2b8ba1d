//! Strata's wire formats, shared by every side so that the client never
//! depends on the broker crate.
//!
//! For now this crate owns the record-batch codec ([`batch`]): the producer
//! encodes a batch, the broker verifies it (without decompressing) and stores
//! it verbatim, and the consumer decodes it. The gRPC definitions join this
//! crate with the single-node broker.

pub mod batch;
pub mod partitioner;

pub use batch::{
    BatchError, BatchHeader, BatchLimits, Compression, EncodeError, Header, ProducerInfo, Record,
    VerifiedBatch, decode_records, encode_batch, parse_header, verify_batch, verify_slice,
};

/// Generated protobuf messages and gRPC stubs of `proto/strata.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("strata.v1");
}

/// Generated messages and the tonic client and server of the internal Raft
/// service between brokers (`proto/raft.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod raft_pb {
    tonic::include_proto!("strata.raft.v1");
}
