//! The status details of a failed call, in gRPC's rich error model: the
//! `grpc-status-details-bin` trailer holds a `google.rpc.Status` (our
//! wire-identical `RpcStatus`) whose details carry one [`ErrorDetail`]
//! packed as a `google.protobuf.Any`. Standard tools (Python's
//! `grpc_status.rpc_status.from_call`, grpcurl, Java's `StatusProto`) read
//! it; this module is the one place that writes and reads it.

use prost::Message;

use crate::pb::{ErrorDetail, PackedDetail, RpcStatus};

/// The `Any` type URL of an [`ErrorDetail`].
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/strata.v1.ErrorDetail";

/// The details trailer of a status with gRPC code `code` and `message`,
/// carrying `detail`.
pub fn encode_details(code: i32, message: &str, detail: &ErrorDetail) -> Vec<u8> {
    RpcStatus {
        code,
        message: message.to_owned(),
        details: vec![PackedDetail {
            type_url: ERROR_DETAIL_TYPE_URL.to_owned(),
            value: detail.encode_to_vec().into(),
        }],
    }
    .encode_to_vec()
}

/// The [`ErrorDetail`] of a details trailer, if it carries one (a bare
/// `ErrorDetail`, as brokers before the rich model sent, is read too).
pub fn decode_details(details: &[u8]) -> Option<ErrorDetail> {
    if let Ok(status) = RpcStatus::decode(details)
        && let Some(packed) = status
            .details
            .iter()
            .find(|d| d.type_url == ERROR_DETAIL_TYPE_URL)
    {
        return ErrorDetail::decode(packed.value.as_ref()).ok();
    }
    ErrorDetail::decode(details).ok().filter(|d| d.code != 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn details_round_trip_and_old_bare_details_still_read() {
        let d = ErrorDetail {
            code: 9,
            message: "not the leader".into(),
            leader_hint: Some("h:1".into()),
            ..Default::default()
        };
        let bytes = encode_details(14, "not the leader", &d);
        let status = RpcStatus::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (14, "not the leader")
        );
        assert_eq!(status.details[0].type_url, ERROR_DETAIL_TYPE_URL);
        assert_eq!(decode_details(&bytes), Some(d.clone()));
        assert_eq!(decode_details(&d.encode_to_vec()), Some(d));
        assert_eq!(decode_details(b""), None);
    }
}
