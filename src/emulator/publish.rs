//! `POST /event`, AppSync Events' HTTP publish, and the rules for an
//! `events` list that WebSocket `publish` shares: 1 to 5 entries, each a
//! string of at most 240 KB that is itself a valid JSON document.
//!
//! Auth comes from real HTTP headers here (`Authorization` or `x-api-key`,
//! plus `Host`). This module must never read a body without a size limit.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::auth::{API_KEY_FIELD, HOST_FIELD, JWT_FIELD};
use super::shared::{error_response, json_response, Shared};
use crate::protocol::{error_type, Channel, ChannelError, MAX_EVENTS_PER_PUBLISH, MAX_EVENT_BYTES};

/// Handles a request to the publish path.
pub(crate) async fn respond(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            error_type::BAD_REQUEST,
            "use POST to publish",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }

    // Authorization first, as AWS does: an unauthorized caller learns
    // nothing about what else is wrong with its request.
    if let Err(failure) = shared.authorize(&header_authorization(&req)).await {
        return error_response(
            StatusCode::UNAUTHORIZED,
            error_type::UNAUTHORIZED,
            &failure.to_string(),
        );
    }

    if !is_json_content_type(req.headers().get(CONTENT_TYPE)) {
        return bad_request("content-type must be application/json");
    }

    let body = match Limited::new(req.into_body(), shared.cfg.max_http_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            if error.is::<http_body_util::LengthLimitError>() {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    error_type::BAD_REQUEST,
                    "request body is too large",
                );
            }
            return bad_request("could not read the request body");
        }
    };

    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("body must be a JSON object with channel and events");
    };
    let channel = match parse_publish_channel(body.get("channel")) {
        Ok(channel) => channel,
        Err(message) => return bad_request(&message),
    };
    if !shared.cfg.defines(&channel) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            error_type::UNAUTHORIZED,
            &format!("no channel namespace matches '{}'", channel.path()),
        );
    }
    let events = match validate_events(body.get("events")) {
        Ok(events) => events,
        Err(message) => return bad_request(&message),
    };

    shared.registry.publish(&channel, &events);
    json_response(
        StatusCode::OK,
        &json!({"successful": successful(events.len()), "failed": []}),
    )
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    error_response(StatusCode::BAD_REQUEST, error_type::BAD_REQUEST, message)
}

/// The request's auth headers as the same kind of object the WebSocket
/// protocol carries, so one check serves both.
fn header_authorization<B>(req: &Request<B>) -> Map<String, Value> {
    let mut auth = Map::new();
    for (header, field) in [
        (HOST.as_str(), HOST_FIELD),
        ("authorization", JWT_FIELD),
        ("x-api-key", API_KEY_FIELD),
    ] {
        if let Some(value) = req.headers().get(header).and_then(|v| v.to_str().ok()) {
            auth.insert(field.to_owned(), Value::from(value));
        }
    }
    auth
}

fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses the channel of a publish: required, valid, and not a wildcard.
pub(crate) fn parse_publish_channel(raw: Option<&Value>) -> Result<Channel, String> {
    let Some(raw) = raw.and_then(Value::as_str) else {
        return Err("channel is required and must be a string".into());
    };
    Channel::parse(raw, false).map_err(|error| match error {
        ChannelError::WildcardNotAllowed => "cannot publish to a wildcard channel".to_string(),
        other => format!("invalid channel: {other}"),
    })
}

/// Checks an `events` value: an array of 1 to 5 strings, each at most
/// 240 KB and each a JSON document (AppSync requires events to be
/// JSON-encoded strings, not objects).
pub(crate) fn validate_events(events: Option<&Value>) -> Result<Vec<String>, String> {
    let Some(Value::Array(events)) = events else {
        return Err("events is required and must be an array of JSON-encoded strings".into());
    };
    if events.is_empty() || events.len() > MAX_EVENTS_PER_PUBLISH {
        return Err(format!(
            "events must hold between 1 and {MAX_EVENTS_PER_PUBLISH} entries, got {}",
            events.len()
        ));
    }
    events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let Value::String(event) = event else {
                return Err(format!("event {index} is not a string"));
            };
            if event.len() > MAX_EVENT_BYTES {
                return Err(format!(
                    "event {index} is larger than {MAX_EVENT_BYTES} bytes"
                ));
            }
            if serde_json::from_str::<serde::de::IgnoredAny>(event).is_err() {
                return Err(format!("event {index} is not valid JSON"));
            }
            Ok(event.clone())
        })
        .collect()
}

/// The `successful` list for `n` accepted events.
pub(crate) fn successful(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|index| json!({"identifier": new_identifier(), "index": index}))
            .collect(),
    )
}

/// A random UUID-v4-shaped identifier, like the ones AppSync returns. Built
/// from std's randomly keyed hasher to avoid a dependency for test data.
fn new_identifier() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = RandomState::new();
    let hi = state.hash_one(n);
    let lo = state.hash_one(!n);
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x4000; // version 4
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_must_be_one_to_five_json_strings() {
        let ok = json!(["{\"a\":1}", "42", "\"s\""]);
        assert_eq!(validate_events(Some(&ok)).unwrap().len(), 3);
        assert!(validate_events(None).is_err());
        assert!(validate_events(Some(&json!([]))).is_err());
        assert!(validate_events(Some(&json!(["1", "2", "3", "4", "5", "6"]))).is_err());
        assert!(validate_events(Some(&json!([{"a": 1}]))).is_err());
        assert!(validate_events(Some(&json!(["not json"]))).is_err());
        let big = format!("\"{}\"", "x".repeat(MAX_EVENT_BYTES));
        assert!(validate_events(Some(&json!([big]))).is_err());
    }

    #[test]
    fn publish_channel_refuses_wildcards() {
        assert!(parse_publish_channel(Some(&json!("/ns/a"))).is_ok());
        assert!(parse_publish_channel(Some(&json!("/ns/*")))
            .unwrap_err()
            .contains("wildcard"));
        assert!(parse_publish_channel(None).is_err());
    }

    #[test]
    fn identifiers_look_like_uuids() {
        let a = new_identifier();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_identifier());
    }
}
