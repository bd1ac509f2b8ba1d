//! The network services over the broker core: gRPC ([`grpc`]) and HTTP
//! ([`http`]). Only these modules (and `error.rs`) see prost or HTTP types.

pub mod groups;
pub mod grpc;
pub mod http;
pub mod rich_status;

/// A gRPC client of another broker (for requests this node forwards on a
/// client's behalf: describe offsets, HTTP ingest).
pub(crate) async fn peer_client(
    grpc_addr: &str,
) -> Result<
    strata_proto::pb::strata_client::StrataClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    strata_proto::pb::strata_client::StrataClient::connect(format!("http://{grpc_addr}")).await
}
