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

/// A small JSON error response, `{"error": .., "reason": ..}`; both strings
/// must be bounded labels.
pub fn json_error(status: StatusCode, error: &'static str, reason: &'static str) -> Response<Body> {
    let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
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
