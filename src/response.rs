//! The body type of every response the relay produces, and builders for the
//! small responses it writes itself (JSON errors, plain text).
//!
//! Builders take bounded, static strings: nothing here can echo a token, a
//! cookie or anything else a client or upstream sent.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// Error type of response bodies: boxed so proxied streams can share it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the relay produces.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A small JSON error response, `{"error": .., "reason": .., "__type": ..,
/// "message": ..}` with the same type in `x-amzn-ErrorType`; every string
/// is a bounded label. `__type` and `message` are the shape AWS clients
/// (Amplify's `events.post`) read an error from — without them an app sees
/// "UnknownError" and cannot tell "signed out" from "too large"; `message`
/// is the reason label.
pub fn json_error(status: StatusCode, error: &'static str, reason: &'static str) -> Response<Body> {
    let kind = aws_error_type(status);
    let body = serde_json::json!({
        "error": error,
        "reason": reason,
        "__type": kind,
        "message": reason,
    })
    .to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-amzn-errortype", HeaderValue::from_static(kind));
    resp
}

/// The AWS error type an answer with `status` carries: AppSync's own names
/// where it has one for the case (`UnauthorizedException`,
/// `BadRequestException`, `LimitExceededException`), the usual AWS ones
/// otherwise.
pub fn aws_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 431 => "BadRequestException",
        401 => "UnauthorizedException",
        403 => "AccessDeniedException",
        404 => "NotFoundException",
        413 => "PayloadTooLargeException",
        429 => "LimitExceededException",
        502 | 504 => "BadGatewayException",
        503 => "ServiceUnavailableException",
        _ => "InternalFailureException",
    }
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
