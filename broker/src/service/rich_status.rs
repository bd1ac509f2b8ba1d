//! [`RichStatus`]: wraps the gRPC service so that every error the broker
//! answers carries the status details trailer of gRPC's rich error model
//! (`strata_proto::status`), including the errors tonic raises itself
//! before a handler runs: a request message over `grpc_message_bytes_max`,
//! a body that is not the message it should be, an unknown method. Errors
//! from the handlers already carry one and pass unchanged.
//!
//! Only trailers-only responses (the status in the headers, which is how
//! every unary call and every failure before a stream's first message is
//! answered) are amended; a status at the end of a response stream comes
//! from a handler and has its details already.

use std::task::{Context, Poll};

use base64::Engine as _;
use strata_proto::pb::{ErrorCode, ErrorDetail};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// The wrapped service.
#[derive(Clone, Debug)]
pub struct RichStatus<S>(pub S);

impl<S: NamedService> NamedService for RichStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> Service<http::Request<B>> for RichStatus<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            add_details(resp.headers_mut());
            Ok(resp)
        })
    }
}

/// Adds the details trailer to a trailers-only error response without one.
fn add_details(headers: &mut http::HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    if code == 0 || headers.contains_key("grpc-status-details-bin") {
        return;
    }
    let message = headers
        .get("grpc-message")
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let detail = ErrorDetail {
        code: code_for(tonic::Code::from(code), &message) as i32,
        message: message.clone(),
        ..Default::default()
    };
    let bytes = strata_proto::status::encode_details(code, &message, &detail);
    let value = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
    if let Ok(v) = http::HeaderValue::from_str(&value) {
        headers.insert("grpc-status-details-bin", v);
    }
}

/// The stable code of an error tonic raised itself.
fn code_for(code: tonic::Code, message: &str) -> ErrorCode {
    match code {
        tonic::Code::OutOfRange if message.contains("too large") => ErrorCode::BatchTooLarge,
        tonic::Code::OutOfRange
        | tonic::Code::InvalidArgument
        | tonic::Code::Unimplemented
        | tonic::Code::Internal => ErrorCode::InvalidRequest,
        tonic::Code::Unavailable => ErrorCode::ShuttingDown,
        _ => ErrorCode::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bare_error_gets_details_and_a_handlers_error_is_left_alone() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", "11".parse().unwrap());
        h.insert(
            "grpc-message",
            "decoded%20message%20length%20too%20large".parse().unwrap(),
        );
        add_details(&mut h);
        let bin = h.get("grpc-status-details-bin").unwrap().to_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(bin)
            .unwrap();
        let d = strata_proto::status::decode_details(&bytes).unwrap();
        assert_eq!(d.code, ErrorCode::BatchTooLarge as i32);
        assert_eq!(d.message, "decoded message length too large");

        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", "0".parse().unwrap());
        add_details(&mut ok);
        assert!(!ok.contains_key("grpc-status-details-bin"));
        let mut own = http::HeaderMap::new();
        own.insert("grpc-status", "5".parse().unwrap());
        own.insert("grpc-status-details-bin", "AAA".parse().unwrap());
        add_details(&mut own);
        assert_eq!(own.get("grpc-status-details-bin").unwrap(), "AAA");
    }
}
