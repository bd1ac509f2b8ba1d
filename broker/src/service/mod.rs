//! The network services over the broker core: gRPC ([`grpc`]) and HTTP
//! ([`http`]). Only these modules (and `error.rs`) see prost or HTTP types.

pub mod grpc;
pub mod http;
